"""`--quantize int8-full`: the full-integer LiteRT graph (export/full_integer.py, AI Edge Quantizer), run in
the LiteRT interpreter against the fp32 JAX forward of a 1-layer model with order-one activations."""

from __future__ import annotations

import numpy as np
import pytest
from test_export import _model, _needs, _perturbed

from mobilebert_jax.export.common import rel_err


def test_integer_attention_is_the_default_attention():
    """The "integer" attention (softmax before the second matmul, padded keys at -64) computes what
    "default" does, padding included."""
    from mobilebert_jax.export.common import make_forward, sample_batch

    model, params = _model("MobileBertForSequenceClassification")
    params = _perturbed(params, 0.2)
    batch = sample_batch(model.config, 4, 16, seed=3)
    a = make_forward(model.clone(attention_implementation="default"), params)(**batch)["logits"]
    b = make_forward(model.clone(attention_implementation="integer"), params)(**batch)["logits"]
    assert rel_err(np.asarray(b), np.asarray(a)) < 1e-5


# int32 / bool ops of the embedding lookups' index checks and the mask comparison (no int8 tensors)
_INDEX_OPS = ("ADD", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "LOGICAL_AND", "REDUCE_ALL")
_INDEX_OPS += ("RESHAPE", "SELECT")


def test_int8_full_litert_graph_and_error(tmp_path):
    """The export runs in LiteRT; its graph audit says every op but the one DEQUANTIZE of the logits
    computes on integer tensors (none in the encoder or the embeddings); its error vs fp32 is bounded.

    Measured (this machine, 64 calibration rows, 16 other rows): relative logit error 0.089, argmax
    agreement 1.0 (0.12 before the masked scores got the real scores' range, `full_integer.cpu_ready_ranges`;
    then: the residual stream int16 0.10-0.12, every activation int16 0.07). The same model's
    static `int8` (float residual stream) measures 0.035 (test_export.py). The bound 0.2 fails a
    calibration that averages batch ranges (the quantizer's default: 0.15 on 16 rows, 0.28 with the
    logits clipped) or a float mask bias in the scores (every output wrong: 0.3 and more)."""
    _needs("litert")
    pytest.importorskip("litert_quantizer", reason="litert-quantizer (the export extra) is not installed")
    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import make_forward, sample_batch

    model, params = _model("MobileBertForSequenceClassification")
    params = _perturbed(params, 0.2)
    with pytest.raises(ex.ExportError, match="calibration"):
        ex.to_litert(model, params, str(tmp_path / "none"), seq_lengths=(16,), quantize="int8-full")
    with pytest.raises(ex.ExportError, match="litert only"):
        ex.to_onnx(model, params, str(tmp_path / "onnx"), seq_lengths=(16,), quantize="int8-full")
    calibration = sample_batch(model.config, 64, 16, seed=5)
    m = ex.to_litert(
        model, params, str(tmp_path / "q"), seq_lengths=(16,), quantize="int8-full", calibration=calibration
    )
    audit = m["graph_audit"]
    assert audit["encoder_float_ops"] == [], audit
    assert audit["float_ops"] == {"DEQUANTIZE": 1}, audit  # the logits leaving
    ops = audit["ops"]
    # every dense layer an int8 x int8 kernel; the attention's softmax one int8 op; NoNorm and the
    # residual adds int8 (`full_integer.FULL_INT_RECIPE`); the embedding tables gathered int8
    assert set(ops["FULLY_CONNECTED"]) == {"int32,int8->int8"}, ops["FULLY_CONNECTED"]
    assert ops["SOFTMAX"] == {"int8->int8": 1}, ops["SOFTMAX"]
    assert set(ops["ADD"]) == {"int8->int8", "int32->int32"}, ops["ADD"]  # int32: index arithmetic
    assert set(ops["MUL"]) == {"int8->int8"}, ops["MUL"]
    assert set(ops["GATHER_ND"]) == {"int32,int8->int8"}, ops["GATHER_ND"]
    assert m["kernels"]["fully_connected"]["int8_activations"] == m["kernels"]["fully_connected"]["total"]
    # on the CPU, XNNPACK takes every matmul and elementwise op (the attention matmuls only with zero-point
    # free keys and values, the NoNorm shift ADDs only with constants not too fine for the output: the
    # builtin kernels that ran them made the full-size file 4x slower); left to TFLite's builtin kernels:
    # the softmax, the mask's select, the lookups and the int32/bool index checks
    cpu = audit["cpu_delegate"]
    assert set(cpu["not_taken"]) <= {"SOFTMAX", "SELECT_V2", "GATHER_ND", *_INDEX_OPS}, cpu
    assert cpu["not_taken"].get("ADD", 0) == ops["ADD"].get("int32->int32", 0), cpu

    batch = sample_batch(model.config, 16, 16, seed=6)
    got = ex.load_runtime(str(tmp_path / "q"))(**batch)["logits"]
    ref = np.asarray(make_forward(model.clone(pad_invariant=True), params)(**batch)["logits"])
    err, agree = rel_err(got, ref), float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"int8-full vs fp32: relative logit error {err:.3g}, argmax agreement {agree:.3f}")
    assert err <= 0.2 and agree >= 0.9, (err, agree)


def test_int8_full_float_softmax(tmp_path):
    """`float_ops=("SOFTMAX",)`: the softmax computes in float between the same int8 tensors (DEQUANTIZE,
    SOFTMAX, QUANTIZE), which XNNPACK takes with the rest of the graph; the audit lists the three ops
    per layer as float inside the encoder and names the request; the logits stay within the
    full-integer file's error of fp32. Refused for another quantization or an unknown op type."""
    _needs("litert")
    pytest.importorskip("litert_quantizer", reason="litert-quantizer (the export extra) is not installed")
    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import make_forward, sample_batch

    model, params = _model("MobileBertForSequenceClassification")
    params = _perturbed(params, 0.2)
    calibration = sample_batch(model.config, 64, 16, seed=5)
    kw = {"seq_lengths": (16,), "calibration": calibration}
    with pytest.raises(ex.ExportError, match="--float-ops applies to --format litert --quantize int8-full"):
        ex.to_litert(model, params, str(tmp_path / "x"), quantize="int8", float_ops=("SOFTMAX",), **kw)
    with pytest.raises(ex.ExportError, match="--float-ops GELU: not one of"):
        ex.to_litert(model, params, str(tmp_path / "y"), quantize="int8-full", float_ops=("GELU",), **kw)
    m = ex.to_litert(model, params, str(tmp_path / "f"), quantize="int8-full", float_ops=("SOFTMAX",), **kw)
    audit, layers = m["graph_audit"], model.config.num_hidden_layers
    assert audit["float_ops_requested"] == ["SOFTMAX"]
    assert audit["ops"]["SOFTMAX"] == {"float32->float32": layers}, audit["ops"]["SOFTMAX"]
    assert audit["ops"]["QUANTIZE"].get("float32->int8") == layers, audit["ops"]["QUANTIZE"]
    assert audit["float_ops"] == {"DEQUANTIZE": layers + 1, "QUANTIZE": layers, "SOFTMAX": layers}
    inside = sorted(op.split(" ")[0] for op in audit["encoder_float_ops"])
    assert inside == sorted(["DEQUANTIZE", "SOFTMAX", "QUANTIZE"] * layers), inside
    assert "SOFTMAX" not in audit["cpu_delegate"]["not_taken"], audit["cpu_delegate"]
    strict = ex.to_litert(model, params, str(tmp_path / "s"), quantize="int8-full", **kw)
    assert strict["graph_audit"]["cpu_delegate"]["partitions"] > audit["cpu_delegate"]["partitions"]

    batch = sample_batch(model.config, 16, 16, seed=6)
    ref = np.asarray(make_forward(model.clone(pad_invariant=True), params)(**batch)["logits"])
    got = ex.load_runtime(str(tmp_path / "f"))(**batch)["logits"]
    full = ex.load_runtime(str(tmp_path / "s"))(**batch)["logits"]
    err, err_full = rel_err(got, ref), rel_err(full, ref)
    print(f"vs fp32: int8-full with a float softmax {err:.3g}, full-integer {err_full:.3g}")
    assert err <= 0.2 and float(np.mean(got.argmax(-1) == ref.argmax(-1))) >= 0.9, err
    assert rel_err(got, full) <= 0.1, rel_err(got, full)  # the same int8 grids; the softmax rounds once


def test_graph_audit_finds_a_float_op_in_the_encoder(tmp_path):
    """The audit is not vacuous: the fp32 file of the same model lists its encoder's float ops."""
    _needs("litert")
    from mobilebert_jax import export as ex
    from mobilebert_jax.export.full_integer import graph_audit

    model, params = _model("MobileBertForSequenceClassification")
    ex.to_litert(model, params, str(tmp_path), seq_lengths=(16,), keep_tensor_names=True)
    audit = graph_audit(str(tmp_path / "model.tflite"))
    assert any(
        op.startswith("FULLY_CONNECTED ") and "/encoder/layer/0/" in op for op in audit["encoder_float_ops"]
    )
    assert audit["float_ops"]["FULLY_CONNECTED"] == sum(audit["ops"]["FULLY_CONNECTED"].values())


def _file_grids(path):
    """(scale, zero point) of each int8 tensor an op of the `.tflite` at `path` computes (outputs of
    the ops that change values), and of its int8 constants (the position rows among them)."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        m = schema.Model.GetRootAs(bytearray(f.read()), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    computing = {"FULLY_CONNECTED", "ADD", "MUL", "BATCH_MATMUL", "SOFTMAX", "TANH", "GATHER_ND"}
    sg = m.Subgraphs(0)
    outputs, constants = set(), set()

    def grid(t):
        q = sg.Tensors(t).Quantization()
        return float(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0])

    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        t = op.Outputs(0)
        if names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) in computing:
            if sg.Tensors(t).Type() == schema.TensorType.INT8:
                outputs.add(grid(t))
        for t in op.InputsAsNumpy():
            tensor = sg.Tensors(t)
            if (
                t >= 0
                and tensor.Type() == schema.TensorType.INT8
                and tensor.Quantization().ScaleLength() == 1
            ):
                if m.Buffers(tensor.Buffer()).DataLength() or m.Buffers(tensor.Buffer()).Size():
                    constants.add(grid(t))
    return outputs, constants


def _found(grid, grids, rel=0.02, zero_points=2):
    s, z = grid
    return any(abs(s2 - s) <= rel * s and abs(z2 - z) <= zero_points for s2, z2 in grids)


def test_qat_fake_quant_rounds_as_the_int8_full_file(tmp_path):
    """`--qat int8-full`'s fake quantization rounds the tensors the full-integer file quantizes, on the
    same grids: observed on the float forward of the calibration rows (`rounding=False`: its batch
    ranges are then what the file's calibration saw, without the rounding noise the fake-quantized
    forward adds upstream) every int8 grid the file computes on is one of the fake quantization's and
    back (position rows: a constant of the file), and the fake-quantized JAX forward is as far from
    fp32 as the file is.

    Measured (this model): 47 distinct grids in the file, 49 fake-quantized tensors; relative logit
    error vs fp32 of the JAX fake quantization 0.111, of the LiteRT file 0.092; LiteRT vs JAX fake
    quantization 0.12 (the same rounding model, not the same rounding decisions: an ulp of difference
    moves a value across a step, and the steps compound)."""
    _needs("litert")
    pytest.importorskip("litert_quantizer", reason="litert-quantizer (the export extra) is not installed")
    import flax.linen as nn

    from mobilebert_jax import export as ex
    from mobilebert_jax.export.api import flat_layers
    from mobilebert_jax.export.common import make_forward, sample_batch
    from mobilebert_jax.export.full_integer import full_integer_fake_quant, full_integer_qat_model

    model, params = _model("MobileBertForSequenceClassification")  # with the pooler's tanh
    params = _perturbed(params, 0.2)
    calibration = sample_batch(model.config, 16, 16, seed=5)
    ex.to_litert(
        model, params, str(tmp_path), seq_lengths=(16,), quantize="int8-full", calibration=calibration
    )
    outputs, constants = _file_grids(str(tmp_path / "model.tflite"))
    grids = []
    flat, flat_params = flat_layers(model.clone(pad_invariant=True), params)
    qat_forward = make_forward(full_integer_qat_model(flat), flat_params)
    observe = lambda s, z: grids.append((float(s), int(z)))  # noqa: E731
    with nn.intercept_methods(full_integer_fake_quant(observe, rounding=False)):
        qat_forward(**calibration)
    with nn.intercept_methods(full_integer_fake_quant()):
        qat = np.asarray(qat_forward(**calibration)["logits"])
    print(f"{len(outputs)} grids in the file, {len(grids)} fake-quantized tensors")
    assert [g for g in outputs if not _found(g, grids)] == []
    assert [g for g in grids if not _found(g, outputs | constants)] == []
    got = ex.load_runtime(str(tmp_path))(**calibration)["logits"]
    ref = np.asarray(make_forward(flat, flat_params)(**calibration)["logits"])
    e_qat, e_file = rel_err(qat, ref), rel_err(got, ref)
    print(f"vs fp32: JAX fake quant {e_qat:.3g}, LiteRT int8-full {e_file:.3g}")
    assert 0.5 * e_file <= e_qat <= 2 * e_file, (e_qat, e_file)


def test_qat_static_ranges_follow_the_file(tmp_path):
    """`--qat_ranges static`: the fake quantization with the activation ranges calibrated on the
    export's calibration rows (`calibrate_full_integer_ranges`) rounds, on other rows, on the LiteRT
    int8-full file's grids and computes closer to it than with each batch's own ranges (which the file
    does not have: its ranges are fixed). One range per rounded activation, in forward order; a
    forward with more is refused.

    Measured (this model, 16 other rows): LiteRT vs the static-range fake quantization 0.085, vs the
    batch-range one 0.098 (relative logit error); grids not the file's: 1 of 49 and 43 of 49. On the
    fine-tuned full-size SST-2 model (272 held-out sentences): 0.022 and 0.15 (docs/deploy.md)."""
    _needs("litert")
    pytest.importorskip("litert_quantizer", reason="litert-quantizer (the export extra) is not installed")
    import flax.linen as nn
    import jax

    from mobilebert_jax import export as ex
    from mobilebert_jax.export.api import flat_layers
    from mobilebert_jax.export.common import make_forward, sample_batch
    from mobilebert_jax.export.full_integer import (
        RangeBook,
        calibrate_full_integer_ranges,
        full_integer_fake_quant,
        full_integer_qat_model,
        with_full_integer_fake_quant,
    )

    model, params = _model("MobileBertForSequenceClassification")
    params = _perturbed(params, 0.2)
    calibration = sample_batch(model.config, 32, 16, seed=5)
    ex.to_litert(
        model, params, str(tmp_path), seq_lengths=(16,), quantize="int8-full", calibration=calibration
    )
    flat, flat_params = flat_layers(model.clone(pad_invariant=True), params)
    qat = full_integer_qat_model(flat)
    forward = lambda p, **b: make_forward(qat, p)(**b)  # noqa: E731
    halves = [{k: v[s : s + 16] for k, v in calibration.items()} for s in (0, 16)]
    ranges = calibrate_full_integer_ranges(forward, flat_params, halves)
    assert all(lo <= hi for lo, hi in ranges) and len(ranges) > 40, ranges
    other = sample_batch(model.config, 16, 16, seed=6)
    static = jax.jit(lambda p, b: with_full_integer_fake_quant(make_forward(qat, p), ranges)(**b))
    per_batch = jax.jit(lambda p, b: with_full_integer_fake_quant(make_forward(qat, p))(**b))
    got = ex.load_runtime(str(tmp_path))(**other)["logits"]
    e_static = rel_err(got, np.asarray(static(flat_params, other)["logits"]))
    e_batch = rel_err(got, np.asarray(per_batch(flat_params, other)["logits"]))
    print(f"LiteRT int8-full vs fake quant: static ranges {e_static:.3g}, each batch's {e_batch:.3g}")
    assert e_static <= e_batch, (e_static, e_batch)
    # the grids each forward rounds on, against the file's (scale within 0.1%, zero point within 1):
    # with static ranges all but one per layer (the attention bottleneck's NoNorm, which the fake
    # quantization rounds once, folded, and the converter writes as two int8 tensors, its MUL and ADD);
    # with each batch's own, most differ
    outputs, constants = _file_grids(str(tmp_path / "model.tflite"))
    off = {}
    for name, book in (("static", RangeBook(fixed=ranges)), ("batch", None)):
        grids = []
        observe = lambda s, z, grids=grids: grids.append((float(s), int(z)))  # noqa: E731
        with nn.intercept_methods(full_integer_fake_quant(observe, book=book)):
            forward(flat_params, **other)
        off[name] = [g for g in grids if not _found(g, outputs | constants, 1e-3, 1)]
        print(f"{name} ranges: {len(grids)} grids, {len(off[name])} not the file's")
    assert len(off["static"]) <= model.config.num_hidden_layers, off["static"]
    assert len(off["batch"]) >= len(grids) // 2, off["batch"]
    with pytest.raises(ValueError, match="calibrated ranges for a forward with more activations"):
        with_full_integer_fake_quant(make_forward(qat, flat_params), ranges[:-1])(**other)


def test_qat_int8_full_finetune_then_export(tmp_path, capsys):
    """`finetune --qat int8-full` trains through the full-integer fake quantization (loss falls, every
    gradient non-zero), records the recipe it trained for beside the float weights, and `export
    --quantize int8-full` of the run (ranges calibrated on its training text) runs in LiteRT with the
    audit holding and a bounded error against the run's own fp32 forward."""
    _needs("litert")
    pytest.importorskip("litert_quantizer", reason="litert-quantizer (the export extra) is not installed")
    import json

    import jax
    from test_export import HELD_OUT, TRAIN, qat_start

    from mobilebert_jax import export as ex
    from mobilebert_jax.checkpoints.hub import from_pretrained
    from mobilebert_jax.cli.main import main
    from mobilebert_jax.export.common import make_forward
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    tok = MobileBertTokenizer.default()
    train = qat_start(tmp_path, tok)
    args = ["finetune", "--model", str(tmp_path / "start"), "--task", "sst2", "--train_file", str(train)]
    args += ["--per_device_train_batch_size", "8", "--mesh_data", "1", "--max_seq_length", "16"]
    args += ["--no-progress", "--max_steps", "6", "--learning_rate", "3e-4", "--warmup_steps", "0"]
    args += ["--logging_steps", "1", "--save_steps", "100", "--do_train"]
    assert main([*args, "--output_dir", str(tmp_path / "bad"), "--qat", "int4"]) == 2
    assert "--qat must be one of ('int8', 'int8-full'), got 'int4'" in capsys.readouterr().err
    run = tmp_path / "qat"
    assert main([*args, "--output_dir", str(run), "--qat", "int8-full"]) == 0
    out = capsys.readouterr().out
    # from a trained model, static activation ranges (--qat_ranges auto), calibrated on training rows
    assert "--qat int8-full: training with fake int8" in out and "(static activation ranges)" in out, out
    assert (
        "--qat_ranges static: " in out
        and f"activation ranges over {min(len(TRAIN), 128)} training rows" in out
    ), out
    assert json.loads((run / "run.json").read_text())["qat_ranges"] == "static"
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] and all(r["grad_norm"] > 0 for r in rows if "grad_norm" in r), rows
    assert json.loads((run / "run.json").read_text())["hyperparameters"]["qat"] == "int8-full"
    record = json.loads((run / "hf_model" / "quant_stats.json").read_text())
    assert record["qat"] == "int8-full" and not (run / "hf_model" / "quant_stats.msgpack").exists()

    q = ["--format", "litert", "--quantize", "int8-full", "--seq-lengths", "16"]
    assert main(["export", str(run), str(tmp_path / "full"), *q, "--calibration-file", str(train)]) == 0
    m = json.loads((tmp_path / "full" / "export.json").read_text())
    assert m["graph_audit"]["encoder_float_ops"] == [] and m["graph_audit"]["float_ops"] == {"DEQUANTIZE": 1}
    batch = ex.calibration_batch(HELD_OUT + TRAIN, tok, 16)
    model, params = from_pretrained(str(run / "hf_model"))
    ref = np.asarray(jax.jit(make_forward(model.clone(pad_invariant=True), params))(**batch)["logits"])
    got = ex.load_runtime(str(tmp_path / "full"))(**batch)["logits"]
    err, agree = rel_err(got, ref), float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"QAT int8-full vs its fp32: relative logit error {err:.3g}, argmax agreement {agree:.3f}")
    assert err <= 0.2 and agree >= 0.9, (err, agree)
    # --qat_distillation: the float model (--model, frozen) is the teacher; at weight 1 the labels
    # have no say: the same run on flipped labels trains byte-identical weights
    capsys.readouterr()
    kd = [*args, "--qat", "int8-full", "--qat_distillation", "1"]
    assert main([*kd, "--output_dir", str(tmp_path / "kd")]) == 0
    out = capsys.readouterr().out
    assert "--qat_distillation 1: loss = 0 x labels' CE + 1 x KL(float teacher || model)" in out, out
    flipped = tmp_path / "flipped.tsv"
    flipped.write_text("sentence\tlabel\n" + "".join(f"{t}\t{1 - i % 2}\n" for i, t in enumerate(TRAIN)))
    kd_flipped = [a if a != str(train) else str(flipped) for a in kd]
    assert main([*kd_flipped, "--output_dir", str(tmp_path / "kd_flipped")]) == 0
    a = (tmp_path / "kd" / "hf_model" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "kd_flipped" / "hf_model" / "model.safetensors").read_bytes()
    assert a != (run / "hf_model" / "model.safetensors").read_bytes()
    rows = [json.loads(s) for s in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    kl = [r["loss"] for r in rows if "loss" in r]
    assert kl[-1] < kl[0] and all("teacher_agreement" in r for r in rows if "loss" in r), rows
    # unlabelled text joins the distillation (its rows: the teacher's predictions as their only target)
    text = tmp_path / "text.tsv"
    text.write_text("sentence\n" + "".join(f"{t}\n" for t in HELD_OUT))
    capsys.readouterr()
    more = [*args, "--qat", "int8-full", "--qat_distillation", "0.5", "--qat_distillation_file", str(text)]
    assert main([*more, "--output_dir", str(tmp_path / "kd_text")]) == 0
    out = capsys.readouterr().out
    assert f"--qat_distillation_file: {len(HELD_OUT)} rows of {text} join the training rows" in out, out
    assert f"the float model's outputs on {len(TRAIN) + len(HELD_OUT)} training rows" in out, out
    # the run's identity holds the distillation: its dir refuses the same command with another weight
    other = [a if a != "0.5" else "0.7" for a in more]
    assert main([*other, "--output_dir", str(tmp_path / "kd_text")]) == 2
    assert "holds another run (1 difference: qat_distillation: 0.5 -> 0.7)" in capsys.readouterr().err
    # refused before anything is written: without --qat, out of range, a file without a weight, a random init
    capsys.readouterr()
    for extra, msg in (
        (["--qat_distillation", "0.5"], "--qat_distillation needs --qat"),
        (["--qat", "int8-full", "--qat_distillation", "2"], "--qat_distillation must be in [0, 1], got 2.0"),
        (["--qat", "int8-full", "--qat_distillation_file", str(text)], "--qat_distillation_file needs"),
        (["--qat", "int8", "--qat_ranges", "static"], "--qat_ranges applies to --qat int8-full"),
        (["--qat", "int8-full", "--qat_ranges", "ema"], "--qat_ranges must be one of"),
    ):
        assert main([*args, "--output_dir", str(tmp_path / "no"), *extra]) == 2
        assert msg in capsys.readouterr().err
    rand = [a if a != str(tmp_path / "start") else "mobilebert-test" for a in kd]
    assert main([*rand, "--output_dir", str(tmp_path / "no")]) == 2
    assert "is a random init; the teacher is the float model" in capsys.readouterr().err
    rand = [a if a != str(tmp_path / "start") else "mobilebert-test" for a in args]
    assert (
        main([*rand, "--output_dir", str(tmp_path / "no"), "--qat", "int8-full", "--qat_ranges", "static"])
        == 2
    )
    assert "--qat_ranges static: --model mobilebert-test is a random init" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    # a model trained for another full-integer recipe is refused, saying what to do
    record["rules"] = [[".*", "*", 16]]
    (run / "hf_model" / "quant_stats.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "other"), *q, "--calibration-file", str(train)]) != 0
    assert "another full-integer recipe" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["squad", "ner"])
def test_qat_distillation_qa_and_token_classification(tmp_path, capsys, task):
    """`--qat_distillation` on QA (start and end distributions) and token classification (each real
    token's): at weight 1 the labels have no say (other answers / tags train byte-identical weights,
    other than the teacher's), the loss is the KL to the float teacher and `teacher_agreement` is
    logged; `--qat_distillation_file` (label-free rows) is refused for these heads."""
    pytest.importorskip("litert_quantizer", reason="litert-quantizer (the export extra) is not installed")
    import json

    from test_cli import TINY, _files

    from mobilebert_jax.checkpoints.hub import from_pretrained, save_pretrained
    from mobilebert_jax.cli.main import main

    train = _files(tmp_path, task)
    start = tmp_path / "float"
    run = ["finetune", "--task", task, "--validation-file", train]
    if task == "squad":
        run += ["--task-options", '{"doc_stride": 16, "max_query_length": 16}']
    assert main([*run, "--train-file", train, "--output-dir", str(start), *TINY]) == 0
    # the teacher: the float run's weights perturbed (order-one outputs, which int8 does not round away)
    model, params = from_pretrained(str(start / "hf_model"))
    save_pretrained(str(start / "hf_model"), _perturbed(params, 0.1), model.config, type(model).__name__)
    other = tmp_path / "other_labels"
    text = open(train, encoding="utf-8").read()
    if task == "squad":  # every answer the word "critic" instead of "paris"
        data = json.loads(text)
        for p in data["data"][0]["paragraphs"]:
            p["qas"][0]["answers"] = [{"text": "critic", "answer_start": p["context"].index("critic")}]
        other.write_text(json.dumps(data), encoding="utf-8")
    else:  # the person and place tags swapped
        other.write_text(text.replace("B-PER", "B-X").replace("B-LOC", "B-PER").replace("B-X", "B-LOC"))
    # TINY with the float run as --model (its --model-config dropped) and 4 steps
    tiny = list(TINY)
    del tiny[tiny.index("--model-config") : tiny.index("--model-config") + 2]
    tiny[tiny.index("--model") + 1] = str(start / "hf_model")
    tiny[tiny.index("--max-steps") + 1] = "4"
    kd = [*run, *tiny, "--learning-rate", "1e-3"]
    kd += ["--qat", "int8-full", "--qat_distillation", "1"]
    capsys.readouterr()
    assert main([*kd, "--train-file", train, "--output-dir", str(tmp_path / "kd")]) == 0
    assert (
        "--qat_distillation 1: loss = 0 x labels' CE + 1 x KL(float teacher || model)"
        in capsys.readouterr().out
    )
    assert main([*kd, "--train-file", str(other), "--output-dir", str(tmp_path / "kd_other")]) == 0
    a = (tmp_path / "kd" / "hf_model" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "kd_other" / "hf_model" / "model.safetensors").read_bytes()
    assert a != (start / "hf_model" / "model.safetensors").read_bytes()
    rows = [json.loads(s) for s in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert len(rows) == 4 and all(r["loss"] == r["loss/distillation"] > 0 for r in rows), rows
    assert all(0 <= r["teacher_agreement"] <= 1 for r in rows), rows
    capsys.readouterr()
    refused = [
        *kd,
        "--train-file",
        train,
        "--output-dir",
        str(tmp_path / "no"),
        "--qat_distillation_file",
        train,
    ]
    assert main(refused) == 2
    assert (
        "--qat_distillation_file adds label-free rows to sequence classification only"
        in capsys.readouterr().err
    )
