"""Padding never changes a pipeline's answer: every task, on JAX, LiteRT and ONNX, equals HF PyTorch run on
each text alone, unpadded, on a model whose [PAD] embedding row is not zero (issue 33).

The reference is HF's PyTorch model run one feature at a time at its own length (no padding at all),
behind the same pre- and post-processing (`HfUnpadded` below; test_pipelines.py checks that processing
against HF's own pipelines). Ours pad every batch: JAX to a length bucket and `batch_size` rows, the
exported graphs (written by our exporter, pad-invariant by default, once per module) to their fixed
`seq_N` length and batch. Batch sizes 1, 8 and 32 over texts of mixed lengths (QNLI questions and
sentences, SQuAD questions over contexts of several 128-token windows). Labels, tokens, spans equal;
scores within 1e-5 absolute and relative; feature-extraction 1e-5 relative (max|a - b| / max|b|), all
float32. Measured on CPU, every backend and batch size: scores <= 1.5e-6 relative (fill-mask; <= 3e-7
for the other tasks), features <= 3.2e-7; the same JAX pipeline without `pad_invariant` is 0.12-0.14
off on every text (asserted > 1e-3, so the test can fail).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, fixture_data, perturbed_hf_model, rel_err
from test_pipelines import _same, _same_topk, _tsv_column

import mobilebert_jax as mbj
from mobilebert_jax.checkpoints.pytorch import from_pytorch
from mobilebert_jax.pipelines import TASKS
from mobilebert_jax.pipelines.backends import Backend, JaxBackend
from mobilebert_jax.tasks import get_task
from mobilebert_jax.tasks.ner import CONLL2003_TYPES, bio2_labels

torch = pytest.importorskip("torch", reason="torch is the test reference")
pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")

CFG = mbj.MobileBertConfig(**{**TINY, "vocab_size": 30522, "max_position_embeddings": 512})
TOK = mbj.MobileBertTokenizer.default()
BATCH_SIZES = (1, 8, 32)
BUCKETS = (64, 128)  # JAX: two buckets; the exports: one seq_128 signature, fixed batch 8
EXPORT_BATCH = 8
QA_LEN = 128  # max_seq_len of every QA call (the exported length): long contexts make several windows
NAMES = ("input_ids", "attention_mask", "token_type_ids")
STRATEGIES = ("none", "simple", "first", "average", "max")
CONFIGS = {
    "fill-mask": {},
    "text-classification": {"id2label": {0: "negative", 1: "neutral", 2: "positive"}},
    "token-classification": {"id2label": dict(enumerate(bio2_labels(CONLL2003_TYPES)))},
    "question-answering": {"num_labels": 2},
    "feature-extraction": {},
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class HfUnpadded(Backend):
    """HF PyTorch on each row alone, cut to its attention mask (no padding), outputs padded back."""

    name = "hf-unpadded"

    def __init__(self, pt, fields, per_token):
        self.pt, self.fields, self.per_token = pt, fields, per_token

    def __call__(self, input_ids, attention_mask, token_type_ids):
        rows = []
        for ids, mask, types in zip(input_ids, attention_mask, token_type_ids):
            n = int(mask.sum())
            assert mask[:n].all(), "right padding only"
            with torch.no_grad():
                row = {
                    k: torch.tensor(a[None, :n], dtype=torch.long) for k, a in zip(NAMES, (ids, mask, types))
                }
                out = self.pt(**row)
            rows.append({f: getattr(out, f)[0].numpy() for f in self.fields})
        t = input_ids.shape[1]
        pad = lambda a: np.pad(a, [(0, t - len(a))] + [(0, 0)] * (a.ndim - 1))  # noqa: E731
        return {f: np.stack([pad(r[f]) if f in self.per_token else r[f] for r in rows]) for f in self.fields}


def _inputs(task: str) -> list:
    if task == "question-answering":
        dev = get_task("squad").read(fixture_data("squad/dev-v1.1.json"))
        picked = dev[::211][:18]
        return [{"question": e.question, "context": e.context} for e in picked]
    qnli = fixture_data("glue/QNLI/dev.tsv")
    texts = _tsv_column(qnli, 20, 1) + _tsv_column(qnli, 20, 2)  # questions and sentences: 5..70 tokens
    if task == "fill-mask":
        return [" ".join(w if i != 2 else "[MASK]" for i, w in enumerate(t.split())) for t in texts]
    return texts


def _calls(task: str) -> list[dict]:
    """The call parameters each run is compared under."""
    return {
        "fill-mask": [{"top_k": 5}],
        "text-classification": [{"top_k": None}],
        "token-classification": [{"aggregation_strategy": s, "ignore_labels": []} for s in STRATEGIES],
        "question-answering": [{"max_seq_len": QA_LEN, "max_answer_len": 30, "top_k": 2}],
        "feature-extraction": [{}],
    }[task]


def _relative(got, ref, path="out") -> None:
    """Every score within 1e-5 relative (fill-mask's are ~1e-4: an absolute 1e-5 would be loose)."""
    if isinstance(ref, dict):
        if got.get("token", None) != ref.get("token", None):
            return  # two candidates closer than 1e-6 swapped (`_same_topk` checked their scores)
        for k in ref:
            _relative(got[k], ref[k], f"{path}.{k}")
    elif isinstance(ref, (list, tuple)):
        for i, (a, b) in enumerate(zip(got, ref)):
            _relative(a, b, f"{path}[{i}]")
    elif isinstance(ref, (float, np.floating)):
        assert abs(float(got) - float(ref)) <= 1e-5 * abs(float(ref)), f"{path}: {got} != {ref}"


def _compare(task: str, got, ref) -> None:
    if task == "feature-extraction":
        for g, r in zip(got, ref, strict=True):
            assert rel_err(g, r) < 1e-5
        return
    if task == "fill-mask":
        for g, r in zip(got, ref, strict=True):
            _same_topk(g, r)
    else:
        _same(got, ref)
    _relative(got, ref)


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request, tmp_path_factory):
    """(task, model directory, reference answers per call): a perturbed HF model, [PAD] row kept."""
    task = request.param
    cls, class_name = TASKS[task]
    config = CFG.replace(**CONFIGS[task])
    pt = perturbed_hf_model(config, class_name, scale=0.1)
    sd = {k: v.numpy() for k, v in pt.state_dict().items()}
    pad_row = sd[next(k for k in sd if k.endswith("word_embeddings.weight"))][config.pad_token_id]
    assert np.abs(pad_row).max() > 0.05, "the test needs a non-zero [PAD] embedding row"
    path = str(tmp_path_factory.mktemp(class_name))
    mbj.save_pretrained(path, from_pytorch(sd, config, class_name), config, class_name)
    TOK.save_pretrained(path)
    from mobilebert_jax.export.common import OUTPUT_FIELDS

    ref_pipe = cls(HfUnpadded(pt, OUTPUT_FIELDS[class_name], cls.per_token), TOK, config, batch_size=32)
    inputs = _inputs(task)
    return task, path, inputs, [ref_pipe(inputs, **kw) for kw in _calls(task)]


def _check_all_batch_sizes(case, make_pipe) -> None:
    task, _, inputs, refs = case
    for bs in BATCH_SIZES:
        pipe = make_pipe(bs)
        for kw, ref in zip(_calls(task), refs):
            _compare(task, pipe(inputs, **kw), ref)


def test_jax_backend_equals_hf_unpadded(case):
    task, path, inputs, refs = case
    _check_all_batch_sizes(case, lambda bs: mbj.pipeline(task, path, batch_size=bs, buckets=BUCKETS))
    if task == "feature-extraction":  # the control: without the option, padding leaks into every output
        pipe = mbj.pipeline(task, path, batch_size=8, buckets=BUCKETS)
        pipe.backend = JaxBackend(pipe.backend.model, pipe.backend.params, pad_invariant=False)
        errs = [rel_err(g, r) for g, r in zip(pipe(inputs), refs[0])]
        assert max(errs) > 1e-3, f"padding should leak without the option: {max(errs)}"


@pytest.fixture(scope="module")
def exported(case, tmp_path_factory):
    """format -> export directory of the case's model (our exporter, defaults: pad-invariant)."""
    from mobilebert_jax.export import to_litert, to_onnx

    task, path = case[0], case[1]
    model, params = mbj.from_pretrained(path, TASKS[task][1])
    out = {}
    for fmt, fn in (("litert", to_litert), ("onnx", to_onnx)):
        d = str(tmp_path_factory.mktemp(f"{fmt}-{task}"))
        kw = dict(batch_size=EXPORT_BATCH) if fmt == "litert" else {}
        manifest = fn(model, params, d, seq_lengths=(QA_LEN,), tokenizer=TOK, **kw)
        assert manifest["pad_invariant"] is True
        out[fmt] = d
    return out


@pytest.mark.parametrize("backend", ["litert", "onnx"])
def test_exported_backends_equal_hf_unpadded(case, exported, backend):
    pytest.importorskip("ai_edge_litert" if backend == "litert" else "onnxruntime")
    task = case[0]
    _check_all_batch_sizes(
        case, lambda bs: mbj.pipeline(task, exported[backend], backend=backend, batch_size=bs)
    )
