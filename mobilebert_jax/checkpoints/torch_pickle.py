"""`torch.save` files read without torch: the zip format (torch >= 1.6) and the legacy format before it.

Both formats are a pickle whose tensors point at storages through `persistent_id` tuples
`('storage', storage_type, key, location, numel[, view_metadata])`:

- zip (`_use_new_zipfile_serialization=True`, the default since 1.6): `archive/data.pkl` plus one raw
  file `archive/data/<key>` per storage.
- legacy (pre-1.6; HF hub uploads of 2019-2020 such as `google/mobilebert-uncased`): one stream of
  pickles: the magic number, the protocol version (1001), a sys-info dict (byte order, type sizes), the
  object, the sorted list of storage keys, then each storage's raw bytes prefixed by its int64
  element count. A storage is read only after the object, so tensors are rebuilt lazily.

The unpickler is an allow-list: `OrderedDict`, torch's tensor/parameter rebuild functions and the
storage type names. Every other global raises `CheckpointError` before anything is called, so a
malicious pickle is never run (the guarantee of `torch.load(weights_only=True)`). Views are rebuilt
with bounds checks against their storage; tensors that share a storage (tied weights) share one read.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from mobilebert_jax.checkpoints.errors import CheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}


def _np_dtype(name: str) -> np.dtype:
    dt = _STORAGE_DTYPES[name]
    if dt == "bfloat16":
        import ml_dtypes  # a jax dependency

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dt)


def _from_bytes(raw: bytes, dtype: np.dtype, count: int, little_endian: bool) -> np.ndarray:
    arr = np.frombuffer(raw, dtype=dtype, count=count)
    # torch wrote storages in the writer's byte order (the sys-info header says which).
    return arr if little_endian == (sys.byteorder == "little") else arr.byteswap()


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A (possibly view) reference to a storage: elements [offset, offset + numel) of storage `key`."""

    key: str
    dtype: np.dtype
    numel: int
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class _LazyTensor:
    ref: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *args) -> _LazyTensor:
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    return _LazyTensor(
        storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    )


def _rebuild_parameter(data, requires_grad, backward_hooks, *args):
    return data


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only what a state dict of tensors needs; anything else raises before it runs."""

    _ALLOWED: dict[tuple[str, str], Callable] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,  # torch < 1.0
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, fh: BinaryIO, path: str, allow_storages: bool = True):
        super().__init__(fh)
        self.path, self.allow_storages = path, allow_storages
        self.storages: dict[str, _StorageRef] = {}  # root key -> whole storage

    def find_class(self, module: str, name: str):
        if self.allow_storages:
            if (module, name) in self._ALLOWED:
                return self._ALLOWED[(module, name)]
            if module == "torch" and name in _STORAGE_DTYPES:
                return _StorageType(name)
        raise CheckpointError(
            f"{self.path}: refusing to unpickle global {module}.{name}: a weights file holds only tensors "
            "(this file may be malicious; nothing was executed)"
        )

    def persistent_load(self, pid):
        if not self.allow_storages:
            raise CheckpointError(f"{self.path}: unexpected persistent id in the file header")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
            raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r}")
        stype, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {stype!r}")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.path}: storage {key} has an invalid size {numel!r}")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        dtype = _np_dtype(stype.name)
        root = self.storages.setdefault(key, _StorageRef(key, dtype, numel))
        if root.dtype != dtype or root.numel != numel:
            raise CheckpointError(f"{self.path}: storage {key} is referenced with two types or sizes")
        if view is None:
            return root
        # Pre-1.0 storage views: (view key, element offset, element count) into the root storage.
        _view_key, offset, view_numel = view
        if not (0 <= offset and 0 <= view_numel and offset + view_numel <= numel):
            raise CheckpointError(
                f"{self.path}: storage view [{offset}, {offset + view_numel}) is outside storage {key} "
                f"of {numel} elements"
            )
        return _StorageRef(key, dtype, view_numel, offset)


def _materialize(obj: Any, storages: dict[str, np.ndarray], path: str) -> Any:
    """Replaces every `_LazyTensor` inside dicts/lists/tuples by a numpy array (a copy, bounds-checked)."""
    if isinstance(obj, _LazyTensor):
        ref = obj.ref
        base = storages[ref.key][ref.offset : ref.offset + ref.numel]
        if any(s < 0 for s in obj.size) or any(s < 0 for s in obj.stride):
            raise CheckpointError(f"{path}: tensor with negative size or stride {obj.size}/{obj.stride}")
        if 0 in obj.size:
            return np.zeros(obj.size, base.dtype)
        last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
        if obj.offset < 0 or last >= len(base):
            raise CheckpointError(
                f"{path}: a tensor of shape {obj.size} (offset {obj.offset}, stride {obj.stride}) reaches "
                f"element {last} of storage {ref.key}, which has {len(base)} (truncated or corrupted file)"
            )
        view = np.lib.stride_tricks.as_strided(
            base[obj.offset :], shape=obj.size, strides=tuple(s * base.dtype.itemsize for s in obj.stride)
        )
        return np.array(view, order="C", copy=True)  # ascontiguousarray would make 0-d arrays 1-d
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v, storages, path)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, storages, path) for v in obj)
    return obj


def _unpickle(fh: BinaryIO, path: str, **kw) -> tuple[Any, _SafeUnpickler]:
    up = _SafeUnpickler(fh, path, **kw)
    try:
        return up.load(), up
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(
            f"{path}: cannot read checkpoint, truncated or corrupted ({type(e).__name__}: {e})"
        ) from None


# ------------------------------------------------------------------------------------------------ zip
def _load_zip(path: str) -> Any:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: a truncated or corrupted PyTorch zip checkpoint") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise CheckpointError(f"{path}: no data.pkl inside the archive")
        root = pkl[0].rsplit("/", 1)[0] if "/" in pkl[0] else ""
        prefix = f"{root}/" if root else ""
        little = True  # torch >= 2.1 records the writer's byte order; older zip files are little-endian
        if f"{prefix}byteorder" in zf.namelist():
            little = zf.read(f"{prefix}byteorder").strip() != b"big"
        try:
            with zf.open(pkl[0]) as fh:
                obj, up = _unpickle(fh, path)
            storages = {}
            for key, ref in up.storages.items():
                name = f"{prefix}data/{key}"
                try:
                    raw = zf.read(name)
                except KeyError:
                    raise CheckpointError(f"{path}: storage {name} is missing (truncated file?)") from None
                want = ref.numel * ref.dtype.itemsize
                if len(raw) < want:
                    raise CheckpointError(f"{path}: storage {key} has {len(raw)} bytes, expected {want}")
                storages[key] = _from_bytes(raw, ref.dtype, ref.numel, little)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    return _materialize(obj, storages, path)


# ------------------------------------------------------------------------------------------------ legacy
def _read_exact(fh: BinaryIO, n: int, path: str, what: str) -> bytes:
    b = fh.read(n)
    if len(b) != n:
        raise CheckpointError(f"{path}: truncated file: {what} needs {n} bytes, {len(b)} left")
    return b


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as fh:
        header = dict(allow_storages=False)
        magic, _ = _unpickle(fh, path, **header)
        if magic != LEGACY_MAGIC:
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (no zip archive, no legacy magic number)"
            )
        protocol, _ = _unpickle(fh, path, **header)
        if protocol != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: legacy PyTorch protocol version {protocol!r}, expected 1001")
        sys_info, _ = _unpickle(fh, path, **header)
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        obj, up = _unpickle(fh, path)
        keys, _ = _unpickle(fh, path, **header)
        if not isinstance(keys, list) or set(map(str, keys)) != set(up.storages):
            raise CheckpointError(f"{path}: the storage key list does not match the storages the pickle uses")
        order = "<" if little else ">"
        storages = {}
        for key in map(str, keys):
            ref = up.storages[key]
            (numel,) = struct.unpack(order + "q", _read_exact(fh, 8, path, f"the size of storage {key}"))
            if numel != ref.numel:
                raise CheckpointError(
                    f"{path}: storage {key} holds {numel} elements, the pickle says {ref.numel}"
                )
            raw = _read_exact(fh, numel * ref.dtype.itemsize, path, f"storage {key}")
            storages[key] = _from_bytes(raw, ref.dtype, numel, little)
    return _materialize(obj, storages, path)


# ------------------------------------------------------------------------------------------------ public
def load_torch_file(path: str) -> Any:
    """The object of a `torch.save` file (zip or legacy format), tensors as numpy arrays; runs nothing."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path):
        return _load_zip(path)
    if head[257:262] == b"ustar":
        raise CheckpointError(
            f"{path}: a tar checkpoint (torch <= 0.3) is not supported; re-save it with torch or convert it"
        )
    if head[:1] != b"\x80":
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy pickle stream)"
        )
    return _load_legacy(path)


def load_pytorch_bin(path: str) -> dict[str, np.ndarray]:
    """A `pytorch_model.bin` (either format) → {name: numpy array}; non-tensor entries are left out."""
    obj = load_torch_file(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
