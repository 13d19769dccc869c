"""Pipelines against transformers 5.x pipelines on the same saved model, and QA against the SQuAD path.

Each model is a tiny MobileBERT with the real uncased vocab and every weight perturbed (HF PyTorch
init + noise), ported to our params, written by our `save_pretrained` with our tokenizer, and loaded
by both HF's `pipeline(...)` and ours. The [PAD] row is zeroed, as HF's `padding_idx` keeps it in any
real model: only then is right-padding invisible to MobileBERT (HF #9860; our pipelines batch and
pad, HF's run one unpadded input at a time).
"""

from __future__ import annotations

import os
import unicodedata
import warnings

import numpy as np
import pytest
from conftest import DATA_MISSING, TINY, fixture_data, perturbed_hf_model, rel_err, require_shared_data

import mobilebert_jax as mbj
from mobilebert_jax.checkpoints.pytorch import from_pytorch
from mobilebert_jax.pipelines import Backend, QuestionAnsweringPipeline
from mobilebert_jax.tasks import get_task
from mobilebert_jax.tasks import squad_metric as sm
from mobilebert_jax.tasks.ner import CONLL2003_TYPES, bio2_labels, read_conll

torch = pytest.importorskip("torch", reason="torch is the test reference")
transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")

CFG = mbj.MobileBertConfig(**{**TINY, "vocab_size": 30522, "max_position_embeddings": 512})
TOK = mbj.MobileBertTokenizer.default()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # HF pipelines run one input at a time; on a loaded 2-core machine torch's thread pool makes
    # that ~15x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tsv_column(path, n, col=0, skip_header=True):
    if not os.path.exists(path):  # test_pipelines_runtimes.py passes paths into the shared data folder
        pytest.skip(f"{DATA_MISSING}: {path} not found")
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1 if skip_header else 0 :]
    return [r[col].strip() for r in rows[:n]]


def _sentences(n):
    """Short real sentences (3..60 tokens) that ship with the tests: QNLI dev questions."""
    return _tsv_column(fixture_data("glue/QNLI/dev.tsv"), n, 1)


def _squad_path():
    return fixture_data("squad/dev-v1.1.json")


def _saved(tmp_path_factory, class_name, **cfg):
    """A perturbed HF model → our params → our save_pretrained + tokenizer: the directory both load."""
    config = CFG.replace(**cfg)
    pt = perturbed_hf_model(config, class_name, scale=0.2)
    sd = {k: v.numpy() for k, v in pt.state_dict().items()}
    prefix = "" if class_name == "MobileBertModel" else "mobilebert."
    sd[f"{prefix}embeddings.word_embeddings.weight"][config.pad_token_id] = 0.0
    params = from_pytorch(sd, config, class_name)
    path = str(tmp_path_factory.mktemp(class_name))
    mbj.save_pretrained(path, params, config, class_name)
    TOK.save_pretrained(path)
    return path


def _hf(task, path, **kw):
    return transformers.pipeline(task, model=path, device="cpu", **kw)


def _same(ours, ref, path="out"):
    """Recursive equality: strings/ints exactly, floats within 1e-5."""
    if isinstance(ref, dict):
        assert sorted(ours) == sorted(ref), f"{path}: keys {sorted(ours)} != {sorted(ref)}"
        for k in ref:
            _same(ours[k], ref[k], f"{path}.{k}")
    elif isinstance(ref, (list, tuple)):
        assert len(ours) == len(ref), f"{path}: {len(ours)} items != {len(ref)}: {ours} vs {ref}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(ref, (float, np.floating)):
        assert abs(float(ours) - float(ref)) <= 1e-5, f"{path}: {ours} != {ref}"
    else:
        assert ours == ref, f"{path}: {ours!r} != {ref!r}"


# --- text-classification ----------------------------------------------------------------------------


# Compiling a shape costs seconds on CPU, so each model gets one pipeline and one bucket below 512.
B128 = (128,)


@pytest.fixture(scope="module")
def cls_pipes(tmp_path_factory):
    path = _saved(
        tmp_path_factory, "MobileBertForSequenceClassification", id2label={0: "negative", 1: "positive"}
    )
    ours = mbj.pipeline("text-classification", path, batch_size=8, buckets=B128)
    return ours, _hf("text-classification", path), path


@pytest.mark.parametrize("source", ["qnli", "sst2"])
def test_text_classification_equals_hf_on_real_sentences_and_qnli_pairs(cls_pipes, source):
    if source == "sst2":  # movie reviews: their license keeps them out of the project
        sentences = _tsv_column(require_shared_data("glue/SST-2/dev.tsv"), 48)
    else:
        sentences = _sentences(48)
    ours, hf, _ = cls_pipes
    _same(ours(sentences), hf(sentences))
    _same(ours(sentences[:12], top_k=None), hf(sentences[:12], top_k=None))
    _same(ours(sentences[0]), hf(sentences[0]))  # a single string: a list of one, as HF
    _same(ours(sentences[0], top_k=1), hf(sentences[0], top_k=1))
    _same(ours(sentences[:6], function_to_apply="sigmoid"), hf(sentences[:6], function_to_apply="sigmoid"))
    _same(ours(sentences[:6], function_to_apply="none"), hf(sentences[:6], function_to_apply="none"))
    labels = {d["label"] for d in ours(sentences)}
    assert labels <= {"negative", "positive"}
    qnli = fixture_data("glue/QNLI/dev.tsv")
    pairs = [{"text": q, "text_pair": s} for q, s in zip(_tsv_column(qnli, 12, 1), _tsv_column(qnli, 12, 2))]
    _same(ours(pairs), hf(pairs))
    _same(ours(pairs[0]), hf(pairs[0]))


def test_text_classification_problem_types(tmp_path_factory):
    sentences = _sentences(8)
    multi = _saved(
        tmp_path_factory,
        "MobileBertForSequenceClassification",
        num_labels=3,
        problem_type="multi_label_classification",
    )
    ours, hf = mbj.pipeline("text-classification", multi, buckets=B128), _hf("text-classification", multi)
    out = ours(sentences, top_k=None)
    _same(out, hf(sentences, top_k=None))
    assert sum(d["score"] for d in out[0]) != pytest.approx(1.0)  # sigmoid, not softmax
    reg = _saved(
        tmp_path_factory, "MobileBertForSequenceClassification", num_labels=1, problem_type="regression"
    )
    ours, hf = mbj.pipeline("text-classification", reg, buckets=B128), _hf("text-classification", reg)
    _same(ours(sentences), hf(sentences))


# --- token-classification ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ner_pipes(tmp_path_factory):
    labels = bio2_labels(CONLL2003_TYPES)
    path = _saved(tmp_path_factory, "MobileBertForTokenClassification", id2label=dict(enumerate(labels)))
    return mbj.pipeline("token-classification", path, batch_size=8, buckets=B128), _hf(
        "token-classification", path
    )


def _uncased(text):
    """The uncased tokenizer's view of a text span: lower case, accents stripped (NFD), no spaces."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if not unicodedata.combining(c) and not c.isspace())


def _ner_texts(source):
    if source == "conll":  # news, tokenised; its license keeps it out of the project
        return [" ".join(e.words) for e in read_conll(require_shared_data("conll2003/dev.txt"))[:40]]
    return _tsv_column(fixture_data("glue/QNLI/dev.tsv"), 40, 2)  # Wikipedia sentences, untokenised


@pytest.mark.parametrize("source", ["qnli", "conll"])
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_equals_hf_every_aggregation(ner_pipes, strategy, source):
    texts = _ner_texts(source)
    ours, hf = ner_pipes
    got, ref = ours(texts, aggregation_strategy=strategy), hf(texts, aggregation_strategy=strategy)
    _same(got, ref)
    assert sum(map(len, ref)) > 40  # the model labels many tokens as entities: a real comparison
    for text, ents in zip(texts, got):  # offsets index the input text
        for e in ents:
            assert _uncased(text[e["start"] : e["end"]]) == e["word"].replace(" ", "").replace("##", "")
    kw = dict(aggregation_strategy=strategy, ignore_labels=[])
    _same(ours(texts[0], **kw), hf(texts[0], **kw))


# --- fill-mask ------------------------------------------------------------------------------------


def _squad_sentences(n):
    examples = get_task("squad").read(_squad_path())
    out, seen = [], set()
    for e in examples:
        if e.context not in seen:
            seen.add(e.context)
            out.append(" ".join(e.context.split(". ")[0].split()[:40]))
        if len(out) == n:
            return out
    return out


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    return _saved(tmp_path_factory, "MobileBertForMaskedLM")


def _same_topk(ours, ref):
    """Same tokens in the same order, scores within 1e-5 (two candidates closer than 1e-6 may swap)."""
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        if a["token"] != b["token"]:
            assert abs(a["score"] - b["score"]) < 1e-6, (a, b)
            continue
        _same(a, b)


def test_fill_mask_equals_hf(mlm_dir):
    sentences = _squad_sentences(16)
    single = [" ".join(w if i != 3 else "[MASK]" for i, w in enumerate(s.split())) for s in sentences]
    double = [
        " ".join(w if i not in (1, 5) else "[MASK]" for i, w in enumerate(s.split())) for s in sentences[:4]
    ]
    ours, hf = mbj.pipeline("fill-mask", mlm_dir, batch_size=4, buckets=B128), _hf("fill-mask", mlm_dir)
    for got, ref in zip(ours(single, top_k=5), hf(single, top_k=5)):
        _same_topk(got, ref)
    for got, ref in zip(ours(double, top_k=3), hf(double, top_k=3)):
        assert len(got) == len(ref) == 2  # one list per mask
        for g, r in zip(got, ref):
            _same_topk(g, r)
    _same_topk(
        ours(single[0], targets=["the", "paris", "zzyzx"]), hf(single[0], targets=["the", "paris", "zzyzx"])
    )
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        ours("no mask here")


# --- feature-extraction -----------------------------------------------------------------------------


def test_feature_extraction_equals_hf(tmp_path_factory):
    path = _saved(tmp_path_factory, "MobileBertModel")
    sentences = _squad_sentences(12)
    ours = mbj.pipeline("feature-extraction", path, batch_size=4, buckets=B128)
    hf = _hf("feature-extraction", path)
    for got, ref in zip(ours(sentences), hf(sentences)):
        assert np.shape(got) == np.shape(ref) and np.shape(got)[0] == 1
        assert rel_err(got, ref) < 1e-5
    arr = ours(sentences[0], return_tensors=True)
    assert isinstance(arr, np.ndarray) and arr.shape[-1] == CFG.hidden_size
    pooled = ours(sentences[:2], output="pooler_output")
    assert np.shape(pooled) == (2, 1, CFG.hidden_size)


# --- question-answering ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squad_subset():
    """40 questions: every 3rd question of the contexts longer than 384 tokens, and 20 ordinary ones."""
    dev = get_task("squad").read(_squad_path())
    contexts = sorted({e.context for e in dev})
    with warnings.catch_warnings():  # some contexts are longer than 512 tokens: that is the point
        warnings.simplefilter("ignore")
        n_tok = dict(zip(contexts, [len(x) for x in TOK(contexts, truncation=False)["input_ids"]]))
    long = [e for e in dev if n_tok[e.context] > 384][::3][:20]
    short = [e for e in dev if n_tok[e.context] <= 384][::500][:20]
    assert len(long) == 20
    return long + short


def test_question_answering_equals_the_squad_evaluation_path(tmp_path_factory, squad_subset):
    path = _saved(tmp_path_factory, "MobileBertForQuestionAnswering", num_labels=2)
    task = get_task("squad")
    module, params = mbj.from_pretrained(path, "MobileBertForQuestionAnswering")
    feats = task.featurise(squad_subset, TOK, 384)
    assert np.bincount(feats["example_index"]).max() >= 2  # contexts over several windows
    qa = mbj.pipeline("question-answering", (module, params), batch_size=8, buckets=(384,))
    # The evaluation path: every window padded to 384 tokens (run through the same compiled forward,
    # 8 rows at a time, as `mobilebert-jax evaluate` batches them).
    n_feat = len(feats["input_ids"])
    rows = -(-n_feat // 8) * 8
    padded = {k: np.zeros((rows, 384), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for k in padded:
        padded[k][:n_feat] = feats[k]
    outs = [
        qa.backend(*(padded[k][i : i + 8] for k in ("input_ids", "attention_mask", "token_type_ids")))
        for i in range(0, rows, 8)
    ]
    logits = {k: np.concatenate([o[k] for o in outs])[:n_feat] for k in ("start_logits", "end_logits")}
    expected = task.postprocess(squad_subset, feats, logits)["predictions"]
    got = qa([{"question": e.question, "context": e.context} for e in squad_subset], max_answer_len=30)
    assert [a["answer"] for a in got] == [expected[e.id] for e in squad_subset]
    for a, e in zip(got, squad_subset):
        assert e.context[a["start"] : a["end"]] == a["answer"] and 0 < a["score"] <= 1
    top = qa(question=squad_subset[0].question, context=squad_subset[0].context, top_k=3)
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]


class GoldSpanBackend(Backend):
    """A model whose start/end logits peak at the gold span of the window (found by its token ids)."""

    name = "gold"

    def __init__(self, features):
        self.max_length = 512
        self.spans = {}
        for f in range(len(features["input_ids"])):
            n = int(features["attention_mask"][f].sum())
            key = tuple(features["input_ids"][f, :n].tolist())
            self.spans[key] = (int(features["start_positions"][f]), int(features["end_positions"][f]))

    def __call__(self, input_ids, attention_mask, token_type_ids):
        start = np.full(input_ids.shape, -10.0, np.float32)
        end = start.copy()
        for r in range(len(input_ids)):
            n = int(attention_mask[r].sum())
            s, e = self.spans.get(tuple(input_ids[r, :n].tolist()), (0, 0))
            if s > 0:
                start[r, s], end[r, e] = 10.0, 10.0
        return {"start_logits": start, "end_logits": end}


def test_question_answering_with_gold_logits_returns_the_gold_answers(squad_subset):
    feats = get_task("squad").featurise(squad_subset, TOK, 384)
    qa = QuestionAnsweringPipeline(GoldSpanBackend(feats), TOK, CFG.replace(num_labels=2), batch_size=8)
    got = qa([{"question": e.question, "context": e.context} for e in squad_subset], max_answer_len=30)
    exact = [any(sm.exact_match_score(a["answer"], g) for g in e.answers) for a, e in zip(got, squad_subset)]
    assert (
        sum(exact) >= len(squad_subset) - 1
    )  # a gold span off token boundaries can only decode to whole tokens
    for a, e, ok in zip(got, squad_subset, exact):
        if ok:
            assert a["answer"] == e.answers[0] and a["start"] == e.answer_starts[0]


# --- batching, inputs, errors -----------------------------------------------------------------------


def test_buckets_streaming_and_batch_invariance(cls_pipes):
    sentences = _sentences(100)
    pipe = cls_pipes[0]
    pipe.progress = True
    streamed = pipe(s for s in sentences)  # a generator gives an iterator back
    assert not isinstance(streamed, list)
    streamed = list(streamed)
    shapes = pipe.backend.compiled_shapes
    assert shapes == [(8, 128)], shapes  # 100 sentences of 3..60 tokens: one shape
    assert pipe(sentences) == streamed and pipe.backend.compiled_shapes == shapes  # nothing recompiled
    pipe.batch_size, pipe.progress = 1, None
    try:
        _same(pipe(sentences[:10]), streamed[:10])  # batched and padded == one at a time
    finally:
        pipe.batch_size = 8


def test_errors(cls_pipes):
    with pytest.raises(ValueError, match="unknown task"):
        mbj.pipeline("summarization", "mobilebert-test")
    with pytest.raises(ValueError, match="backend must be"):
        mbj.pipeline("fill-mask", "mobilebert-test", backend="tensorrt")
    small = mbj.MobileBertForMaskedLM(mbj.MobileBertConfig(**TINY))
    with pytest.raises(ValueError, match="vocab_size"):
        mbj.pipeline("fill-mask", (small, {}))  # 99 ids < the tokenizer's 30,522
    pipe = cls_pipes[0]
    with pytest.raises(TypeError, match="input 1"):
        pipe(["fine", 3])
    with pytest.raises(TypeError, match="unknown parameter"):
        pipe("fine", topk=2)
    with pytest.raises(ValueError, match="function_to_apply"):
        pipe("fine", function_to_apply="relu")
    qa = QuestionAnsweringPipeline(GoldSpanBackend({"input_ids": np.zeros((0, 1), int)}), TOK, CFG)
    with pytest.raises(TypeError, match="question"):
        qa(["just a string"])
    with pytest.raises(ValueError, match="empty question"):
        qa(question="  ", context="text")


# --- command line -----------------------------------------------------------------------------------


def test_cli_pipeline_writes_jsonl(cls_pipes, tmp_path, capsys):
    import json

    from mobilebert_jax.cli.main import main

    ours, _, path = cls_pipes
    sentences = _sentences(6)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(sentences[:3]) + "\n\n" + "\n".join(sentences[3:]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = ["pipeline", "text-classification", "--model", path, "--input", str(src), "--output", str(out)]
    assert main([*args, "--params", '{"top_k": 2}', "--batch-size", "8", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 5, 6, 7]  # the blank line is skipped, numbers kept
    _same([r["output"] for r in rows], ours(sentences, top_k=2))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n', encoding="utf-8")
    # the CLI prints data errors as one line and exits 1 (`--debug` re-raises them)
    assert main(["pipeline", "text-classification", "--model", path, "--input", str(bad)]) == 1
    assert "bad.jsonl:2: missing or non-string 'text'" in capsys.readouterr().err
    assert main(["pipeline", "question-answering", "--model", path, "--input", str(src)]) == 1
    assert "needs a .jsonl" in capsys.readouterr().err
