"""jax2onnx → `model.onnx`, run in onnxruntime.

By default the graph's batch and length axes are both dynamic, named as HF optimum's exports name them
(`batch_size`, `sequence_length`): it runs any batch and any length up to max_position_embeddings, so
optimum's `ORTModelFor*` and HF pipelines (which pad to the longest text of a batch) feed it as is
(optimum casts the tokenizer's int64 to the graph's int32 inputs). jax2onnx 0.13 keeps the length
symbolic because the position ids come from `lax.broadcasted_iota` (`make_forward`) and the trigram
shift pads rather than concatenates (model/layers.py). `dynamic_length=False` writes the older graph
with one length, the largest of `seq_lengths`, which the runtime pads shorter inputs to.
`dynamic-int8`: onnxruntime's `quantize_dynamic` (int8 weights, MatMulInteger kernels).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax.export import common

MODEL_FILE = "model.onnx"
BATCH_AXIS, LENGTH_AXIS = "batch_size", "sequence_length"  # optimum's names for the dynamic axes


@contextlib.contextmanager
def _quiet(*loggers: str):
    """jax2onnx logs tracebacks of optional plugins (dm_pix, equinox) that fail to import with this JAX,
    and onnx_ir a warning per untyped shape constant; neither concerns this graph."""
    saved = {n: logging.getLogger(n).level for n in loggers}
    for n in loggers:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _convert(
    forward: Any, length: int | None, max_length: int, output_names: Sequence[str], path: str
) -> None:
    """`length` None: a symbolic length (at most `max_length`, which the model's shape checks need)."""
    import jax
    import jax.numpy as jnp

    with _quiet("jax2onnx", "onnx_ir"):
        import jax2onnx

        names = list(output_names)
        dims = f"{BATCH_AXIS}, {LENGTH_AXIS if length is None else length}"
        limit = [f"{LENGTH_AXIS} <= {max_length}"] if length is None else []
        spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims, constraints=limit), jnp.int32)

        def fn(input_ids, attention_mask, token_type_ids):
            out = forward(input_ids, attention_mask, token_type_ids)
            return tuple(out[k] for k in names)

        jax2onnx.to_onnx(
            fn,
            [spec, spec, spec],
            model_name="mobilebert",
            input_names=list(common.INPUT_NAMES),
            output_names=names,
            return_mode="file",
            output_path=path,
        )


def external_files(path: str) -> list[str]:
    """The external-data files (beside `path`) the .onnx at `path` reads its large tensors from: jax2onnx
    writes tensors above its size threshold (at full size the word and position tables, 16.7 MB) to
    `model.onnx.data`."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    found = {
        e.value
        for t in m.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return sorted(found)


def dynamic_axes(path: str) -> dict[str, dict[str, str]]:
    """`{tensor: {axis: name}}` of the graph's symbolic input and output dimensions (torch.onnx's
    `dynamic_axes` form), read from the file."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    out = {}
    for v in [*graph.input, *graph.output]:
        axes = {str(i): d.dim_param for i, d in enumerate(v.type.tensor_type.shape.dim) if d.dim_param}
        if axes:
            out[v.name] = axes
    return out


def _dynamic_int8(src: str, dst: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)


def _write(forward: Any, length: int | None, max_length: int, names: list[str], path: str, quantize: str):
    """Converts (and quantizes) to `path`; returns the files written beside it and the seconds taken."""
    out_dir = os.path.dirname(path)
    t0 = time.perf_counter()
    float_path = path + ".fp32.tmp" if quantize == "dynamic-int8" else path
    _convert(forward, length, max_length, names, float_path)
    float_data = external_files(float_path)
    if quantize == "dynamic-int8":
        _dynamic_int8(float_path, path)
        os.remove(float_path)
    data = external_files(path) if quantize == "dynamic-int8" else float_data
    for name in set(float_data) - set(data):  # the float intermediate's, not read by the int8 model
        os.remove(os.path.join(out_dir, name))
    files = [MODEL_FILE, *data]
    umask = os.umask(0)  # the external data is written through a private temp file (mode 0600)
    os.umask(umask)
    for name in files:
        os.chmod(os.path.join(out_dir, name), 0o666 & ~umask)
    return files, time.perf_counter() - t0


def write_onnx(
    model: Any,
    params: Any,
    out_dir: str,
    *,
    seq_lengths: Sequence[int] = (128,),
    verify_batch_size: int = 2,
    quantize: str = "none",
    calibration: dict[str, np.ndarray] | None = None,
    num_threads: int | None = None,
    dynamic_length: bool = True,
) -> dict[str, Any]:
    """Writes OUT_DIR/model.onnx and checks it in onnxruntime against the JAX forward; returns the
    manifest entries.

    `dynamic_length` (default): batch and length dynamic, verified at batch 1 and `verify_batch_size`
    and at each of `seq_lengths` plus a shorter odd length; the manifest's `seq_lengths` is then
    `[max_position_embeddings]`, the longest input it takes. Else the length is max(seq_lengths)."""
    import jax

    from mobilebert_jax.export.runtime import OnnxRuntime

    if quantize == "int8":
        raise common.ExportError(
            "--quantize int8 (static activations) is offered for --format litert; for onnx use dynamic-int8"
        )
    common.class_name(model)
    max_positions = model.config.max_position_embeddings
    lengths = common.check_lengths(seq_lengths, max_positions)
    if dynamic_length:
        lengths = sorted({(lengths[0] // 2) | 1, *lengths})  # and a shorter, odd one
    else:
        lengths = lengths[-1:]
    forward = common.make_forward(model, params)
    jitted = jax.jit(forward)
    names = list(jax.eval_shape(forward, **common.sample_batch(model.config, 1, lengths[-1])))
    path = os.path.join(out_dir, MODEL_FILE)
    graph_length = None if dynamic_length else lengths[-1]
    files, seconds = _write(forward, graph_length, max_positions, names, path, quantize)
    rt = OnnxRuntime(path, max_positions if dynamic_length else lengths[-1], num_threads=num_threads)
    checks = []
    for i, (b, t) in enumerate((b, t) for t in lengths for b in sorted({1, verify_batch_size})):
        batch = common.sample_batch(model.config, b, t, seed=i)
        want = {k: np.asarray(v) for k, v in jitted(**batch).items()}
        res = common.compare(rt.run_padded(batch), want)
        common.check_fp32(res, quantize, f"{path} (batch {b}, length {t})")
        checks.append({"batch_size": b, "length": t, **res})
    if quantize != "none" and calibration is not None:
        n = min(32, len(calibration["input_ids"]))
        b = {k: np.asarray(v[:n], np.int32) for k, v in calibration.items()}
        want = {k: np.asarray(v) for k, v in jitted(**b).items()}
        checks.append({"rows": n, "data": "calibration text", **common.compare(rt.run_padded(b), want)})
    name = "serving_default" if dynamic_length else f"seq_{lengths[-1]}"
    return {
        "file": MODEL_FILE,
        "files": files,
        "signatures": [{"name": name, "inputs": rt.inputs, "outputs": rt.outputs}],
        "seq_lengths": [max_positions] if dynamic_length else lengths,
        "dynamic_axes": dynamic_axes(path),
        "export_seconds": round(seconds, 2),
        "verification": {
            "how": "onnxruntime CPUExecutionProvider, padded sample batches",
            "tolerance_fp32": common.FP32_TOLERANCE,
            "max_rel_error": max(c["max_rel_error"] for c in checks),
            "checks": checks,
        },
        "runtime_versions": common.versions("jax2onnx", "onnx", "onnxruntime"),
    }
