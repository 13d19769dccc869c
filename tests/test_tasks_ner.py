"""NER: seqeval-equal entity metrics (IOB1, BIO2, IOBES), CoNLL reader on the real files, features."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
from conftest import require_shared_data

import mobilebert_jax
from mobilebert_jax.tasks import DataError, get_task, ner
from mobilebert_jax.text.tokenizer import MobileBertTokenizer

# The vocab shipped in the package (the same file as ../shared/data/vocab/vocab.txt).
PACKAGED_VOCAB = os.path.join(os.path.dirname(mobilebert_jax.__file__), "data", "vocab.txt")


@pytest.fixture(scope="module")
def tok():
    return MobileBertTokenizer.default()


def _seqeval():
    return pytest.importorskip(
        "seqeval.metrics", reason="seqeval is the test reference (pip install seqeval)"
    )


def _assert_equal_to_seqeval(y_true, y_pred):
    sv = _seqeval()
    from seqeval.metrics.sequence_labeling import get_entities

    ours = ner.entity_scores(y_true, y_pred)
    assert ours["precision"] == pytest.approx(sv.precision_score(y_true, y_pred, zero_division=0), abs=1e-12)
    assert ours["recall"] == pytest.approx(sv.recall_score(y_true, y_pred, zero_division=0), abs=1e-12)
    assert ours["f1"] == pytest.approx(sv.f1_score(y_true, y_pred, zero_division=0), abs=1e-12)
    assert ours["accuracy"] == pytest.approx(sv.accuracy_score(y_true, y_pred), abs=1e-12)
    report = sv.classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    for typ, s in ours["per_type"].items():
        assert s["support"] == report[typ]["support"]
        for k, rk in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert s[k] == pytest.approx(report[typ][rk], abs=1e-12), (typ, k)
    assert ner.get_entities(y_true) == get_entities(y_true)
    return ours


def test_hand_cases_bio2():
    y_true = [["O", "B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "B-MISC", "I-MISC"]]
    y_pred = [["O", "B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O", "B-MISC", "I-MISC"]]
    # true: PER(1-2) LOC(4) ORG(0-1) MISC(3-4); pred: PER(1-2) ORG(4) ORG(0) MISC(3-4): 2 correct of 4 / 4
    s = _assert_equal_to_seqeval(y_true, y_pred)
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 0.5, 0.5)
    # An I- after O opens an entity (conlleval semantics, seqeval's default mode, not strict).
    s = _assert_equal_to_seqeval([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])
    assert s["f1"] == 1.0
    s = _assert_equal_to_seqeval([["B-PER", "I-PER", "O", "O"]], [["B-PER", "I-LOC", "O", "B-PER"]])
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0


def test_hand_cases_iob1():
    # IOB1: I- starts an entity; B- only separates two adjacent entities of one type.
    y_true = [["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]]
    y_pred = [["I-PER", "I-PER", "I-PER", "O", "I-LOC", "I-LOC", "I-ORG"]]
    # true: PER(0-1) PER(2) LOC(4) ORG(5-6); pred: PER(0-2) LOC(4-5) ORG(6): nothing matches exactly
    s = _assert_equal_to_seqeval(y_true, y_pred)
    assert s["f1"] == 0.0
    assert ner.get_entities(y_true[0]) == [("PER", 0, 1), ("PER", 2, 2), ("LOC", 4, 4), ("ORG", 5, 6)]
    y_pred = [["I-PER", "I-PER", "B-PER", "O", "I-LOC", "O", "O"]]
    s = _assert_equal_to_seqeval(y_true, y_pred)
    assert (s["precision"], s["recall"]) == (1.0, 0.75) and s["f1"] == pytest.approx(6 / 7)
    # IOB1 and its BIO2 re-encoding have the same entities.
    assert ner.to_bio2(y_true[0]) == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]


def test_iobes_and_random_sequences_equal_seqeval():
    _assert_equal_to_seqeval([["B-PER", "E-PER", "S-LOC", "O"]], [["B-PER", "E-PER", "S-ORG", "O"]])
    rng = np.random.default_rng(0)
    tags = ["O"] + [f"{p}-{t}" for p in "BIES" for t in ("PER", "LOC", "ORG")]
    for _ in range(30):  # random (often ill-formed) sequences exercise every chunking rule
        lens = rng.integers(1, 12, size=int(rng.integers(1, 6)))
        y_true = [[tags[i] for i in rng.integers(0, len(tags), n)] for n in lens]
        y_pred = [[t if rng.random() < 0.6 else tags[rng.integers(len(tags))] for t in s] for s in y_true]
        _assert_equal_to_seqeval(y_true, y_pred)
        for s in y_true:  # BIO2 re-encoding keeps the entities
            assert ner.get_entities(ner.to_bio2(s)) == ner.get_entities(s)


@pytest.mark.parametrize(
    "split, sentences, tokens, counts",
    [
        ("dev", 3250, 51362, {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}),  # 5942
        ("test", 3453, 46435, {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}),  # 5648
        ("train", 14041, 203621, {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}),  # 23499
    ],
)
def test_real_conll_files_give_official_counts(split, sentences, tokens, counts):
    """Official CoNLL-2003 English statistics (Tjong Kim Sang & De Meulder 2003, table 1)."""
    path = require_shared_data(f"conll2003/{split}.txt")
    raw = ner.read_conll(path)
    assert len(raw) == sentences and sum(len(s.words) for s in raw) == tokens
    ents = ner.get_entities([list(s.tags) for s in raw])
    assert dict(collections.Counter(e[0] for e in ents)) == counts
    # The task re-encodes to BIO2 (train.txt here is B/M/E/S); the entities stay the same.
    bio2 = get_task("ner").read(path)
    assert {t[0] for s in bio2 for t in s.tags} <= {"O", "B", "I"}
    assert ner.get_entities([list(s.tags) for s in bio2]) == ents


def test_features_first_subtoken_labels_real_dev(tok):
    path = require_shared_data("conll2003/dev.txt")
    task = get_task("ner")
    ex = task.read(path)
    f = task.featurise(ex, tok, 128)
    # Reference: HF's is_split_into_words + word_ids() alignment (label on a word's first token).
    transformers = pytest.importorskip("transformers", reason="transformers is the test reference")
    from mobilebert_jax.text.vocab import load_vocab

    hf = transformers.BertTokenizer(vocab=load_vocab(PACKAGED_VOCAB))
    ref = hf(
        [list(e.words) for e in ex],
        is_split_into_words=True,
        max_length=128,
        padding="max_length",
        truncation=True,
    )
    assert np.array_equal(f["input_ids"], np.asarray(ref["input_ids"]))
    wid = np.array([[-1 if w is None else w for w in ref.word_ids(n)] for n in range(len(ex))])
    first = (wid >= 0) & np.concatenate([np.ones((len(ex), 1), bool), wid[:, 1:] != wid[:, :-1]], axis=1)
    assert np.array_equal(f["word_index"], np.where(first, wid, -1))
    expected = np.full(wid.shape, -100)
    for n, e in enumerate(ex):
        cols = np.flatnonzero(first[n])
        expected[n, cols] = [task.labels.index(e.tags[w]) for w in wid[n, cols]]
    assert np.array_equal(f["labels"], expected)
    # Gold logits decode back to the gold tags; the 3 sentences over 126 word pieces lose their tail ("O").
    logits = np.where(f["labels"][..., None] == np.arange(task.num_labels), 1.0, 0.0)
    pred = task.postprocess(ex, f, {"logits": logits})
    cut = [n for n, e in enumerate(ex) if f["word_index"][n].max() < len(e.words) - 1]
    assert len(cut) == 3
    assert all(pred[n] == list(e.tags) for n, e in enumerate(ex) if n not in cut)
    scores = task.metric(pred, task.references(ex))
    assert 0.99 < scores["f1"] < 1.0 and scores["precision"] == 1.0


def test_reader_formats_and_round_trip(tmp_path, tok):
    path = tmp_path / "x.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n\n\n",
        encoding="utf-8",
    )  # 4-column IOB1
    raw = ner.read_conll(path)
    assert [s.words for s in raw] == [("EU", "rejects", "German"), ("Peter", "Blackburn")]
    task = get_task("ner")
    ex = task.read(path)
    assert ex[0].tags == ("B-ORG", "O", "B-MISC") and ex[1].tags == ("B-PER", "I-PER")
    out = tmp_path / "pred.txt"
    task.write_predictions(out, ex, [list(e.tags) for e in ex])
    assert [e.tags for e in task.read(out)] == [e.tags for e in ex]
    # Unlabelled (one column) files: features without labels.
    (tmp_path / "u.txt").write_text("Hello\nworld\n\nBye\n", encoding="utf-8")
    u = task.read(tmp_path / "u.txt")
    assert u[0].tags is None and "labels" not in task.featurise(u, tok, 16)


def test_adapt_adds_entity_types(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("Aspirin B-DRUG\nhelps O\n", encoding="utf-8")
    task = get_task("ner")
    with pytest.raises(DataError, match=r"x\.txt:1: tag 'B-DRUG': entity type not in the label set"):
        task.read(path)
    adapted = task.adapt(ner.read_conll(path))
    assert adapted.labels[-2:] == ("B-DRUG", "I-DRUG") and adapted.num_labels == 11
    assert adapted.read(path)[0].tags == ("B-DRUG", "O")


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty file"),
        ("-DOCSTART- O\n\n", "no sentences"),
        ("EU B-ORG\nrejects X-VERB\n", r":2: tag 'X-VERB' is not O or B-/I-/E-/S-/M-<type>"),
        ("EU B-ORG\nrejects\n", r":2: missing tag column"),
        ("EU\nrejects O\n", r":2: unexpected tag column"),
        ("EU B-ORG\nrejects BORG\n", r":2: tag 'BORG'"),
    ],
)
def test_bad_conll_files(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as err:
        ner.read_conll(path)
    assert str(path) in str(err.value)


def test_loss_equals_torch():
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 9)).astype(np.float32)
    labels = np.where(rng.random((3, 7)) < 0.5, rng.integers(0, 9, (3, 7)), -100).astype(np.int32)
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(logits).reshape(-1, 9), torch.tensor(labels).long().reshape(-1)
    )
    task = get_task("ner")
    assert float(task.loss({"logits": jnp.asarray(logits)}, {"labels": labels})) == pytest.approx(
        float(ref), rel=1e-6
    )
    assert (
        task.config_overrides()["num_labels"] == 9 and task.model_class == "MobileBertForTokenClassification"
    )
