"""PT-named state dicts from files, without torch: safetensors (single and sharded) and `pytorch_model.bin`.

The `.bin` reader is our own allow-list unpickler over PyTorch's zip format: it rebuilds tensors as
numpy arrays and refuses every other global, so a malicious pickle is never run (the same guarantee as
`torch.load(weights_only=True)`, without needing torch).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
TF_WEIGHTS = "tf_model.h5"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or unsafe."""


# -------------------------------------------------------------------------------- pytorch_model.bin
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _np_dtype(name: str):
    dt = _STORAGE_DTYPES[name]
    if dt == "bfloat16":
        import ml_dtypes  # a jax dependency

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dt)


def _rebuild_tensor(storage, offset, size, stride, *args):
    arr = storage
    itemsize = arr.dtype.itemsize
    if len(size) == 0:
        return arr[offset].copy()
    out = np.lib.stride_tricks.as_strided(
        arr[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.ascontiguousarray(out)


def _rebuild_parameter(data, requires_grad, backward_hooks, *args):
    return data


class _SafeUnpickler(pickle.Unpickler):
    """Allows only what a state dict of tensors needs; anything else raises."""

    _ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, fh, zf: zipfile.ZipFile, root: str, path: str):
        super().__init__(fh)
        self.zf, self.root, self.path = zf, root, path
        self._cache: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"{self.path}: refusing to unpickle global {module}.{name}: a weights file holds only tensors "
            "(this file may be malicious; nothing was executed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {stype!r}")
        if key not in self._cache:
            name = f"{self.root}/data/{key}"
            try:
                raw = self.zf.read(name)
            except KeyError:
                raise CheckpointError(f"{self.path}: storage {name} is missing (truncated file?)") from None
            dtype = _np_dtype(stype.name)
            if len(raw) < numel * dtype.itemsize:
                raise CheckpointError(
                    f"{self.path}: storage {key} has {len(raw)} bytes, expected {numel * dtype.itemsize}"
                )
            self._cache[key] = np.frombuffer(raw, dtype=dtype, count=numel)
        return self._cache[key]


def load_pytorch_bin(path: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch zip checkpoint (torch >= 1.6 format) into numpy arrays, executing nothing."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (truncated, corrupted, or the legacy pre-1.6 format; "
            "re-save it with a recent torch or convert it to safetensors)"
        ) from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise CheckpointError(f"{path}: no data.pkl inside the archive")
        root = pkl[0].rsplit("/", 1)[0] if "/" in pkl[0] else ""
        try:
            with zf.open(pkl[0]) as fh:
                obj = _SafeUnpickler(fh, zf, root, path).load()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


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
