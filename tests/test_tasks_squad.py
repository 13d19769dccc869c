"""SQuAD: reader, doc-stride features (vs HF run_qa), n-best decoding, official EM/F1, bad data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import fixture_data

import mobilebert_jax
from mobilebert_jax.tasks import DataError, get_task
from mobilebert_jax.tasks import squad as sq
from mobilebert_jax.tasks import squad_metric as sm
from mobilebert_jax.text.tokenizer import MobileBertTokenizer

# The vocab shipped in the package (the same file as ../shared/data/vocab/vocab.txt).
PACKAGED_VOCAB = os.path.join(os.path.dirname(mobilebert_jax.__file__), "data", "vocab.txt")


@pytest.fixture(scope="module")
def tok():
    return MobileBertTokenizer.default()


@pytest.fixture(scope="module")
def dev():
    return get_task("squad").read(fixture_data("squad/dev-v1.1.json"))


@pytest.fixture(scope="module")
def dev_features(dev, tok):
    return get_task("squad").featurise(dev, tok, 384)


# --- metric --------------------------------------------------------------------------------------


def test_dev_counts_and_first_gold_scores_100(dev):
    assert len(dev) == 10570  # README: 48 articles, 2,067 paragraphs, 10,570 questions
    assert len({e.context for e in dev}) == 2067
    task = get_task("squad")
    refs = task.references(dev)
    preds = {e.id: e.answers[0] for e in dev}
    assert task.metric({"predictions": preds}, refs) == {"exact_match": 100.0, "f1": 100.0}
    # v2.0 scoring of the same (all answerable) data agrees.
    v2 = sm.evaluate_v2(refs, preds)
    assert v2["exact"] == v2["f1"] == v2["HasAns_exact"] == 100.0 and v2["total"] == 10570


def test_partial_f1_hand_cases():
    # normalised "cat sat" vs "cat sat on mat": P = 2/2, R = 2/4, F1 = 2/3
    assert sm.f1_score("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    # "eiffel tower paris" vs "eiffel tower in paris": P = 3/3, R = 3/4, F1 = 6/7
    assert sm.f1_score("The Eiffel Tower, Paris!", "Eiffel tower in Paris") == pytest.approx(6 / 7)
    # repeated tokens count by multiplicity: "b b c" vs "b d d": common {b:1}, P = 1/3, R = 1/3
    assert sm.f1_score("b b c", "b d d") == pytest.approx(1 / 3)
    assert sm.f1_score("Denver Broncos", "Carolina Panthers") == 0.0
    assert sm.exact_match_score("An  apple.", "apple") and sm.exact_match_score("THE apple", "apple ")
    # Only ASCII punctuation is removed (string.punctuation), as in the official script.
    assert not sm.exact_match_score("\u201capple\u201d", "apple")
    assert sm.normalize_answer("The  Theory of a Thing!") == "theory of thing"
    # Max over gold answers; a missing prediction scores 0 but counts in the v1.1 total.
    refs = [("q1", ["Paris", "in Paris"]), ("q2", ["1990"]), ("q3", ["x"])]
    out = sm.evaluate_v1(refs, {"q1": "Paris France", "q2": "in 1990"})
    assert out["exact_match"] == 0.0
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 2 / 3) / 3)
    # v1.1 F1 of two empty strings is 0, v2.0's is 1.
    assert sm.f1_score("", "") == 0.0 and sm.compute_f1("", "") == 1.0 and sm.compute_f1("", "b") == 0.0


def test_v2_metric_hand_case():
    refs = [("a", ["Paris"]), ("b", []), ("c", ["red car"]), ("d", [])]
    preds = {"a": "Paris", "b": "", "c": "car", "d": "blue"}
    out = sm.evaluate_v2(refs, preds)
    # exact: a=1, b=1, c=0, d=0; f1: a=1, b=1, c=2/3, d=0
    assert out["exact"] == 50.0 and out["f1"] == pytest.approx(100 * (2 + 2 / 3) / 4)
    assert out["HasAns_total"] == 2 and out["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert out["NoAns_total"] == 2 and out["NoAns_exact"] == 50.0
    # With no-answer scores: abstaining on d (score 0.9 > thresh 0.5) fixes it.
    na = {"a": 0.1, "b": 0.8, "c": 0.2, "d": 0.9}
    out = sm.evaluate_v2(refs, preds, na, na_prob_thresh=0.5)
    assert out["exact"] == 75.0
    # Best threshold: sweeping up from the lowest score, the cumulative score (starting at the
    # 2 no-answers) goes 2 -> 3 (a) -> 3 (c) -> 3 (b, "") -> 2 (d); best 3/4 at a's 0.1.
    assert out["best_exact"] == 75.0 and out["best_exact_thresh"] == 0.1


# --- features ------------------------------------------------------------------------------------


def _hf_reference_features(examples, hf_tok, max_len=384, stride=128):
    """HF run_qa.py's prepare_train_features / prepare_validation_features, on HF's tokenizer."""
    enc = hf_tok(
        [e.question.lstrip() for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    starts, ends, offsets = [], [], []
    for i, off in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        e = examples[enc["overflow_to_sample_mapping"][i]]
        sc = e.answer_starts[0]
        ec = sc + len(e.answers[0])
        ts, te = 0, len(off) - 1
        while seq[ts] != 1:
            ts += 1
        while seq[te] != 1:
            te -= 1
        if not (off[ts][0] <= sc and off[te][1] >= ec):
            starts.append(0)
            ends.append(0)
        else:
            while ts < len(off) and off[ts][0] <= sc:
                ts += 1
            starts.append(ts - 1)
            while off[te][1] >= ec:
                te -= 1
            ends.append(te + 1)
        offsets.append([o if seq[k] == 1 else (-1, -1) for k, o in enumerate(off)])
    return enc, np.array(starts), np.array(ends), np.array(offsets)


def test_features_equal_hf_run_qa(dev, dev_features):
    transformers = pytest.importorskip("transformers", reason="transformers is the test reference")
    from mobilebert_jax.text.vocab import load_vocab

    # NB: transformers 5's BertTokenizerFast(vocab_file=...) ignores the vocab; this is the real one.
    hf_tok = transformers.BertTokenizer(vocab=load_vocab(PACKAGED_VOCAB))
    subset = dev[:1500]
    enc, starts, ends, offsets = _hf_reference_features(subset, hf_tok)
    n = len(enc["input_ids"])
    assert np.array_equal(dev_features["example_index"][:n], enc["overflow_to_sample_mapping"])
    assert dev_features["example_index"][n] == 1500  # the subset's windows are a prefix of the full set's
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        assert np.array_equal(dev_features[k][:n], np.asarray(enc[k])), k
    assert np.array_equal(dev_features["offset_mapping"][:n], offsets)
    assert np.array_equal(dev_features["start_positions"][:n], starts)
    assert np.array_equal(dev_features["end_positions"][:n], ends)


def test_fake_logits_at_gold_span_recover_the_answers(dev, dev_features):
    """Full loop on the real dev set: features -> logits peaked at the gold span -> decoding -> EM/F1.

    Every miss is one of two kinds, both checked below:
    - the first gold answer does not start or end on a token boundary (annotations such as "gold" in
      "golden", "L" in "NFL", "two" inside "Westwood", "h International ..." cut mid-word), so the
      best a token-level span can give is the whole token ("golden"), which matches no gold answer;
    - the gold span is longer than max_answer_length (30 tokens), so decoding may not pick it.
    With the MobileBERT tokenizer that is 32 of 10,570 (EM 99.70, F1 99.77).
    """
    task = get_task("squad")
    f = dev_features
    n_feat, t = f["input_ids"].shape
    start = np.full((n_feat, t), -10.0, np.float32)
    end = start.copy()
    inside = f["start_positions"] > 0
    rows = np.flatnonzero(inside)
    start[rows, f["start_positions"][rows]] = 10.0
    end[rows, f["end_positions"][rows]] = 10.0
    out = task.postprocess(dev, f, {"start_logits": start, "end_logits": end})
    scores = task.metric(out, task.references(dev))
    assert scores["exact_match"] >= 99.0 and scores["f1"] >= 99.0

    # What the gold token span decodes to, and its length, per example (from any window holding it).
    decoded, length = {}, {}
    for r in rows:
        e = dev[f["example_index"][r]]
        s, en = f["start_positions"][r], f["end_positions"][r]
        decoded[e.id] = e.context[f["offset_mapping"][r, s, 0] : f["offset_mapping"][r, en, 1]]
        length[e.id] = en - s + 1
    misses = [e for e in dev if not any(sm.exact_match_score(out["predictions"][e.id], g) for g in e.answers)]
    assert len(misses) == round(len(dev) * (1 - scores["exact_match"] / 100))
    for e in misses:
        assert e.id in decoded, f"{e.id}: gold answer in no window"
        off_token = decoded[e.id] != e.answers[0]
        too_long = length[e.id] > task.max_answer_length
        assert off_token or too_long, (e.id, e.answers, out["predictions"][e.id])
    # Conversely, every aligned answer within the length limit is recovered exactly.
    for e in dev:
        if e.id in decoded and decoded[e.id] == e.answers[0] and length[e.id] <= task.max_answer_length:
            assert out["predictions"][e.id] == e.answers[0], e.id


def _example(context, answer, question="Where?", qid="q"):
    return sq.SquadExample(qid, "t", context, question, (answer,), (context.index(answer),))


def test_doc_stride_windows_and_positions(tok):
    words = [f"w{i}" for i in range(300)]  # "w123" is 2 tokens ("w", "##123")
    context = " ".join(words)
    ex = _example(context, "w150 w151")
    f = sq.prepare_features([ex], tok, max_seq_length=64, doc_stride=16, max_query_length=8)
    n = len(f["input_ids"])
    assert n > 10 and (f["example_index"] == 0).all()
    ctx = f["offset_mapping"][..., 0] >= 0
    for k in range(n - 1):  # consecutive windows share exactly doc_stride context tokens
        a = f["offset_mapping"][k][ctx[k]][-16:]
        b = f["offset_mapping"][k + 1][ctx[k + 1]][:16]
        assert np.array_equal(a, b)
    hits = np.flatnonzero(f["start_positions"] > 0)
    assert len(hits) >= 1
    for r in hits:
        s, e = f["start_positions"][r], f["end_positions"][r]
        assert context[f["offset_mapping"][r, s, 0] : f["offset_mapping"][r, e, 1]] == "w150 w151"
    misses = np.setdiff1d(np.arange(n), hits)
    assert (f["end_positions"][misses] == 0).all()
    # Non-context tokens ([CLS], question, [SEP], padding) have masked offsets.
    assert (f["offset_mapping"][:, 0] == -1).all()


def test_answer_at_last_context_token_of_a_padded_window(tok):
    # HF's scan walks past the context into [SEP] and padding here (start = last padding index).
    ex = _example("The capital of France is Paris", "Paris")
    f = sq.prepare_features([ex], tok, max_seq_length=32, doc_stride=4, max_query_length=8)
    s, e = f["start_positions"][0], f["end_positions"][0]
    assert s == e == f["attention_mask"][0].sum() - 2  # the token before the final [SEP]
    assert ex.context[f["offset_mapping"][0, s, 0] : f["offset_mapping"][0, e, 1]] == "Paris"


def test_question_truncated_to_max_query_length(tok):
    # "why" + 40 x ("wireless", "##ly"): the 64th token is the "wireless" of the 32nd word.
    question = "why " + " ".join(["wirelessly"] * 40)
    ex = _example("Some context here.", "context", question=question)
    f = sq.prepare_features([ex], tok, max_seq_length=128, doc_stride=16, max_query_length=64)
    full = tok(question, add_special_tokens=False)["input_ids"][0]
    q_ids = f["input_ids"][0][1 : 1 + 64]
    assert len(full) == 81 and np.array_equal(q_ids, full[:64]) and f["input_ids"][0][65] == tok.sep_token_id
    assert sq.truncate_questions([question], tok, 64)[0].endswith("wirelessly wireless")
    assert sq.truncate_questions(["  short"], tok, 64) == ["  short"]


def test_postprocess_n_best_v2_and_max_answer_length(tok):
    ex = _example("alpha beta gamma delta epsilon zeta eta theta", "gamma delta", qid="x")
    f = sq.prepare_features([ex], tok, max_seq_length=32, doc_stride=4, max_query_length=8)
    s0, e0 = f["start_positions"][0], f["end_positions"][0]
    start = np.zeros((1, 32), np.float32)
    end = np.zeros((1, 32), np.float32)
    start[0, s0], end[0, e0] = 5.0, 4.0
    start[0, 0], end[0, 0] = 3.0, 3.0  # null score 6 < 9
    out = sq.postprocess_qa([ex], f, start, end, version_2_with_negative=True)
    assert out["predictions"]["x"] == "gamma delta" and out["null_odds"]["x"] == pytest.approx(6.0 - 9.0)
    assert sum(c["probability"] for c in out["nbest"]["x"]) == pytest.approx(1.0)
    out = sq.postprocess_qa([ex], f, start, end, version_2_with_negative=True, null_score_diff_threshold=-4.0)
    assert out["predictions"]["x"] == ""  # -3 > -4: abstain
    # An end before the start or a span over max_answer_length is never chosen.
    start[0, s0 + 1 : s0 + 3] = 0.0
    end[0, e0], end[0, s0 + 2] = 0.0, 9.0  # best end now 2 tokens after start ("epsilon")
    assert sq.postprocess_qa([ex], f, start, end)["predictions"]["x"] == "gamma delta epsilon"
    assert (
        sq.postprocess_qa([ex], f, start, end, max_answer_length=2)["predictions"]["x"]
        != "gamma delta epsilon"
    )
    # v1: [CLS] is outside the context, so a huge null score is ignored.
    start[0, 0] = end[0, 0] = 100.0
    assert sq.postprocess_qa([ex], f, start, end)["predictions"]["x"] == "gamma delta epsilon"


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def _squad(qas, context="Paris is the capital of France."):
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_v2_file_features_and_write(tmp_path, tok):
    qas = [
        {
            "id": "a",
            "question": "Capital?",
            "answers": [{"text": "Paris", "answer_start": 0}],
            "is_impossible": False,
        },
        {"id": "b", "question": "Moon?", "answers": [], "plausible_answers": [], "is_impossible": True},
    ]
    path = _write(tmp_path, "v2.json", _squad(qas))
    with pytest.raises(DataError, match="squad_v2"):
        get_task("squad").read(path)
    task = get_task("squad_v2", doc_stride=8, max_query_length=8)
    ex = task.read(path)
    assert [e.is_impossible for e in ex] == [False, True]
    f = task.featurise(ex, tok, 32)
    assert f["start_positions"].tolist() == [
        1 + len(tok("Capital?", add_special_tokens=False)["input_ids"][0]) + 1,
        0,
    ]
    start = np.zeros((2, 32), np.float32)
    end = start.copy()
    start[0, f["start_positions"][0]] = end[0, f["end_positions"][0]] = 5.0
    start[1, 0] = end[1, 0] = 5.0
    preds = task.postprocess(ex, f, {"start_logits": start, "end_logits": end})
    assert preds["predictions"] == {"a": "Paris", "b": ""}
    scores = task.metric(preds, task.references(ex))
    assert scores["exact"] == scores["f1"] == 100.0 and scores["HasAns_total"] == scores["NoAns_total"] == 1
    out = tmp_path / "pred.json"
    task.write_predictions(out, ex, preds)
    assert json.loads(out.read_text()) == {"a": "Paris", "b": ""}
    assert (tmp_path / "pred_null_odds.json").exists() and (tmp_path / "pred_nbest.json").exists()


def test_jsonl_reader(tmp_path):
    rows = [
        {
            "id": "1",
            "title": "t",
            "context": "abc def",
            "question": "q?",
            "answers": {"text": ["def"], "answer_start": [4]},
        }
    ]
    path = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    (e,) = sq.read_squad(path)
    assert (e.answers, e.answer_starts) == (("def",), (4,))


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty file"),
        ("{not json", "invalid JSON"),
        ({"data": [{"paragraphs": [{"qas": []}]}]}, r"data\[0\]\.paragraphs\[0\]: missing key 'context'"),
        (_squad([{"question": "q"}]), r"qas\[0\]: missing key 'id'"),
        (
            _squad([{"id": "z", "question": "q", "answers": [{"text": "Lyon", "answer_start": 0}]}]),
            r"qas\[0\] \(id z\): answer 'Lyon' not in the context at 0 \(found 'Pari'\)",
        ),
        (
            _squad([{"id": "z", "question": "q", "answers": [{"text": "Paris"}]}]),
            "needs 'text' and 'answer_start'",
        ),
        (
            _squad([{"id": "z", "question": "q", "answers": [{"text": "Paris", "answer_start": 0}]}] * 2),
            "duplicate question id",
        ),
        (_squad([]), "no questions"),
    ],
)
def test_bad_squad_files(tmp_path, content, match):
    path = _write(tmp_path, "bad.json", content)
    with pytest.raises(DataError, match=match) as err:
        sq.read_squad(path)
    assert str(path) in str(err.value)


def test_bad_jsonl_names_line(tmp_path):
    good = {"id": "1", "context": "abc", "question": "q", "answers": {"text": ["abc"], "answer_start": [0]}}
    bad = {"id": "2", "context": "abc", "answers": {"text": ["abc"], "answer_start": [0]}}
    path = _write(tmp_path, "d.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing key 'question'"):
        sq.read_squad(path)


def test_loss_equals_model_and_torch():
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    jnp = pytest.importorskip("jax.numpy")
    from mobilebert_jax.model.heads import question_answering_loss

    rng = np.random.default_rng(0)
    start, end = rng.normal(size=(2, 4, 24)).astype(np.float32)
    sp = np.array([0, 5, 23, 99], np.int32)  # 99 is clamped to T = 24 and ignored, as in HF
    ep = np.array([0, 7, 30, 23], np.int32)
    t = 24
    ce = torch.nn.CrossEntropyLoss(ignore_index=t)
    ref = (
        ce(torch.tensor(start), torch.tensor(sp).long().clamp(0, t))
        + ce(torch.tensor(end), torch.tensor(ep).long().clamp(0, t))
    ) / 2
    task = get_task("squad")
    ours = task.loss(
        {"start_logits": jnp.asarray(start), "end_logits": jnp.asarray(end)},
        {"start_positions": sp, "end_positions": ep},
    )
    model = question_answering_loss(jnp.asarray(start), jnp.asarray(end), sp, ep)
    assert float(ours) == pytest.approx(float(ref), rel=1e-6) and float(model) == pytest.approx(
        float(ref), rel=1e-6
    )
    assert (
        task.config_overrides() == {"num_labels": 2} and task.model_class == "MobileBertForQuestionAnswering"
    )
