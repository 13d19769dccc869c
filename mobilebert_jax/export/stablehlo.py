"""`jax.export` → a serialized StableHLO artifact with symbolic batch and length, run without flax."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax.export import common
from mobilebert_jax.export.stablehlo_runtime import MODEL_FILE


def export_stablehlo(model: Any, params: Any) -> Any:
    """The `jax.export.Exported` of the forward: inputs int32 `[b, t]`, `t <= max_position_embeddings`."""
    import jax
    import jax.numpy as jnp
    from jax import export as jexport

    max_t = model.config.max_position_embeddings
    b, t = jexport.symbolic_shape("b, t", constraints=[f"t <= {max_t}"])
    spec = jax.ShapeDtypeStruct((b, t), jnp.int32)
    fn = jax.jit(common.make_forward(model, params))
    return jexport.export(fn)(spec, spec, spec)


def run_in_fresh_process(directory: str, batches: list[dict[str, np.ndarray]], timeout: float = 600) -> list:
    """Runs DIR/model.stablehlo on each batch in one new Python process that imports neither flax nor this
    package (the runtime file is run by path); returns their outputs."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stablehlo_runtime.py")
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz")
        np.savez(inp, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONSAFEPATH"] = "1"  # the script's folder must not shadow packages
        r = subprocess.run(
            [sys.executable, script, directory, inp, out],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:]
            raise common.ExportError(f"running {directory}/{MODEL_FILE} in a fresh process failed: {tail}")
        outputs: list[dict[str, np.ndarray]] = [{} for _ in batches]
        with np.load(out) as z:
            for key in z.files:
                i, name = key.split("/", 1)
                outputs[int(i)][name] = z[key]
        with open(out + ".json", encoding="utf-8") as f:
            loaded = json.load(f)["modules_loaded"]
    if loaded:
        raise common.ExportError(f"the stablehlo runtime process imported {loaded}; it must need only jax")
    return outputs


def write_stablehlo(
    model: Any,
    params: Any,
    out_dir: str,
    *,
    verify_lengths: Sequence[int] = (128,),
    verify_batch_size: int = 2,
    quantize: str = "none",
) -> dict[str, Any]:
    """Writes OUT_DIR/model.stablehlo, checks it in a fresh process; returns the manifest entries."""
    import jax

    if quantize != "none":
        raise common.ExportError(
            f"--quantize {quantize} is not offered for stablehlo (int8 kernels are the LiteRT and ONNX "
            "routes); use --format litert or onnx"
        )
    common.class_name(model)
    t0 = time.perf_counter()
    exp = export_stablehlo(model, params)
    path = os.path.join(out_dir, MODEL_FILE)
    with open(path, "wb") as f:
        f.write(exp.serialize())
    seconds = time.perf_counter() - t0
    fields = _out_keys(exp)  # in the order of exp.out_avals
    manifest: dict[str, Any] = {
        "file": MODEL_FILE,
        "stablehlo": {
            "jax_version": jax.__version__,
            "calling_convention_version": exp.calling_convention_version,
            "platforms": list(exp.platforms),
            "note": "jax.export artifacts are read by JAX releases within its compatibility window "
            "(about 6 months); re-export per JAX release",
        },
        "signatures": [
            {
                "name": "serving_default",
                "inputs": common.io_spec(common.INPUT_NAMES, exp.in_avals),
                "outputs": common.io_spec(fields, exp.out_avals),
            }
        ],
        "export_seconds": round(seconds, 2),
    }
    common.write_manifest(out_dir, {"format": "stablehlo", "quantization": "none", **manifest})
    forward = jax.jit(common.make_forward(model, params))
    lengths = common.check_lengths(verify_lengths, model.config.max_position_embeddings)
    batches = [common.sample_batch(model.config, verify_batch_size, t, seed=i) for i, t in enumerate(lengths)]
    checks = []
    for batch, got in zip(batches, run_in_fresh_process(out_dir, batches)):
        t = batch["input_ids"].shape[1]
        ref = {k: np.asarray(v) for k, v in forward(**batch).items()}
        res = common.compare(got, ref)
        common.check_fp32(res, "none", f"{path} (batch {verify_batch_size}, length {t}, fresh process)")
        checks.append({"batch_size": verify_batch_size, "length": t, **res})
    manifest["verification"] = _summary(checks, "fresh process, jax only (no flax)")
    manifest["runtime_versions"] = common.versions()
    return manifest


def _out_keys(exp: Any) -> list[str]:
    import jax

    leaves = jax.tree_util.tree_unflatten(exp.out_tree, list(range(len(exp.out_avals))))
    return sorted(leaves, key=lambda k: leaves[k])


def _summary(checks: list[dict[str, Any]], how: str) -> dict[str, Any]:
    return {
        "how": how,
        "tolerance_fp32": common.FP32_TOLERANCE,
        "max_rel_error": max(c["max_rel_error"] for c in checks),
        "checks": checks,
    }
