"""`.tflite` without TensorFlow: `jax.export` per length bucket → StableHLO → litert-converter → one
flatbuffer with one signature per bucket (`seq_128`, `seq_384`, ...), weights shared; run in ai-edge-litert.

LiteRT needs static shapes (a symbolic batch leaves a `dynamic_gather` the flatbuffer writer refuses),
hence a fixed batch size and one signature per length. Quantization:
- `dynamic-int8`: litert-quantizer's `dynamic_wi8_afp32` recipe on the fp32 flatbuffer (int8 weights,
  float activations, int8 FULLY_CONNECTED kernels);
- `int8`: int8 weights and activations with static scales, calibrated on real text (or the ranges of
  a `finetune --qat` run), with qwix's ODML route: the dense layers' inputs and weights and the
  attention matmuls' operands are int8; NoNorm, residual adds, softmax and the embedding arithmetic
  stay float (`quantize.RULES` says what and why);
- both int8 modes store the word- and position-embedding tables int8 with per-row scales and gather
  int8 rows (`quantize.int8_embeddings`; the quantizer leaves GATHER tables float, 15.6 MB at full size);
- every file is compacted losslessly (`flatbuffer.compact`: quantization vectors shared, tensor names
  only on the signatures' inputs and outputs): -1.9 MB on the full-size int8 file.

`device_ready=True` (one length, batch 1) writes the file MediaPipe Tasks and the TFLite Task Library
load as is: TFLite Metadata with the vocab and labels (`export/metadata.py`), weights inline, and a
sequence classifier's `probability` (softmax; sigmoid for `multi_label_classification`) as its one
output instead of `logits`, since those clients pass the model's scores to the app unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax.export import common

MODEL_FILE = "model.tflite"


def signature_name(length: int) -> str:
    return f"seq_{length}"


def _convert(exported: Sequence[tuple[str, Any]], output_names: Sequence[str], path: str, qdq: bool) -> None:
    """Converts `[(signature name, jax.export.Exported)]` into one flatbuffer at `path`."""
    from litert_converter import converter_api_ext as conv
    from litert_converter.mlir import ir, passmanager
    from litert_converter.mlir.dialects import stablehlo

    ctx = ir.Context()
    conv.prepare_mlir_context(ctx)
    modules = []
    with ctx:
        for name, exp in exported:
            module = stablehlo.deserialize_portable_artifact(ctx, exp.mlir_module_serialized)
            conv.set_signature(module.operation, name, list(common.INPUT_NAMES), list(output_names))
            config = conv.ConvertToTFLConfig()
            config.model_origin_framework = "JAX"
            if qdq:  # qwix's fake-quant ops → real int8 tensors and kernels
                config.qdq_conversion_mode = "STATIC"
                config.strict_qdq_mode = True
            conv.run_convert_to_tfl_passes(module, passmanager.PassManager(), config)
            modules.append(module)
        merged = modules[0] if len(modules) == 1 else conv.merge_modules(modules)
        conv.export_flatbuffer_to_file(merged.operation, path)


def _export_fixed(fn: Any, batch_size: int, length: int) -> Any:
    import jax
    import jax.numpy as jnp
    from jax import export as jexport

    spec = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
    return jexport.export(jax.jit(fn))(spec, spec, spec)


def _out_keys(exp: Any) -> list[str]:
    import jax

    idx = jax.tree_util.tree_unflatten(exp.out_tree, list(range(len(exp.out_avals))))
    return sorted(idx, key=lambda k: idx[k])


def device_forward(model: Any, forward: Any) -> Any:
    """`forward` as the device clients want it: a sequence classifier returns `probability`."""
    import jax

    if common.class_name(model) != "MobileBertForSequenceClassification":
        return forward
    multi = model.config.problem_type == "multi_label_classification"

    # "probability": the output name the Task Library's BertNLClassifier looks up (Model Maker's)
    def probabilities(input_ids, attention_mask, token_type_ids):
        logits = forward(input_ids, attention_mask, token_type_ids)["logits"]
        return {"probability": jax.nn.sigmoid(logits) if multi else jax.nn.softmax(logits, axis=-1)}

    return probabilities


def _check_device_ready(lengths: Sequence[int], batch_size: int, vocab: Sequence[str] | None) -> None:
    if len(lengths) != 1 or batch_size != 1 or not vocab:
        raise common.ExportError(
            "a device-ready LiteRT export needs one --seq-lengths at --batch-size 1 and a tokenizer "
            "(MediaPipe and the Task Library feed [1, L] and tokenize with its vocab); got lengths "
            f"{list(lengths)}, batch size {batch_size}, {'a' if vocab else 'no'} tokenizer"
        )


def _device_metadata(
    model: Any, path: str, length: int, vocab: Sequence[str], info: dict[str, str]
) -> dict[str, Any]:
    """`compact`'s `metadata` (the TFLite Metadata of the device-ready file at `path`: its one subgraph's
    inputs and outputs) and `associated_files` (the vocab; a classifier's labels)."""
    from mobilebert_jax.export import metadata
    from mobilebert_jax.export.flatbuffer import subgraph_io

    inputs, outputs = subgraph_io(path)
    name = common.class_name(model)
    labelled = (
        ("probability", "logits") if name.endswith(("SequenceClassification", "TokenClassification")) else ()
    )
    fields = {
        "name": name,
        "description": f"{name}, int32 inputs [1, {length}] (ids, mask, segment_ids); outputs {outputs}.",
        "version": f"mobilebert-jax {common.versions('mobilebert-jax').get('mobilebert-jax', 'unknown')}",
        "license": "Apache License 2.0",
        **info,
    }
    buffer = metadata.metadata_buffer(
        input_names=inputs,
        output_names=outputs,
        labelled_outputs=[o for o in outputs if o in labelled],
        probability_outputs=[o for o in outputs if o == "probability"],
        **fields,
    )
    id2label = model.config.id2label if labelled else None
    return {"metadata": buffer, "associated_files": metadata.associated_files(vocab, id2label)}


def _dynamic_int8(src: str, dst: str, per_channel: bool = True) -> None:
    """litert-quantizer's dynamic int8 recipe (`dynamic_wi8_afp32`) with one weight scale per output
    channel, or per tensor (`per_channel=False`: the TFLite Task Library 0.4.4's runtime computes the
    per-channel hybrid FULLY_CONNECTED wrongly, its answers do not depend on the text)."""
    from litert_quantizer import Quantizer
    from litert_quantizer.recipe import TFLOperationName, recipe_manager

    with open(src, "rb") as f:
        buf = f.read()
    rm = recipe_manager.RecipeManager()
    granularity = "CHANNELWISE" if per_channel else "TENSORWISE"
    rm.add_dynamic_config(".*", TFLOperationName.ALL_SUPPORTED, 8, granularity=granularity)
    q = Quantizer(bytearray(buf), rm.get_quantization_recipe())
    result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
    with open(dst, "wb") as f:
        f.write(bytes(result.quantized_model))


def _graph_forward(
    model: Any, params: Any, forward: Any, quantize: str, calibration: Any, quant_stats: Any
) -> tuple[Any, bool]:
    """(the forward to convert, whether it carries qwix's fake-quant ops) for `quantize`."""
    if quantize == "int8-full":
        if calibration is None:
            raise common.ExportError("--quantize int8-full needs calibration text: pass --calibration-file")
        # the same math with the softmax as one op and a bounded mask (model/attention.py "integer")
        return common.make_forward(model.clone(attention_implementation="integer"), params), False
    graph_fn, qdq = forward, False
    if quantize == "int8":
        from mobilebert_jax.export.quantize import qwix_static_int8_forward

        if calibration is None and quant_stats is None:
            raise common.ExportError("--quantize int8 needs calibration text: pass --calibration-file")
        graph_fn, qdq = qwix_static_int8_forward(model, params, calibration, quant_stats), True
    if quantize != "none":
        from mobilebert_jax.export.quantize import with_int8_lookup

        graph_fn = with_int8_lookup(graph_fn, params)
    return graph_fn, qdq


def _convert_and_quantize(
    exported: Any,
    names: Sequence[str],
    path: str,
    quantize: str,
    qdq: bool,
    calibration: Any,
    lengths: Sequence[int],
    batch_size: int,
    device_ready: bool,
    float_ops: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Converts into `path`, quantizing after the conversion where `quantize` does (a device-ready
    dynamic-int8 file with per-tensor weight scales, `_dynamic_int8`); returns the graph audit of a
    full-integer file (else None)."""
    float_path = path + ".fp32.tmp" if quantize in ("dynamic-int8", "int8-full") else path
    _convert(exported, names, float_path, qdq)
    audit = None
    if quantize == "dynamic-int8":
        _dynamic_int8(float_path, path, per_channel=not device_ready)
    elif quantize == "int8-full":
        from mobilebert_jax.export.full_integer import cpu_delegate_audit, full_integer, graph_audit

        full_integer(float_path, path, _signature_calibration(calibration, lengths, batch_size), float_ops)
        audit = graph_audit(path)  # before the compaction drops the tensor names it places ops by
        audit["cpu_delegate"] = cpu_delegate_audit(path)
        if float_ops:
            audit["float_ops_requested"] = list(float_ops)
    if float_path != path:
        os.remove(float_path)
    return audit


def write_litert(
    model: Any,
    params: Any,
    out_dir: str,
    *,
    seq_lengths: Sequence[int] = (128,),
    batch_size: int = 1,
    quantize: str = "none",
    calibration: dict[str, np.ndarray] | None = None,
    quant_stats: Any = None,
    num_threads: int | None = None,
    keep_tensor_names: bool = False,
    device_ready: bool = False,
    vocab: Sequence[str] | None = None,
    model_info: dict[str, str] | None = None,
    float_ops: Sequence[str] = (),
) -> dict[str, Any]:
    """Writes OUT_DIR/model.tflite, runs every signature in LiteRT against the JAX forward; returns the
    manifest entries. `calibration`: int32 inputs `[n, length]` of real text, required for `int8` unless
    `quant_stats` (the ranges `finetune --qat` saved) are given, which are then used instead. The file is
    compacted losslessly (`flatbuffer.compact`: shared quantization vectors, and tensor names only on the
    signatures' inputs and outputs unless `keep_tensor_names`). `device_ready`: the file for MediaPipe and
    the Task Library (module docstring), with `vocab` (tokens by id) and `model_info` (metadata `name`,
    `description`, `version`, `license`, `author` overriding the defaults). `float_ops` (int8-full): op
    types computed in float between int8 tensors (`full_integer.float_islands`)."""
    import jax

    from mobilebert_jax.export.runtime import LiteRTRuntime

    common.class_name(model)
    lengths = common.check_lengths(seq_lengths, model.config.max_position_embeddings)
    if batch_size < 1:
        raise common.ExportError(f"--batch-size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    path = os.path.join(out_dir, MODEL_FILE)
    if device_ready:
        _check_device_ready(lengths, batch_size, vocab)
    forward = common.make_forward(model, params)
    graph_fn, qdq = _graph_forward(model, params, forward, quantize, calibration, quant_stats)
    if device_ready:
        forward, graph_fn = device_forward(model, forward), device_forward(model, graph_fn)
    exported = [(signature_name(t), _export_fixed(graph_fn, batch_size, t)) for t in lengths]
    names = _out_keys(exported[0][1])
    audit = _convert_and_quantize(
        exported, names, path, quantize, qdq, calibration, lengths, batch_size, device_ready, float_ops
    )
    from mobilebert_jax.export.flatbuffer import compact

    meta = _device_metadata(model, path, lengths[0], vocab, model_info or {}) if device_ready else {}
    compaction = compact(path, keep_names=keep_tensor_names, **meta)
    compaction["tensor_names"] = "all" if keep_tensor_names else "signature inputs and outputs"
    seconds = time.perf_counter() - t0
    signatures = [
        {
            "name": n,
            "inputs": common.io_spec(common.INPUT_NAMES, e.in_avals),
            "outputs": common.io_spec(names, e.out_avals),
        }
        for n, e in exported
    ]
    rt = LiteRTRuntime(path, signatures, num_threads=num_threads)
    jitted = jax.jit(forward)
    checks = []
    for i, t in enumerate(lengths):
        batch = common.sample_batch(model.config, batch_size, t, seed=i)
        ref = {k: np.asarray(v) for k, v in jitted(**batch).items()}
        got = rt.run_signature(signature_name(t), batch)
        res = common.compare(got, ref)
        common.check_fp32(res, quantize, f"{path} signature {signature_name(t)}")
        checks.append({"signature": signature_name(t), "batch_size": batch_size, "length": t, **res})
    if quantize != "none" and calibration is not None:
        checks.append(_calibration_check(rt, jitted, calibration, lengths, batch_size))
    return {
        "file": MODEL_FILE,
        "device_ready": device_ready,
        **(
            {"weight_scales": "per-tensor" if device_ready else "per-channel"}
            if quantize == "dynamic-int8"
            else {}
        ),
        **({"metadata_files": sorted(meta["associated_files"])} if device_ready else {}),
        "signatures": signatures,
        "batch_size": batch_size,
        "seq_lengths": lengths,
        "export_seconds": round(seconds, 2),
        "kernels": rt.op_summary(),
        **({"graph_audit": audit} if audit is not None else {}),
        "compaction": compaction,
        "verification": {
            "how": "ai-edge-litert Interpreter, every signature, padded sample batch",
            "tolerance_fp32": common.FP32_TOLERANCE,
            "max_rel_error": max(c["max_rel_error"] for c in checks),
            "checks": checks,
        },
        "runtime_versions": common.versions("litert-converter", "ai-edge-litert", "litert-quantizer", "qwix"),
    }


def _signature_calibration(
    calibration: dict[str, np.ndarray], lengths: Sequence[int], batch_size: int
) -> dict[str, list[dict[str, np.ndarray]]]:
    """The calibration rows as each signature takes them: batches of `batch_size` (the last one
    dropped if short), cut to the signature's length (a row longer than a shorter signature loses its
    tail there, as the input of that length would)."""
    n = len(calibration["input_ids"]) // batch_size * batch_size
    if n == 0:
        raise common.ExportError(f"the calibration text has fewer rows than --batch-size {batch_size}")
    return {
        signature_name(t): [
            {k: np.ascontiguousarray(v[s : s + batch_size, :t], np.int32) for k, v in calibration.items()}
            for s in range(0, n, batch_size)
        ]
        for t in lengths
    }


def _calibration_check(
    rt: Any, jitted: Any, calibration: dict, lengths: Sequence[int], batch_size: int
) -> dict:
    """The quantized model against the fp32 JAX forward on (up to 32 rows of) the calibration text."""
    n = min(32, len(calibration["input_ids"]))
    t = calibration["input_ids"].shape[1]
    outs: dict[str, list] = {}
    refs: dict[str, list] = {}
    for s in range(0, n - n % batch_size, batch_size):
        b = {k: np.asarray(v[s : s + batch_size], np.int32) for k, v in calibration.items()}
        for k, v in rt.run_signature(signature_name(t), b).items():
            outs.setdefault(k, []).append(v)
        for k, v in jitted(**b).items():
            refs.setdefault(k, []).append(np.asarray(v))
    res = common.compare(
        {k: np.concatenate(v) for k, v in outs.items()}, {k: np.concatenate(v) for k, v in refs.items()}
    )
    return {"signature": signature_name(t), "rows": n - n % batch_size, "data": "calibration text", **res}
