"""Export to StableHLO, LiteRT and ONNX, checked in the real runtimes (tiny config).

Needs the `export` extra (scripts/setup.sh test installs it); each format is skipped with a reason
where its packages are absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SENTIMENT_SENTENCES, TINY, perturbed_hf_model, rel_err

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
    assert [s["name"] for s in m["signatures"]] == [f"seq_{t}" for t in lengths] or fmt != "litert"
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
    rows = [
        {k: torch.from_numpy(v[i : i + 1, :n].astype(np.int64)) for k, v in batch.items()}
        for i, n in enumerate(batch["attention_mask"].sum(1))
    ]
    with torch.no_grad():  # each row alone, unpadded: the export is pad-invariant (the [PAD] row is not 0)
        ref = np.concatenate([pt(**r).logits.numpy() for r in rows])
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
        # the word-embedding table is stored (and gathered) int8; the fp32 file keeps it float
        vocab = [model.config.vocab_size, model.config.embedding_size]
        assert _table_dtypes(tmp_path / "q" / "model.tflite", vocab) == ["int8"]
        assert _table_dtypes(tmp_path / "fp32" / "model.tflite", vocab) == ["float32"]
        # so are the position rows the signature folds in (its 16 of the table's rows)
        rows = [1, 16, model.config.hidden_size]
        assert _constant_dtypes(tmp_path / "q" / "model.tflite", rows) == ["int8"]
        assert _constant_dtypes(tmp_path / "fp32" / "model.tflite", rows) == ["float32"]
    else:
        import onnx

        ops = {n.op_type for n in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, sorted(ops)


def _table_dtypes(path, shape):
    """dtypes of the .tflite's tensors of `shape` (here: the word-embedding table's)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(str(path)).get_tensor_details()
    return [np.dtype(t["dtype"]).name for t in details if list(t["shape"]) == list(shape)]


def _constant_dtypes(path, shape):
    """dtypes of the .tflite's constant tensors (with data in the file) of `shape`."""
    from ai_edge_litert import schema_py_generated as schema

    buf = bytearray(path.read_bytes())
    m = schema.ModelT.InitFromPackedBuf(buf, 0)
    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    out = []
    for t in m.subgraphs[0].tensors:
        b = m.buffers[t.buffer]
        has_data = (b.data is not None and len(b.data)) or b.size > 1
        if has_data and t.shape is not None and list(t.shape) == list(shape):
            out.append(names[t.type])
    return out


def test_int8_word_embedding_rows():
    from mobilebert_jax.export.quantize import int8_rows

    t = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    t[3] = 0  # an all-zero row (the pad row) stays exactly zero
    q, scale = int8_rows(t)
    assert q.dtype == np.int8 and scale.shape == (50, 1)
    step = np.abs(t).max(1, keepdims=True) / 127
    assert np.all(np.abs(q * scale - t) <= step / 2 + 1e-7) and np.all(q[3] == 0)
    assert np.all(np.abs(q).max(1)[np.arange(50) != 3] == 127)


def test_quant_stats_from_other_rules_are_refused(tmp_path):
    from mobilebert_jax.export import ExportError
    from mobilebert_jax.export import quantize as qz

    stats = {"layer": {"dot_general0_lhs": {"count": np.ones(()), "sum_of_max": np.ones(())}}}
    qz.save_quant_stats(str(tmp_path), stats, {"source": "test"})
    got, info = qz.load_quant_stats(str(tmp_path))
    assert info["rules"] == qz._rules_record() and float(got["layer"]["dot_general0_lhs"]["count"]) == 1
    (tmp_path / "quant_stats.json").write_text(json.dumps({"float_modules": [".*embeddings.*"]}))
    with pytest.raises(ExportError, match="other quantization rules.*finetune --qat again"):
        qz.load_quant_stats(str(tmp_path))
    assert qz.load_quant_stats(str(tmp_path / "none")) is None


def qat_start(tmp_path, tok, **config) -> str:
    """The start of the QAT fine-tune tests: a perturbed 1-layer SST-2 classifier (and `tok`) in
    tmp_path/start; returns tmp_path/train.tsv, the TRAIN sentences with alternating labels."""
    from mobilebert_jax.checkpoints.hub import save_pretrained

    cfg = MobileBertConfig.from_preset(
        "mobilebert-test", vocab_size=tok.vocab_size, num_hidden_layers=1, **config
    )
    start = MODEL_CLASSES["MobileBertForSequenceClassification"](cfg)
    save_pretrained(
        str(tmp_path / "start"), _perturbed(init_params(start, 0), 0.1), cfg, type(start).__name__
    )
    tok.save_pretrained(str(tmp_path / "start"))
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(TRAIN)))
    return str(train)


def _perturbed(params, scale, seed=1):
    """Every parameter plus N(0, scale) noise: activations and logits of order one (NoNorm weights != 1,
    biases != 0), as in a trained model, unlike the init's 1e-4 logits that int8 rounds away."""
    import jax

    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_static_int8_litert_accuracy(tmp_path):
    """Static int8 (qwix ODML → LiteRT) against the fp32 JAX forward, on a 1-layer model with order-one
    activations (perturbed init), calibrated on 16 padded rows and measured on 16 others.

    Measured (this machine): relative logit error 0.035, argmax agreement 1.0 with `quantize.RULES`;
    0.12-0.14 with every dense output int8 too (0.147 when query/key/value were float). Before
    the per-tensor ranges were taken over the whole batch (`act_batch_axes=()`) and merged by min/max
    over calibration batches, qwix averaged per-example ranges, clipped the largest activations, and this
    measured 0.36, agreement 0.94 (2 layers: 0.27; one int8 matmul alone: 11% vs 1.3%). What remains:
    the random token ids exceed the calibrated ranges somewhere (~5% per tensor), and LiteRT's int8
    kernels round differently from qwix's fake quantization. The bound 0.08 fails the old calibration
    and int8 dense outputs."""
    _needs("litert")
    pytest.importorskip("qwix", reason="qwix (the export extra) is not installed")
    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import make_forward, sample_batch

    model, params = _model("MobileBertForSequenceClassification")
    params = _perturbed(params, 0.2)
    with pytest.raises(ex.ExportError, match="calibration"):
        ex.to_litert(model, params, str(tmp_path / "none"), seq_lengths=(16,), quantize="int8")
    calibration = sample_batch(model.config, 16, 16, seed=5)
    m = ex.to_litert(
        model, params, str(tmp_path / "q"), seq_lengths=(16,), quantize="int8", calibration=calibration
    )
    assert m["int8_ranges"] == "calibration"
    fc = m["kernels"]["fully_connected"]
    # int8 x int8 -> int8 kernels: query, key, value and each feed-forward's first matmul (the dense
    # layers writing into the residual stream write float; `quantize.RULES`)
    int8_fc = model.config.num_hidden_layers * (3 + model.config.num_feedforward_networks)
    assert fc["int8_activations"] == int8_fc and fc["int8_weights"] == int8_fc, fc
    assert m["kernels"]["ops"].get("QUANTIZE", 0) > 0
    vocab = [model.config.vocab_size, model.config.embedding_size]
    assert _table_dtypes(tmp_path / "q" / "model.tflite", vocab) == ["int8"]
    batch = sample_batch(model.config, 16, 16, seed=6)
    got = ex.load_runtime(str(tmp_path / "q"))(**batch)["logits"]
    ref = np.asarray(make_forward(model, params)(**batch)["logits"])
    err, agree = rel_err(got, ref), float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"static int8 vs fp32: relative logit error {err:.3g}, argmax agreement {agree:.3f}, {fc}")
    assert err <= 0.08 and agree >= 0.9, (err, agree)


TRAIN = SENTIMENT_SENTENCES  # label i % 2
HELD_OUT = [
    "an utterly charming film",
    "the plot makes no sense",
    "a triumph of style and heart",
    "boring and far too long",
    "i laughed from beginning to end",
    "the worst script of the year",
    "a gentle , moving story",
    "flat characters and a dull story",
]


def test_qat_finetune_then_int8_export(tmp_path, capsys):
    """`finetune --qat` trains through qwix's fake int8 quantization (gradients flow, loss falls), saves
    float params plus the int8 ranges, and `export --quantize int8` of the run uses them (no calibration
    file, export.json says "qat"); the .tflite runs in LiteRT.

    Measured once with a float twin (same start, 12 steps, 16 sentences; not run here, for time), under
    the earlier rules (every op int8 but the embeddings and softmax): int8 vs own fp32 relative logit
    error QAT 0.262, PTQ of the twin 0.266. Here, under `quantize.RULES` (6 steps): 0.027; the bound is
    the static int8 test's."""
    _needs("litert")
    pytest.importorskip("qwix", reason="qwix (the export extra) is not installed")
    import jax

    from mobilebert_jax import export as ex
    from mobilebert_jax.checkpoints.hub import from_pretrained
    from mobilebert_jax.cli.main import main
    from mobilebert_jax.export.common import make_forward
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    tok = MobileBertTokenizer.default()
    train = qat_start(tmp_path, tok, classifier_activation=True)
    args = [
        "finetune",
        "--model_name_or_path",
        str(tmp_path / "start"),
        "--task_name",
        "sst2",
        "--do_train",
        "--train_file",
        train,
        "--per_device_train_batch_size",
        "8",
        "--mesh_data",
        "1",
        "--max_seq_length",
        "16",
        "--no-progress",
        "--max_steps",
        "6",
        "--learning_rate",
        "3e-4",
        "--warmup_steps",
        "0",
        "--logging_steps",
        "1",
        "--save_steps",
        "100",
        "--qat",
    ]
    assert main([*args, "--output_dir", str(tmp_path / "bad"), "--scan_layers"]) == 2
    assert "--qat cannot be combined with --scan_layers" in capsys.readouterr().err
    run = tmp_path / "qat"
    assert main([*args, "--output_dir", str(run)]) == 0
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] and all(r["grad_norm"] > 0 for r in rows if "grad_norm" in r), rows
    assert json.loads((run / "run.json").read_text())["hyperparameters"]["qat"] is True
    assert (run / "hf_model" / "quant_stats.msgpack").exists()

    q = ["--format", "litert", "--quantize", "int8", "--seq-lengths", "16"]
    assert main(["export", str(run), str(tmp_path / "int8"), *q]) == 0
    m = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert m["int8_ranges"] == "qat" and m["kernels"]["fully_connected"]["int8_activations"] > 0, m
    batch = ex.calibration_batch(HELD_OUT + TRAIN, tok, 16)
    model, params = from_pretrained(str(run / "hf_model"))
    ref = np.asarray(jax.jit(make_forward(model, params))(**batch)["logits"])
    got = ex.load_runtime(str(tmp_path / "int8"))(**batch)["logits"]
    err, agree = rel_err(got, ref), float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"QAT int8 vs its fp32: relative logit error {err:.3g}, argmax agreement {agree:.3f}")
    assert err <= 0.08 and agree >= 0.9, (err, agree)


def test_litert_masked_lm_stores_the_word_embeddings_once(tmp_path):
    """In JAX the MLM head computes its logits as one GEMM over [word embeddingsᵀ; dense; bias]
    (`single_gemm_lm_head`); the LiteRT export keeps the two GEMMs, or the folded constant would be a
    second copy of the embedding table (here +1.5 MB, +16% of the file)."""
    _needs("litert")
    import jax

    from mobilebert_jax import MobileBertForMaskedLM
    from mobilebert_jax import export as ex

    cfg = MobileBertConfig(
        vocab_size=3000,
        embedding_size=128,
        hidden_size=512,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        intra_bottleneck_size=128,
        max_position_embeddings=64,
    )
    model = MobileBertForMaskedLM(cfg)
    assert model.single_gemm_lm_head
    params = init_params(model, 0)
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
    m = ex.export(model, params, str(tmp_path), format="litert", seq_lengths=(16,))
    assert m["verification"]["max_rel_error"] <= ex.FP32_TOLERANCE
    table_bytes = cfg.vocab_size * cfg.embedding_size * 4
    assert m["size_bytes"] < param_bytes + table_bytes // 2, (m["size_bytes"], param_bytes)


def test_litert_compaction_is_lossless_and_smaller(tmp_path, monkeypatch):
    """`flatbuffer.compact` (every LiteRT export runs it) against the converter's own file: the same
    outputs bit for bit, fewer bytes, the signatures' input/output names kept, the other tensors'
    dropped, and the per-channel zero-point vectors written once per length instead of once per tensor."""
    _needs("litert")
    import shutil

    from ai_edge_litert import schema_py_generated as schema

    from mobilebert_jax import export as ex
    from mobilebert_jax.export import flatbuffer
    from mobilebert_jax.export.common import sample_batch
    from mobilebert_jax.export.runtime import LiteRTRuntime

    model, params = _model("MobileBertForSequenceClassification", layers=2)
    with monkeypatch.context() as mp:  # the converter's file, as it wrote it
        mp.setattr(flatbuffer, "compact", lambda path, keep_names=False: {})
        m = ex.export(
            model, params, str(tmp_path / "raw"), format="litert", seq_lengths=(16,), quantize="dynamic-int8"
        )
    raw = tmp_path / "raw" / "model.tflite"
    small = tmp_path / "small.tflite"
    shutil.copy(raw, small)
    sizes = flatbuffer.compact(str(small))
    assert sizes["bytes_before"] == raw.stat().st_size and sizes["bytes_after"] == small.stat().st_size
    assert sizes["bytes_after"] < sizes["bytes_before"]

    batch = sample_batch(model.config, 1, 16, seed=3)
    before = LiteRTRuntime(str(raw), m["signatures"]).run_signature("seq_16", batch)
    after = LiteRTRuntime(str(small), m["signatures"]).run_signature("seq_16", batch)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)

    def tensors(path):
        buf = path.read_bytes()
        g = schema.Model.GetRootAs(buf, 0).Subgraphs(0)
        return g, [g.Tensors(i) for i in range(g.TensorsLength())]

    g, ts = tensors(small)
    io = {g.Inputs(i) for i in range(g.InputsLength())} | {g.Outputs(i) for i in range(g.OutputsLength())}
    assert all(ts[i].Name() for i in io)
    assert all(not t.Name() for i, t in enumerate(ts) if i not in io)

    def zero_point_vectors(tensor_list):
        # where each per-channel tensor's zero-point vector lies in the file
        out = []
        for t in tensor_list:
            q = t.Quantization()
            if q is not None and q.ZeroPointLength() > 1:
                out.append(q._tab.Vector(q._tab.Offset(10)))
        return out

    per_channel = zero_point_vectors(tensors(raw)[1])
    shared = zero_point_vectors(ts)
    assert len(per_channel) == len(shared) > 2
    assert len(set(per_channel)) == len(per_channel)  # the converter: one copy per tensor
    assert len(set(shared)) < len(shared) / 2, (len(set(shared)), len(shared))


def test_onnx_external_data_is_counted_and_no_temp_is_left(tmp_path):
    """jax2onnx writes tensors over 1 MB (here the word-embedding table) to `model.onnx.data`: the fp32
    export lists that file and counts it in its size; the dynamic-int8 model holds its weights inside, and
    the float intermediate's data file is not left behind (at full size it was 16.7 MB of the 82.3 MB
    reported, and a stray 16.7 MB beside the int8 file)."""
    _needs("onnx")
    import os

    from mobilebert_jax import MobileBertForSequenceClassification
    from mobilebert_jax import export as ex

    cfg = MobileBertConfig(**{**TINY, "vocab_size": 3000, "embedding_size": 128, "num_hidden_layers": 1})
    model = MobileBertForSequenceClassification(cfg)
    params = init_params(model, 0)
    assert cfg.vocab_size * cfg.embedding_size * 4 > 1 << 20
    fp32 = ex.export(model, params, str(tmp_path / "fp32"), format="onnx", seq_lengths=(16,))
    assert fp32["files"] == ["model.onnx", "model.onnx.data"]
    assert fp32["size_bytes"] == sum(os.path.getsize(tmp_path / "fp32" / f) for f in fp32["files"])
    q = ex.export(
        model, params, str(tmp_path / "q"), format="onnx", seq_lengths=(16,), quantize="dynamic-int8"
    )
    assert q["files"] == ["model.onnx"]
    left = sorted(f for f in os.listdir(tmp_path / "q") if f.startswith("model"))
    assert left == ["model.onnx"], left
    assert q["size_bytes"] == os.path.getsize(tmp_path / "q" / "model.onnx")
