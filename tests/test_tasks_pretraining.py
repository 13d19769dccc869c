"""Pretraining data: document reader, NSP pairs, 80/10/10 masking, whole-word masking, determinism."""

from __future__ import annotations

import json
import os
import random
import re

import numpy as np
import pytest
from conftest import SHARED_DATA

from mobilebert_jax.tasks import DataError, get_task
from mobilebert_jax.tasks import pretraining as pt
from mobilebert_jax.text.tokenizer import MobileBertTokenizer

SQUAD = os.path.join(SHARED_DATA, "squad", "dev-v1.1.json")
MASK, CLS, SEP = 103, 101, 102


@pytest.fixture(scope="module")
def tok():
    return MobileBertTokenizer.default()


@pytest.fixture(scope="module")
def docs():
    """Real text: SQuAD dev paragraphs as documents, split into sentences after '. '."""
    if not os.path.exists(SQUAD):
        pytest.skip(f"SQuAD dev not found at {SQUAD}")
    with open(SQUAD, encoding="utf-8") as f:
        data = json.load(f)["data"]
    paras = [p["context"] for a in data for p in a["paragraphs"]][:500]
    return [[s for s in re.split(r"(?<=\.) ", p) if s.strip()] for p in paras]


@pytest.fixture(scope="module")
def feats(docs, tok):
    return get_task("pretraining", seed=3).featurise(docs, tok, 128)


def test_read_documents(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First doc, one.\n  First doc, two.  \n\n\nSecond doc.\n\n", encoding="utf-8")
    assert pt.read_documents(path) == [["First doc, one.", "First doc, two."], ["Second doc."]]
    for content, match in (("", "empty file"), ("\n\n  \n", "no text")):
        path.write_text(content, encoding="utf-8")
        with pytest.raises(DataError, match=match):
            pt.read_documents(path)
    with pytest.raises(DataError, match="no such file"):
        pt.read_documents(tmp_path / "missing.txt")


def test_instances_structure(feats, tok):
    f = feats
    n, t = f["input_ids"].shape
    assert n > 500 and t == 128
    lengths = f["attention_mask"].sum(1)
    labels = f["labels"]
    for k in range(n):
        ln = lengths[k]
        ids = f["input_ids"][k, :ln]
        types = f["token_type_ids"][k, :ln]
        seps = np.flatnonzero(ids == SEP)
        assert ids[0] == CLS and ids[-1] == SEP and (f["input_ids"][k, ln:] == 0).all()
        a_end = np.flatnonzero(np.diff(types))[0] + 1  # first B token
        assert ids[a_end - 1] == SEP and {a_end - 1, ln - 1} <= set(seps.tolist())
        assert (types[:a_end] == 0).all() and (types[a_end:] == 1).all() and a_end >= 3 and ln - a_end >= 2
        masked = np.flatnonzero(labels[k] != -100)
        # BERT's count: round(len * 0.15), at least 1, at most max_predictions_per_seq; never a special token.
        assert len(masked) == min(20, max(1, int(round(ln * 0.15))))
        assert not set(masked.tolist()) & {0, a_end - 1, ln - 1}
        m = int(f["masked_lm_weights"][k].sum())
        assert f["masked_lm_positions"][k, :m].tolist() == masked.tolist()
        assert f["masked_lm_ids"][k, :m].tolist() == labels[k, masked].tolist()


def test_masking_80_10_10(feats):
    m = feats["labels"] != -100
    orig, now = feats["labels"][m], feats["input_ids"][m]
    n = m.sum()
    frac_mask = (now == MASK).mean()
    frac_same = (now == orig).mean()
    frac_random = 1 - frac_mask - frac_same
    for frac, p in ((frac_mask, 0.8), (frac_same, 0.1), (frac_random, 0.1)):
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n), (frac, p, n)


def test_next_sentence_pairs(feats, docs, tok):
    """IsNext: B follows A in A's document (either may lose tokens at its outer ends to truncation);
    NotNext: B is text of another document."""
    f = feats
    doc_streams = [
        " ".join(map(str, (i for s in d for i in tok(s, add_special_tokens=False)["input_ids"][0])))
        for d in docs
    ]
    nsp = f["next_sentence_label"]
    assert 0.4 < nsp.mean() < 0.8  # 50% random, plus every one-sentence chunk
    for k in range(0, len(nsp), 7):
        ln = f["attention_mask"][k].sum()
        ids = np.where(f["labels"][k] != -100, f["labels"][k], f["input_ids"][k])[:ln]  # unmasked
        a_end = np.flatnonzero(np.diff(f["token_type_ids"][k, :ln]))[0] + 1
        a = " ".join(map(str, ids[1 : a_end - 1]))
        b = " ".join(map(str, ids[a_end : ln - 1]))
        home = [i for i, s in enumerate(doc_streams) if a in s]
        assert home, k
        if nsp[k] == 0:
            s_ = [doc_streams[i] for i in home]
            assert any(x.find(b, x.find(a) + len(a)) >= 0 for x in s_), k
        else:
            assert any(b in s for i, s in enumerate(doc_streams) if i not in home or len(home) > 1), k


def test_whole_word_masking(docs, tok):
    f = get_task("pretraining", seed=5, whole_word_mask=True).featurise(docs[:200], tok, 128)
    subword = np.array([t.startswith("##") for t in pt.vocab_tokens(tok)])
    words_checked = 0
    for k in range(len(f["input_ids"])):
        ln = f["attention_mask"][k].sum()
        ids = np.where(f["labels"][k] != -100, f["labels"][k], f["input_ids"][k])[:ln]
        masked = f["labels"][k, :ln] != -100
        assert masked.sum() <= 20
        start = None
        for i in range(1, ln + 1):  # words: a non-## token and the ## tokens after it
            if i == ln or not subword[ids[i]] or ids[i - 1] in (CLS, SEP):
                if start is not None and i - start > 1:
                    assert masked[start:i].all() or not masked[start:i].any(), (k, start, i)
                    words_checked += masked[start]
                start = i if i < ln and ids[i] not in (CLS, SEP) else None
    assert words_checked > 100  # multi-piece words were masked, and always whole


def test_deterministic_given_seed(docs, tok, feats):
    again = get_task("pretraining", seed=3).featurise(docs, tok, 128)
    assert all(np.array_equal(feats[k], again[k]) for k in feats)
    other = get_task("pretraining", seed=4).featurise(docs, tok, 128)
    assert not np.array_equal(feats["labels"][:50], other["labels"][:50])
    dupe = get_task("pretraining", seed=3, dupe_factor=2).featurise(docs, tok, 128)
    assert 1.8 * len(feats["input_ids"]) < len(dupe["input_ids"]) < 2.2 * len(feats["input_ids"])


def test_mask_tokens_counts_and_specials():
    rng = random.Random(0)
    ids = [CLS] + list(range(2000, 2030)) + [SEP]
    maskable = [False] + [True] * 30 + [False]
    out, pos, orig = pt.mask_tokens(
        ids,
        maskable,
        rng=rng,
        masked_lm_prob=0.15,
        max_predictions_per_seq=20,
        vocab_size=30522,
        mask_id=MASK,
    )
    assert len(pos) == round(32 * 0.15) == 5 and pos == sorted(pos) and 0 not in pos and 31 not in pos
    assert [ids[p] for p in pos] == orig and all(out[i] == ids[i] for i in range(32) if i not in pos)
    _, pos, _ = pt.mask_tokens(
        ids, maskable, rng=rng, masked_lm_prob=0.9, max_predictions_per_seq=3, vocab_size=30522, mask_id=MASK
    )
    assert len(pos) == 3
    with pytest.raises(ValueError, match="max_seq_length must be >= 5"):
        pt.create_instances(
            [[[5]]],
            rng=rng,
            max_seq_length=4,
            short_seq_prob=0,
            masked_lm_prob=0.15,
            max_predictions_per_seq=2,
            dupe_factor=1,
            vocab_size=10,
            cls_id=1,
            sep_id=2,
            mask_id=3,
        )


def test_loss_metric_and_predictions(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    mlm = rng.normal(size=(2, 6, 11)).astype(np.float32)
    nsp = rng.normal(size=(2, 2)).astype(np.float32)
    labels = np.full((2, 6), -100, np.int32)
    labels[0, 2], labels[1, 1], labels[1, 4] = 3, 7, 10
    nsl = np.array([0, 1], np.int32)
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(mlm).reshape(-1, 11), torch.tensor(labels).long().reshape(-1)
    )
    ref = ref + torch.nn.functional.cross_entropy(torch.tensor(nsp), torch.tensor(nsl).long())
    task = get_task("pretraining")
    batch = {"labels": labels, "next_sentence_label": nsl}
    outputs = {"prediction_logits": jnp.asarray(mlm), "seq_relationship_logits": jnp.asarray(nsp)}
    assert float(task.loss(outputs, batch)) == pytest.approx(float(ref), rel=1e-6)
    preds = task.postprocess(None, batch, {k: np.asarray(v) for k, v in outputs.items()})
    assert preds["mlm_predictions"].tolist() == [mlm[0, 2].argmax(), mlm[1, 1].argmax(), mlm[1, 4].argmax()]
    scores = task.metric(preds, task.references(None, batch))
    assert set(scores) == {"mlm_accuracy", "nsp_accuracy"}
    task.write_predictions(tmp_path / "p.json", None, preds)
    assert (
        json.loads((tmp_path / "p.json").read_text())["nsp_predictions"] == preds["nsp_predictions"].tolist()
    )
    assert task.model_class == "MobileBertForPreTraining" and task.label_keys == (
        "labels",
        "next_sentence_label",
    )
