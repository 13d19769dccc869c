"""ONNX exports with dynamic batch and sequence axes (`batch_size`, `sequence_length`, as optimum names
them), run in onnxruntime at batches and lengths other than those exported, against the JAX model.

HF optimum and HF pipelines need transformers 4.x, which clashes with the test pins:
`scripts/check_optimum.sh` checks them in a venv of their own (output in docs/deploy_clients.md).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import SHARED_DATA, TINY, rel_err
from test_pipelines import _same, _tsv_column

import mobilebert_jax as mbj
from mobilebert_jax import MODEL_CLASSES, MobileBertConfig, init_params

for _mod in ("jax2onnx", "onnxruntime"):
    pytest.importorskip(_mod, reason=f"{_mod} (the export extra) is not installed")

HEADS = (
    "MobileBertForSequenceClassification",
    "MobileBertForQuestionAnswering",
    "MobileBertForTokenClassification",
    "MobileBertForMaskedLM",
)
# the axes of each output besides the batch: per-token outputs keep the length dynamic too
PER_TOKEN = {"MobileBertForSequenceClassification": False}
BOTH = {"0": "batch_size", "1": "sequence_length"}


def _model(class_name, **cfg):
    # one layer: the export does not depend on depth; 64 positions so that length 64 runs
    config = MobileBertConfig(
        **{
            **TINY,
            "num_hidden_layers": 1,
            "max_position_embeddings": 64,
            "num_labels": 2 if "Question" in class_name else 3,
            **cfg,
        }
    )
    model = MODEL_CLASSES[class_name](config)
    return model, init_params(model, 0)


@pytest.mark.parametrize("class_name", HEADS)
def test_dynamic_export_equals_jax_at_any_batch_and_length(tmp_path, class_name):
    import jax
    import onnxruntime as ort

    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import sample_batch

    model, params = _model(class_name)
    m = ex.to_onnx(model, params, str(tmp_path), seq_lengths=(16,))
    names = list(ex.OUTPUT_FIELDS[class_name])
    # the manifest says which axes are dynamic, as the graph has them
    on_disk = json.loads((tmp_path / "export.json").read_text())
    assert on_disk["dynamic_axes"] == m["dynamic_axes"]
    want_axes = {k: BOTH for k in ("input_ids", "attention_mask", "token_type_ids")}
    want_axes.update({k: BOTH if PER_TOKEN.get(class_name, True) else {"0": "batch_size"} for k in names})
    assert m["dynamic_axes"] == want_axes
    assert m["seq_lengths"] == [64] and m["signatures"][0]["name"] == "serving_default"
    optimum = "ORTModelFor" + class_name.removeprefix("MobileBertFor")
    assert any(optimum in c for c in m["clients"]["model.onnx"]), m["clients"]
    assert {(c["batch_size"], c["length"]) for c in m["verification"]["checks"]} == {
        (b, t) for b in (1, 2) for t in (9, 16)
    }
    # the bare session (no padding by our runtime) takes each shape as it is
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch_size", "sequence_length"]] * 3
    apply = jax.jit(lambda b: model.apply({"params": params}, **b, deterministic=True))
    for batch_size in (1, 3):
        for length in (5, 17, 64):
            batch = sample_batch(model.config, batch_size, length, seed=length + batch_size)
            got = dict(zip(names, session.run(names, batch)))
            ref = apply(batch)
            for k in names:
                err = rel_err(got[k], getattr(ref, k))
                assert err <= 1e-5, (k, batch_size, length, err)


def test_dynamic_int8_keeps_the_dynamic_axes(tmp_path):
    import onnx
    import onnxruntime as ort

    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import make_forward, sample_batch

    model, params = _model("MobileBertForSequenceClassification")
    m = ex.to_onnx(model, params, str(tmp_path), seq_lengths=(16,), quantize="dynamic-int8")
    assert m["dynamic_axes"]["input_ids"] == BOTH and m["files"] == ["model.onnx"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, sorted(ops)
    assert 0 < m["verification"]["max_rel_error"] < 0.2  # measured and recorded; int8 is not exact
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    forward = make_forward(model, params)
    for batch_size, length in ((1, 5), (3, 64)):
        batch = sample_batch(model.config, batch_size, length, seed=length)
        (got,) = session.run(["logits"], batch)
        assert got.shape == (batch_size, 3)
        assert rel_err(got, forward(**batch)["logits"]) < 0.2


def test_fixed_length_graph_is_still_written(tmp_path):
    from mobilebert_jax.export.api import flat_layers
    from mobilebert_jax.export.onnx import write_onnx

    model, params = _model("MobileBertForTokenClassification")
    body = write_onnx(*flat_layers(model, params), str(tmp_path), seq_lengths=(8, 16), dynamic_length=False)
    assert body["seq_lengths"] == [16] and body["signatures"][0]["name"] == "seq_16"
    assert body["signatures"][0]["inputs"][0]["shape"] == ["batch_size", 16]
    assert body["dynamic_axes"]["input_ids"] == {"0": "batch_size"}
    assert body["verification"]["max_rel_error"] <= 1e-5


def test_pipeline_onnx_backend_runs_the_dynamic_export(tmp_path):
    """Our text-classification pipeline on the export directory equals it on the JAX model."""
    from mobilebert_jax import export as ex

    model, params = _model("MobileBertForSequenceClassification", vocab_size=30522)
    tok = mbj.MobileBertTokenizer.default()
    ex.to_onnx(model, params, str(tmp_path), seq_lengths=(32,), tokenizer=tok)
    sentences = _tsv_column(os.path.join(SHARED_DATA, "glue", "SST-2", "dev.tsv"), 12)
    onnx_pipe = mbj.pipeline("text-classification", str(tmp_path), backend="onnx", batch_size=5)
    assert onnx_pipe.backend.lengths is None  # no fixed length: batches run at their own length
    jax_pipe = mbj.pipeline("text-classification", (model, params), tok, batch_size=5, buckets=(64,))
    got, ref = onnx_pipe(sentences, top_k=None), jax_pipe(sentences, top_k=None)
    _same(got, ref)
    assert len({tuple(np.round([s["score"] for s in r], 6)) for r in got}) > 1  # scores vary by text
