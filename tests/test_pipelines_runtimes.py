"""Pipelines on the exported-model backends agree with the JAX backend: same labels and spans, scores 1e-5.

ONNX: the same weights exported from HF PyTorch (`torch.onnx.export`, the test reference) into the
model directory, run by onnxruntime. LiteRT: the fixed-shape `seq_N` logic (pad to the smallest
signature, fixed batch) is checked with a fixed-shape JAX runner; a real `.tflite` needs the
exporter (`mobilebert_jax.export`, issue 15) and `ai-edge-litert`, and that test skips without them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import SHARED_DATA, TINY, perturbed_hf_model
from test_pipelines import _same, _tsv_column

import mobilebert_jax as mbj
from mobilebert_jax.export.runtime import Runtime
from mobilebert_jax.pipelines import backends as bk
from mobilebert_jax.tasks import get_task
from mobilebert_jax.tasks.ner import CONLL2003_TYPES, bio2_labels, read_conll

torch = pytest.importorskip("torch", reason="torch is the test reference")
pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")

SST2 = os.path.join(SHARED_DATA, "glue", "SST-2", "dev.tsv")
CONLL = os.path.join(SHARED_DATA, "conll2003", "dev.txt")
SQUAD = os.path.join(SHARED_DATA, "squad", "dev-v1.1.json")
CFG = mbj.MobileBertConfig(**{**TINY, "vocab_size": 30522, "max_position_embeddings": 512})
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _onnx_dir(tmp_path_factory, class_name, outputs, **cfg):
    """HF model (pad row zero) saved with our tokenizer, plus its ONNX export in the same directory."""
    config = CFG.replace(**cfg)
    pt = perturbed_hf_model(config, class_name, scale=0.2)
    with torch.no_grad():
        pt.mobilebert.embeddings.word_embeddings.weight[config.pad_token_id] = 0.0
    path = str(tmp_path_factory.mktemp(class_name))
    pt.save_pretrained(path)
    mbj.MobileBertTokenizer.default().save_pretrained(path)

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return tuple(getattr(out, k) for k in outputs)

    x = torch.ones((2, 16), dtype=torch.int32)  # int32 inputs, as the pipelines feed
    axes = {k: {0: "batch", 1: "length"} for k in [*NAMES, *outputs]}
    torch.onnx.export(
        Wrapped(pt),
        (x, x, x * 0),
        os.path.join(path, "model.onnx"),
        input_names=NAMES,
        output_names=list(outputs),
        dynamic_axes=axes,
        dynamo=False,
        opset_version=17,
    )
    return path


needs_ort = pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime") is None,
    reason="onnxruntime is not installed (the export extra); pip install onnxruntime",
)


@needs_ort
def test_onnx_text_and_token_classification_equal_jax(tmp_path_factory):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    path = _onnx_dir(tmp_path_factory, "MobileBertForSequenceClassification", ["logits"])
    sentences = _tsv_column(SST2, 40)
    jax_pipe = mbj.pipeline("text-classification", path, buckets=(128,))
    onnx_pipe = mbj.pipeline("text-classification", path, backend="onnx")
    _same(onnx_pipe(sentences, top_k=None), jax_pipe(sentences, top_k=None))
    labels = dict(enumerate(bio2_labels(CONLL2003_TYPES)))
    path = _onnx_dir(tmp_path_factory, "MobileBertForTokenClassification", ["logits"], id2label=labels)
    texts = [" ".join(e.words) for e in read_conll(CONLL)[:24]]
    jax_pipe = mbj.pipeline("token-classification", path, buckets=(128,))
    onnx_pipe = mbj.pipeline("token-classification", path, backend="onnx")
    for strategy in ("none", "simple", "first"):
        _same(onnx_pipe(texts, aggregation_strategy=strategy), jax_pipe(texts, aggregation_strategy=strategy))


@needs_ort
def test_onnx_question_answering_equals_jax_on_long_contexts(tmp_path_factory):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    if not os.path.exists(SQUAD):
        pytest.skip(f"SQuAD dev not found at {SQUAD}")
    dev = get_task("squad").read(SQUAD)
    picked = [e for e in dev if len(e.context) > 2500][::7][:12]  # several windows each
    path = _onnx_dir(
        tmp_path_factory, "MobileBertForQuestionAnswering", ["start_logits", "end_logits"], num_labels=2
    )
    inputs = [{"question": e.question, "context": e.context} for e in picked]
    jax_ans = mbj.pipeline("question-answering", path, buckets=(384,))(inputs, max_answer_len=30, top_k=3)
    onnx_ans = mbj.pipeline("question-answering", path, backend="onnx")(inputs, max_answer_len=30, top_k=3)
    _same(onnx_ans, jax_ans)


class FixedJax(Runtime):
    """A JAX model behind fixed `seq_N` shapes and a fixed batch, run the way `LiteRtBackend` runs them."""

    format = "fixed"

    def __init__(self, inner, lengths, batch):
        super().__init__(lengths, fixed_batch=batch)
        self.inner = inner
        self.shapes = set()

    def run_padded(self, batch):
        self.shapes.add(batch["input_ids"].shape)
        return self.inner(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def test_fixed_signature_padding_equals_jax():
    model = mbj.MobileBertForTokenClassification(
        CFG.replace(id2label=dict(enumerate(bio2_labels(CONLL2003_TYPES))))
    )
    params = mbj.init_params(model, rng=1)
    inner = bk.JaxBackend(model, params)
    fixed = FixedJax(inner, (64,), 3)
    texts = _tsv_column(SST2, 7)
    from mobilebert_jax.pipelines import TokenClassificationPipeline

    tok = mbj.MobileBertTokenizer.default()
    ref = TokenClassificationPipeline(
        inner, tok, model.config, batch_size=3, buckets=(64,)
    )  # shares the compile
    ours = TokenClassificationPipeline(fixed, tok, model.config, batch_size=7)
    assert ours.buckets == (64,)  # the signatures are the buckets
    _same(ours(texts, ignore_labels=[]), ref(texts, ignore_labels=[]))
    assert fixed.shapes == {(3, 64)}  # 7 rows run as 3 + 3 + 1 (padded to 3)
    with pytest.raises(ValueError, match="exceeds the largest exported length 64"):
        fixed(*(np.ones((1, 65), np.int32),) * 3)


def test_litert_backend_on_a_real_tflite():
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (the export extra)")
    from mobilebert_jax.export import to_litert

    model = mbj.MobileBertForSequenceClassification(CFG)
    params = mbj.init_params(model, rng=2)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        to_litert(model, params, d, seq_lengths=(32, 64))
        mbj.MobileBertTokenizer.default().save_pretrained(d)
        sentences = _tsv_column(SST2, 10)
        lite = mbj.pipeline("text-classification", d, backend="litert")
        ref = mbj.pipeline("text-classification", (model, params), buckets=(32, 64))
        _same(lite(sentences, top_k=None), ref(sentences, top_k=None))
