"""Export to StableHLO, LiteRT and ONNX, checked in the real runtimes (tiny config).

Needs the `export` extra (scripts/setup.sh test installs it); each format is skipped with a reason
where its packages are absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, perturbed_hf_model, rel_err

from mobilebert_jax import MODEL_CLASSES, MobileBertConfig, init_params

RUNTIME_PACKAGES = {
    "stablehlo": (),
    "litert": ("litert_converter", "ai_edge_litert"),
    "onnx": ("jax2onnx", "onnxruntime"),
}
CLASSES = (
    "MobileBertModel",
    "MobileBertForSequenceClassification",
    "MobileBertForQuestionAnswering",
    "MobileBertForTokenClassification",
    "MobileBertForMaskedLM",
)


def _needs(fmt):
    for mod in RUNTIME_PACKAGES[fmt]:
        pytest.importorskip(mod, reason=f"{mod} (the export extra) is not installed")


def _model(class_name, seed=0, layers=1):
    # one layer: the export paths do not depend on depth, and CPU time in tests is scarce
    cfg = MobileBertConfig(
        **{**TINY, "num_hidden_layers": layers, "num_labels": 2 if "Question" in class_name else 3}
    )
    model = MODEL_CLASSES[class_name](cfg)
    return model, init_params(model, seed)


@pytest.mark.parametrize("class_name", CLASSES)
@pytest.mark.parametrize("fmt", ["stablehlo", "litert", "onnx"])
def test_fp32_export_matches_jax_in_the_runtime(tmp_path, fmt, class_name):
    _needs(fmt)
    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import make_forward, sample_batch

    model, params = _model(class_name)
    # two LiteRT signatures (length buckets) for one class; one elsewhere
    lengths = (8, 16) if fmt == "litert" and class_name == "MobileBertForSequenceClassification" else (16,)
    m = ex.export(model, params, str(tmp_path), format=fmt, seq_lengths=lengths)
    # the export verified itself; check the manifest and run the artifact again on other padded inputs
    on_disk = json.loads((tmp_path / "export.json").read_text())
    assert on_disk["format"] == fmt and on_disk["quantization"] == "none" and on_disk["size_bytes"] > 0
    assert on_disk["verification"]["max_rel_error"] <= ex.FP32_TOLERANCE
    want_names = set(ex.OUTPUT_FIELDS[class_name])
    assert {o["name"] for o in m["signatures"][0]["outputs"]} == want_names
    assert [i["name"] for i in m["signatures"][0]["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert all(i["dtype"] in ("int32", "tensor(int32)") for i in m["signatures"][0]["inputs"])
    assert [s["name"] for s in m["signatures"]] == [f"seq_{t}" for t in lengths] or fmt == "stablehlo"
    rt = ex.load_runtime(str(tmp_path))
    forward = make_forward(model, params)
    for batch_size, length in ((3, 11),):  # a length between buckets is padded up, then cut
        batch = sample_batch(model.config, batch_size, length, seed=7)
        got = rt(**batch)
        ref = forward(**batch)
        assert set(got) == set(ref)
        for k in ref:
            assert rel_err(got[k], ref[k]) <= 1e-5, (k, rel_err(got[k], ref[k]))


@pytest.mark.parametrize("fmt", ["stablehlo", "litert", "onnx"])
def test_hf_pytorch_to_runtime_matches_hf_pytorch(tmp_path, fmt):
    """HF PT model → save_pretrained → `mobilebert-jax export` (CLI) → runtime, against HF PT itself."""
    _needs(fmt)
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    from mobilebert_jax import export as ex
    from mobilebert_jax.cli.main import main
    from mobilebert_jax.export.common import sample_batch

    cfg = MobileBertConfig(**TINY)
    pt = perturbed_hf_model(cfg, "MobileBertForSequenceClassification", seed=1)
    pt.save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "hf"), str(out), "--format", fmt, "--seq-lengths", "16"]) == 0
    assert {"config.json", "export.json", "vocab.txt"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "MobileBertForSequenceClassification"
    ]
    batch = sample_batch(cfg, 2, 16, seed=3)
    with torch.no_grad():
        ref = pt(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}).logits.numpy()
    got = ex.load_runtime(str(out))(**batch)["logits"]
    assert rel_err(got, ref) <= 1e-5


def test_stablehlo_refuses_artifacts_outside_the_jax_window(tmp_path):
    import jax

    from mobilebert_jax import export as ex

    model, params = _model("MobileBertForSequenceClassification")
    ex.to_stablehlo(model, params, str(tmp_path), seq_lengths=(8,))
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["stablehlo"]["jax_version"] == jax.__version__
    for field, value, said in (
        ("calling_convention_version", 1, "reads versions"),
        ("jax_version", "99.0.0", "newer JAX"),
    ):
        bad = json.loads(json.dumps(manifest))
        bad["stablehlo"][field] = value
        (tmp_path / "export.json").write_text(json.dumps(bad))
        with pytest.raises(ex.StableHLOCompatibilityError, match=f"{said}.*re-export"):
            ex.load_runtime(str(tmp_path))
    (tmp_path / "export.json").write_text(json.dumps(manifest))
    (tmp_path / "model.stablehlo").write_bytes(b"not a jax export")
    with pytest.raises(ex.StableHLOCompatibilityError, match="re-export"):
        ex.load_runtime(str(tmp_path))


def test_bad_requests_fail_clearly(tmp_path):
    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import check_fp32

    model, params = _model("MobileBertForSequenceClassification")
    with pytest.raises(ex.ExportError, match=r"--seq-lengths \[64\] outside 1..max_position_embeddings=32"):
        ex.to_litert(model, params, str(tmp_path / "a"), seq_lengths=(16, 64))
    mc, mc_params = _model("MobileBertForMultipleChoice")
    with pytest.raises(ex.ExportError, match="MultipleChoice"):
        ex.to_onnx(mc, mc_params, str(tmp_path / "b"))
    with pytest.raises(ex.ExportError, match="differs from the JAX forward by 0.002"):
        check_fp32({"max_rel_error": 2e-3, "rel_error": {"logits": 2e-3}}, "none", "model.tflite")
    check_fp32({"max_rel_error": 2e-3, "rel_error": {"logits": 2e-3}}, "dynamic-int8", "model.tflite")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(ex.ExportError, match="not empty"):
        ex.to_stablehlo(model, params, str(tmp_path / "c"))


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_dynamic_int8_has_int8_kernels(tmp_path, fmt):
    _needs(fmt)
    from mobilebert_jax import export as ex

    model, params = _model("MobileBertForSequenceClassification")
    fp32 = ex.export(model, params, str(tmp_path / "fp32"), format=fmt, seq_lengths=(16,))
    q = ex.export(model, params, str(tmp_path / "q"), format=fmt, seq_lengths=(16,), quantize="dynamic-int8")
    assert q["quantization"] == "dynamic-int8"
    assert 0 < q["verification"]["max_rel_error"] < 0.2  # measured and recorded; int8 is not exact
    if fmt == "litert":
        fc = q["kernels"]["fully_connected"]
        # the recipe keeps weights under 1024 elements in float (as the TFLite converter did)
        assert fc["int8_weights"] > 0, fc
        assert fp32["kernels"]["fully_connected"]["int8_weights"] == 0
    else:
        import onnx

        ops = {n.op_type for n in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, sorted(ops)


def test_static_int8_litert_has_int8_activations(tmp_path):
    """qwix ODML route: calibrated static scales become int8 tensors and kernels in LiteRT. (A random tiny
    model's logits are ~1e-4, so its int8 error says nothing; accuracy is measured on the full model.)"""
    _needs("litert")
    pytest.importorskip("qwix", reason="qwix (the export extra) is not installed")
    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import sample_batch

    model, params = _model("MobileBertForSequenceClassification")
    with pytest.raises(ex.ExportError, match="calibration"):
        ex.to_litert(model, params, str(tmp_path / "none"), seq_lengths=(16,), quantize="int8")
    calibration = sample_batch(model.config, 16, 16, seed=5)
    m = ex.to_litert(
        model, params, str(tmp_path / "q"), seq_lengths=(16,), quantize="int8", calibration=calibration
    )
    fc = m["kernels"]["fully_connected"]
    assert fc["int8_activations"] > fc["total"] // 2 and fc["int8_weights"] >= fc["int8_activations"], fc
    assert m["kernels"]["ops"].get("QUANTIZE", 0) > 0
    out = ex.load_runtime(str(tmp_path / "q"))(**sample_batch(model.config, 2, 16, seed=6))["logits"]
    assert out.shape == (2, 3) and np.isfinite(out).all()
