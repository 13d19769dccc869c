"""Runs a `model.stablehlo` artifact with JAX alone: no flax, no mobilebert_jax model code.

This file imports only the standard library, numpy and jax, so that it can run as a script in a fresh
process (`python stablehlo_runtime.py DIR INPUTS.npz OUTPUTS.npz`), which is how `to_stablehlo` checks
that what it wrote runs without the model's code.

A `jax.export` artifact is not an archive format: JAX reads artifacts whose calling-convention version
lies in its supported window (about six months of releases). Re-export per JAX release; `load_stablehlo`
refuses artifacts outside the window with an error that says so.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

MODEL_FILE = "model.stablehlo"


class StableHLOCompatibilityError(RuntimeError):
    """The artifact was written by a JAX this one cannot read: re-export it."""


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def load_stablehlo(directory: str) -> Callable[..., dict[str, np.ndarray]]:
    """`fn(input_ids, attention_mask, token_type_ids) -> {name: np.ndarray}` from DIR/model.stablehlo.

    Inputs are int32 `[batch, length]` with any batch and 1 <= length <= max_position_embeddings.
    Raises `StableHLOCompatibilityError` when the artifact's JAX is outside this JAX's window.
    """
    import jax
    from jax import export as jexport

    path = os.path.join(directory, MODEL_FILE)
    meta: dict[str, Any] = {}
    manifest = os.path.join(directory, "export.json")
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            meta = json.load(f).get("stablehlo", {})
    exported_by = meta.get("jax_version", "unknown")
    redo = (
        f"re-export the model with this JAX ({jax.__version__}): "
        "`mobilebert-jax export MODEL OUT_DIR --format stablehlo`"
    )
    ccv = meta.get("calling_convention_version")
    lo = jexport.minimum_supported_calling_convention_version
    hi = jexport.maximum_supported_calling_convention_version
    if ccv is not None and not lo <= int(ccv) <= hi:
        raise StableHLOCompatibilityError(
            f"{path} was exported by JAX {exported_by} with calling convention {ccv}; JAX "
            f"{jax.__version__} reads versions {lo}..{hi} only: {redo}"
        )
    if exported_by != "unknown" and _version_tuple(exported_by) > _version_tuple(jax.__version__):
        raise StableHLOCompatibilityError(
            f"{path} was exported by a newer JAX ({exported_by}) than this one ({jax.__version__}): "
            f"upgrade JAX, or {redo}"
        )
    try:
        with open(path, "rb") as f:
            blob = bytearray(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a stablehlo export directory") from None
    try:
        exp = jexport.deserialize(blob)
    except Exception as e:  # JAX's own refusal of an artifact outside its window, or a damaged file
        raise StableHLOCompatibilityError(
            f"{path} (exported by JAX {exported_by}) cannot be read by JAX {jax.__version__}: "
            f"{type(e).__name__}: {e}; {redo}"
        ) from None
    call = jax.jit(exp.call)

    def run(input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        ids = np.asarray(input_ids, np.int32)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, np.int32)
        return {k: np.asarray(v) for k, v in call(ids, mask, types).items()}

    run.exported = exp  # type: ignore[attr-defined]
    return run


def _main(argv: list[str]) -> int:
    """DIR INPUTS.npz OUTPUTS.npz: runs every batch `{i}/input_ids`, ... of INPUTS, writes `{i}/name`."""
    directory, inputs, outputs = argv
    with np.load(inputs) as z:
        arrays = {k: z[k] for k in z.files}
    fn = load_stablehlo(directory)
    results = {}
    for i in sorted({k.split("/")[0] for k in arrays}, key=int):
        out = fn(arrays[f"{i}/input_ids"], arrays[f"{i}/attention_mask"], arrays[f"{i}/token_type_ids"])
        results.update({f"{i}/{k}": v for k, v in out.items()})
    loaded = sorted(m for m in ("flax", "mobilebert_jax") if m in sys.modules)
    np.savez(outputs, **results)
    with open(outputs + ".json", "w", encoding="utf-8") as f:
        json.dump({"modules_loaded": loaded}, f)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
