"""jax2onnx → `model.onnx` with a dynamic batch and a fixed length, run in onnxruntime.

jax2onnx keeps the batch dimension symbolic (position ids are passed explicitly); a symbolic length
fails there, so the graph has one length, the largest of `seq_lengths`: the runtime pads shorter
inputs. `dynamic-int8`: onnxruntime's `quantize_dynamic` (int8 weights, MatMulInteger kernels).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax.export import common

MODEL_FILE = "model.onnx"


def _convert(forward: Any, length: int, output_names: Sequence[str], path: str) -> None:
    import jax
    import jax.numpy as jnp

    # jax2onnx logs tracebacks of its optional plugins (dm_pix, equinox) that fail to import with this
    # JAX; they are not used here.
    logging.getLogger("jax2onnx").setLevel(logging.CRITICAL)
    import jax2onnx

    names = list(output_names)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"B, {length}"), jnp.int32)

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


def _dynamic_int8(src: str, dst: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)


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
) -> dict[str, Any]:
    """Writes OUT_DIR/model.onnx (batch dynamic, length max(seq_lengths)), checks it in onnxruntime."""
    import jax

    from mobilebert_jax.export.runtime import OnnxRuntime

    if quantize == "int8":
        raise common.ExportError(
            "--quantize int8 (static activations) is offered for --format litert; for onnx use dynamic-int8"
        )
    common.class_name(model)
    length = max(common.check_lengths(seq_lengths, model.config.max_position_embeddings))
    forward = common.make_forward(model, params)
    jitted = jax.jit(forward)
    probe = common.sample_batch(model.config, verify_batch_size, length)
    ref = {k: np.asarray(v) for k, v in jitted(**probe).items()}
    names = list(ref)
    path = os.path.join(out_dir, MODEL_FILE)
    t0 = time.perf_counter()
    float_path = path + ".fp32.tmp" if quantize == "dynamic-int8" else path
    _convert(forward, length, names, float_path)
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
    seconds = time.perf_counter() - t0
    rt = OnnxRuntime(path, length, num_threads=num_threads)
    signatures = [{"name": f"seq_{length}", "inputs": rt.inputs, "outputs": rt.outputs}]
    checks = []
    for i, b in enumerate(sorted({1, verify_batch_size})):
        batch = probe if b == verify_batch_size else common.sample_batch(model.config, b, length, seed=i + 1)
        want = ref if b == verify_batch_size else {k: np.asarray(v) for k, v in jitted(**batch).items()}
        res = common.compare(rt.run_padded(batch), want)
        common.check_fp32(res, quantize, f"{path} (batch {b}, length {length})")
        checks.append({"batch_size": b, "length": length, **res})
    if quantize != "none" and calibration is not None:
        n = min(32, len(calibration["input_ids"]))
        b = {k: np.asarray(v[:n], np.int32) for k, v in calibration.items()}
        want = {k: np.asarray(v) for k, v in jitted(**b).items()}
        checks.append({"rows": n, "data": "calibration text", **common.compare(rt.run_padded(b), want)})
    return {
        "file": MODEL_FILE,
        "files": files,
        "signatures": signatures,
        "seq_lengths": [length],
        "export_seconds": round(seconds, 2),
        "verification": {
            "how": "onnxruntime CPUExecutionProvider, padded sample batches",
            "tolerance_fp32": common.FP32_TOLERANCE,
            "max_rel_error": max(c["max_rel_error"] for c in checks),
            "checks": checks,
        },
        "runtime_versions": common.versions("jax2onnx", "onnx", "onnxruntime"),
    }
