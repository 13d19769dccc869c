"""PT-named state dicts from files, without torch: safetensors (single and sharded) and `pytorch_model.bin`.

The `.bin` reader (`torch_pickle.py`) is our own allow-list unpickler over both of torch's formats (zip,
and the legacy pre-1.6 stream): it rebuilds tensors as numpy arrays and refuses every other global, so a
malicious pickle is never run (the same guarantee as `torch.load(weights_only=True)`, without torch).
"""

from __future__ import annotations

import json
import os

import numpy as np

from mobilebert_jax.checkpoints.errors import CheckpointError
from mobilebert_jax.checkpoints.torch_pickle import load_pytorch_bin

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
TF_WEIGHTS = "tf_model.h5"


# -------------------------------------------------------------------------------- safetensors
def load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncation/corruption
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from None


def load_sharded_safetensors(index_path: str) -> dict[str, np.ndarray]:
    folder = os.path.dirname(index_path)
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({e})") from None
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.exists(shard_path):
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        out.update(load_safetensors(shard_path))
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise CheckpointError(
            f"{index_path}: tensors listed in the index but absent from the shards: {missing}"
        )
    return out


def load_state_dict(folder: str) -> dict[str, np.ndarray]:
    """The PT-named state dict of an HF model directory (safetensors preferred, as HF does)."""
    for name, fn in (
        (SAFE_WEIGHTS, load_safetensors),
        (SAFE_INDEX, load_sharded_safetensors),
        (PT_WEIGHTS, load_pytorch_bin),
    ):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return fn(p)
    if os.path.exists(os.path.join(folder, TF_WEIGHTS)):
        from mobilebert_jax.checkpoints.tensorflow import h5_to_pytorch_names

        return h5_to_pytorch_names(os.path.join(folder, TF_WEIGHTS))
    raise CheckpointError(
        f"{folder}: no weights found (looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, {PT_WEIGHTS}, {TF_WEIGHTS})"
    )
