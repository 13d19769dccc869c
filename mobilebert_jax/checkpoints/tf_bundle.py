"""A reader of TensorFlow's tensor-bundle checkpoints (`model.ckpt.index` + `model.ckpt.data-*`), no TF.

The format (TensorFlow `core/util/tensor_bundle`), as read here:

- `PREFIX.index` is a LevelDB-style sorted table (`core/lib/io/table`): data blocks, an index block
  and a 48-byte footer ending in the magic number 0xdb4775248b80fb57. Every block is followed by a
  5-byte trailer: a compression byte (TensorFlow writes 0, uncompressed) and the masked crc32c of the
  block plus that byte. The key "" holds a `BundleHeaderProto` (number of shards, endianness); every
  other key is a tensor name whose value is a `BundleEntryProto` (dtype, shape, shard id, offset,
  size, masked crc32c of the tensor's bytes).
- `PREFIX.data-0000k-of-0000N` hold the raw little-endian tensor bytes (C order). Strings are stored
  as varint64 lengths, a masked crc32c of those lengths, then the bytes.

Both protobufs are decoded by hand from the wire format. Every checksum in the format is verified
(`verify=True`), so truncated or corrupted files raise `BundleError` naming the file and the tensor.
crc32c comes from `google-crc32c` (hardware accelerated); without its C extension a vectorised numpy
implementation is used instead (about 0.3 s per 100 MB).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import struct
from collections.abc import Callable, Iterator

import numpy as np

__all__ = [
    "BundleError",
    "BundleReader",
    "TensorEntry",
    "crc32c",
    "list_variables",
    "load_checkpoint",
    "mask_crc",
    "resolve_checkpoint_prefix",
    "unmask_crc",
]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8


class BundleError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or uses a feature this reader lacks."""


# ---------------------------------------------------------------------------------------------- crc32c
_POLY = 0x82F63B78  # Castagnoli, reflected


def _apply_op(op: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Applies a GF(2)-linear map on 32-bit registers given as 4 byte tables [4, 256]."""
    return op[0][r & 0xFF] ^ op[1][(r >> 8) & 0xFF] ^ op[2][(r >> 16) & 0xFF] ^ op[3][r >> 24]


@functools.lru_cache(maxsize=1)
def _one_zero_byte_op() -> np.ndarray:
    """The register update for one zero byte: r -> T[r & 0xff] ^ (r >> 8), as 4 byte tables."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    v = np.arange(256, dtype=np.uint32)
    op = np.empty((4, 256), np.uint32)
    for k in range(4):
        r = v << np.uint32(8 * k)
        op[k] = t[r & 0xFF] ^ (r >> 8)
    return op


@functools.lru_cache(maxsize=64)
def _zero_bytes_op(n: int) -> np.ndarray:
    """The register update for n zero bytes (by repeated squaring), as 4 byte tables."""
    result = None
    power = _one_zero_byte_op()
    while n:
        if n & 1:
            result = power if result is None else _apply_op(power, result)
        n >>= 1
        if n:
            power = _apply_op(power, power)
    if result is None:  # n == 0: identity
        v = np.arange(256, dtype=np.uint32)
        result = np.stack([v << np.uint32(8 * k) for k in range(4)])
    return result


@functools.lru_cache(maxsize=1)
def _word_tables() -> tuple[np.ndarray, np.ndarray]:
    """Register update after xoring in a 4-byte word: r -> A[r & 0xffff] ^ B[r >> 16]."""
    op4 = _zero_bytes_op(4)
    x = np.arange(65536, dtype=np.uint32)
    return _apply_op(op4, x), _apply_op(op4, x << np.uint32(16))


def _register_from_zero(data: np.ndarray) -> int:
    """The raw CRC register after `data` (uint8 [n]) starting from 0, lane-parallel in numpy."""
    n = data.size
    if n < 4096:
        r = np.zeros((1,), np.uint32)
        op = _one_zero_byte_op()
        for b in data.tolist():
            r = _apply_op(op, r ^ np.uint32(b))
        return int(r[0])
    lanes = 1 << min(14, (n // 256).bit_length() - 1)  # power of two, lanes of >= 256 bytes
    lane_len = (n // lanes) // 4 * 4
    body = data[: lanes * lane_len].view("<u4").reshape(lanes, lane_len // 4)
    lo, hi = _word_tables()
    r = np.zeros((lanes,), np.uint32)
    for j in range(body.shape[1]):
        r ^= body[:, j]
        r = lo[r & 0xFFFF] ^ hi[r >> 16]
    seg = lane_len
    while r.size > 1:  # tree-combine: reg(A || B) = shift_|B|(reg(A)) ^ reg(B)
        r = _apply_op(_zero_bytes_op(seg), r[0::2]) ^ r[1::2]
        seg *= 2
    reg = int(r[0])
    tail = data[lanes * lane_len :]
    if tail.size:
        shifted = int(_apply_op(_zero_bytes_op(int(tail.size)), np.array([reg], np.uint32))[0])
        reg = shifted ^ _register_from_zero(tail)
    return reg


def _crc32c_numpy(data, value: int = 0) -> int:
    arr = np.frombuffer(data, dtype=np.uint8)
    init = np.array([(value ^ 0xFFFFFFFF) & 0xFFFFFFFF], np.uint32)
    shifted = int(_apply_op(_zero_bytes_op(int(arr.size)), init)[0])
    return (shifted ^ _register_from_zero(arr)) ^ 0xFFFFFFFF


def _pick_crc32c() -> Callable[..., int]:
    try:
        import google_crc32c
    except ImportError:
        return _crc32c_numpy
    if getattr(google_crc32c, "implementation", "") != "c":
        return _crc32c_numpy

    def fast(data, value: int = 0) -> int:
        if not isinstance(data, bytes):
            data = bytes(data)  # the C extension takes bytes only (a copy: ~10 ms per 100 MB)
        return google_crc32c.extend(value, data)

    return fast


_crc32c_impl = _pick_crc32c()


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """Standard (unmasked) CRC-32C of `data`, continuing from the CRC `value` of earlier bytes."""
    return _crc32c_impl(data, value)


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow checksum masking: rotate right by 15 and add a constant (mod 2**32)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ------------------------------------------------------------------------------- protobuf wire format
def _varint(buf: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise BundleError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise BundleError(f"{where}: varint longer than 10 bytes")


def _proto_fields(buf: bytes, where: str) -> Iterator[tuple[int, int | bytes]]:
    """Yields (field number, value) of a serialized protobuf message; value is int or bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos, end, where)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end, where)
        elif wire == 1:
            if pos + 8 > end:
                raise BundleError(f"{where}: truncated fixed64 field {field}")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end, where)
            if pos + n > end:
                raise BundleError(f"{where}: field {field} claims {n} bytes, {end - pos} left")
            value, pos = bytes(buf[pos : pos + n]), pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise BundleError(f"{where}: truncated fixed32 field {field}")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise BundleError(f"{where}: unsupported protobuf wire type {wire} (field {field})")
        yield field, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# TensorFlow DataType enum (types.proto) -> numpy dtype; 7 = DT_STRING is handled separately.
_DTYPES: dict[int, str] = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
DT_STRING = 7


def _np_dtype(code: int, name: str, where: str) -> np.dtype:
    if code == DT_STRING:
        return np.dtype(object)
    if code not in _DTYPES:
        raise BundleError(
            f"{where}: tensor {name!r} has TensorFlow dtype enum {code}, which this reader does not support"
        )
    if _DTYPES[code] == "bfloat16":
        import ml_dtypes  # a jax dependency

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[code])


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One `BundleEntryProto`: where a tensor lives and how to check it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored


def _parse_entry(name: str, value: bytes, where: str) -> TensorEntry:
    fields: dict[int, int | bytes] = {}  # 1 dtype, 3 shard, 4 offset, 5 size, 6 crc32c, 7 slices
    shape: list[int] = []
    for field, v in _proto_fields(value, where):
        if field == 2:  # TensorShapeProto: repeated Dim dim = 2 (size = 1), bool unknown_rank = 3
            for f2, dim in _proto_fields(v, where):
                if f2 == 2:
                    shape.append(_int64(next((x for f3, x in _proto_fields(dim, where) if f3 == 1), 0)))
                elif f2 == 3 and dim:
                    raise BundleError(f"{where}: tensor {name!r} has unknown rank")
        else:
            fields[field] = v
    if 7 in fields:
        raise BundleError(f"{where}: tensor {name!r} is saved as partitioned slices (not supported)")
    if 6 not in fields:
        raise BundleError(f"{where}: tensor {name!r} has no crc32c in its index entry")
    offset, size = _int64(fields.get(4, 0)), _int64(fields.get(5, 0))
    if any(d < 0 for d in shape) or offset < 0 or size < 0:
        raise BundleError(f"{where}: tensor {name!r} has a negative shape, offset or size")
    dtype = _np_dtype(fields.get(1, 0), name, where)
    return TensorEntry(name, dtype, tuple(shape), fields.get(3, 0), offset, size, fields[6])


# --------------------------------------------------------------------------------- the sorted table
def _read_block(buf: bytes, handle: tuple[int, int], path: str, what: str, verify: bool) -> bytes:
    offset, size = handle
    if offset + size + BLOCK_TRAILER_SIZE > len(buf) - FOOTER_SIZE:
        raise BundleError(
            f"{path}: {what} at bytes [{offset}, {offset + size}) runs past the end (file truncated?)"
        )
    block = buf[offset : offset + size]
    ctype = buf[offset + size]
    if verify:
        (stored,) = struct.unpack_from("<I", buf, offset + size + 1)
        actual = crc32c(buf[offset : offset + size + 1])
        if unmask_crc(stored) != actual:
            raise BundleError(
                f"{path}: checksum mismatch in {what} at bytes [{offset}, {offset + size}) (file corrupted)"
            )
    if ctype != 0:
        raise BundleError(
            f"{path}: {what} uses compression type {ctype}; TensorFlow bundles are uncompressed"
        )
    return block


def _block_entries(block: bytes, path: str, what: str) -> Iterator[tuple[bytes, bytes]]:
    where = f"{path}: {what}"
    if len(block) < 4:
        raise BundleError(f"{where}: block of {len(block)} bytes is too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (1 + num_restarts)
    if limit < 0:
        raise BundleError(f"{where}: bad restart count {num_restarts}")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, limit, where)
        unshared, pos = _varint(block, pos, limit, where)
        vlen, pos = _varint(block, pos, limit, where)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise BundleError(f"{where}: bad entry at byte {pos}")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        yield key, bytes(block[pos : pos + vlen])
        pos += vlen


def _read_table(path: str, verify: bool) -> list[tuple[bytes, bytes]]:
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        raise BundleError(f"checkpoint index {path} does not exist") from None
    if len(buf) < FOOTER_SIZE:
        raise BundleError(
            f"{path}: {len(buf)} bytes, shorter than the {FOOTER_SIZE}-byte table footer (truncated?)"
        )
    footer = buf[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != TABLE_MAGIC:
        raise BundleError(
            f"{path}: bad table magic {magic:#018x} (not a TensorFlow checkpoint index, or truncated)"
        )
    where = f"{path}: footer"
    pos = 0
    handles = []
    for _ in range(2):  # metaindex (unused by TF bundles), then the index block
        off, pos = _varint(footer, pos, 40, where)
        size, pos = _varint(footer, pos, 40, where)
        handles.append((off, size))
    index = _read_block(buf, handles[1], path, "index block", verify)
    out = []
    for _, handle in _block_entries(index, path, "index block"):
        off, p = _varint(handle, 0, len(handle), f"{path}: index block")
        size, _ = _varint(handle, p, len(handle), f"{path}: index block")
        block = _read_block(buf, (off, size), path, f"data block at offset {off}", verify)
        out.extend(_block_entries(block, path, f"data block at offset {off}"))
    return out


# ------------------------------------------------------------------------------------------ reader
def resolve_checkpoint_prefix(path: str | os.PathLike) -> str:
    """`model.ckpt`, `model.ckpt.index`, a `.data-*` file or a directory (via its `checkpoint` file or
    its only `*.index`) → the checkpoint prefix."""
    path = os.fspath(path)
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.exists(state):
            with open(state, encoding="utf-8") as f:
                m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', f.read(), re.M)
            if m:
                p = m.group(1)
                return p if os.path.isabs(p) else os.path.join(path, p)
        indexes = sorted(n[: -len(".index")] for n in os.listdir(path) if n.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(path, indexes[0])
        raise BundleError(
            f"{path}: cannot tell which checkpoint to read: {len(indexes)} *.index files "
            f"({indexes[:5]}) and no usable 'checkpoint' file; pass the prefix"
        )
    if path.endswith(".index"):
        return path[: -len(".index")]
    m = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", path)
    return m.group(1) if m else path


class BundleReader:
    """Reads the tensors of one TF checkpoint; `verify` checks every stored checksum.

    Example:
        >>> r = BundleReader("mobilebert/mobilebert_variables.ckpt")
        >>> r.entries["bert/embeddings/word_embeddings"].shape
        (30522, 128)
        >>> tensors = r.read_all()  # {name: np.ndarray}
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.prefix = resolve_checkpoint_prefix(path)
        self.verify = verify
        self.index_path = self.prefix + ".index"
        self.num_shards = 1
        self.entries: dict[str, TensorEntry] = {}
        saw_header = False
        for key, value in _read_table(self.index_path, verify):
            if key == b"":
                saw_header = True
                for field, v in _proto_fields(value, f"{self.index_path}: header"):
                    if field == 1:
                        self.num_shards = v
                    elif field == 2 and v == 1:  # written on a big-endian host (s390x)
                        raise BundleError(f"{self.index_path}: big-endian bundles are not supported")
                continue
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = _parse_entry(name, value, self.index_path)
        if not saw_header:
            raise BundleError(f"{self.index_path}: no bundle header (key '') in the table")
        for e in self.entries.values():
            if not 0 <= e.shard_id < self.num_shards:
                raise BundleError(
                    f"{self.index_path}: tensor {e.name!r} in shard {e.shard_id} of {self.num_shards}"
                )

    def shard_path(self, shard_id: int) -> str:
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def keys(self) -> list[str]:
        return sorted(self.entries)

    def variables(self) -> list[tuple[str, list[int]]]:
        """[(name, shape)], sorted, as `tf.train.list_variables`."""
        return [(n, list(self.entries[n].shape)) for n in self.keys()]

    def _decode(self, entry: TensorEntry, raw: bytes | bytearray | memoryview, path: str) -> np.ndarray:
        where = f"{path}: tensor {entry.name!r} at bytes [{entry.offset}, {entry.offset + entry.size})"
        if len(raw) != entry.size:
            raise BundleError(f"{where}: only {len(raw)} of {entry.size} bytes present (file truncated?)")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.dtype == object:
            return self._decode_strings(entry, raw, count, where)
        if self.verify and unmask_crc(entry.crc32c) != crc32c(raw):
            raise BundleError(f"{where}: checksum mismatch (file corrupted)")
        if count * entry.dtype.itemsize != entry.size:
            raise BundleError(
                f"{where}: {entry.size} bytes for shape {entry.shape} of {entry.dtype} ({count * entry.dtype.itemsize} expected)"
            )
        return np.frombuffer(raw, dtype=entry.dtype, count=count).reshape(entry.shape)

    def _decode_strings(self, entry: TensorEntry, raw, count: int, where: str) -> np.ndarray:
        raw = bytes(raw)
        pos, lengths, crc = 0, [], 0
        for _ in range(count):
            n, pos = _varint(raw, pos, len(raw), where)
            lengths.append(n)
            # TF checksums each length as a little-endian uint32 (uint64 past 4 GiB)
            crc = crc32c(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n), crc)
        if pos + 4 > len(raw):
            raise BundleError(f"{where}: truncated string tensor")
        (len_crc,) = struct.unpack_from("<I", raw, pos)
        if self.verify and unmask_crc(len_crc) != crc:
            raise BundleError(f"{where}: checksum mismatch in string lengths (file corrupted)")
        crc = crc32c(raw[pos : pos + 4], crc)
        pos += 4
        out = np.empty((count,), dtype=object)
        for i, n in enumerate(lengths):
            out[i] = raw[pos : pos + n]
            pos += n
        if pos != len(raw):
            raise BundleError(f"{where}: string lengths add up to {pos} bytes, entry has {len(raw)}")
        if self.verify and unmask_crc(entry.crc32c) != crc32c(raw[pos - sum(lengths) :], crc):
            raise BundleError(f"{where}: checksum mismatch (file corrupted)")
        return out.reshape(entry.shape)

    def read(self, name: str) -> np.ndarray:
        """One tensor (read-only array over the file's bytes)."""
        if name not in self.entries:
            raise KeyError(f"{self.index_path} has no tensor {name!r}; it has {len(self.entries)} tensors")
        return self._read([name])[name]

    def read_all(self, select: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
        """{name: array} of every tensor (or those where `select(name)`; the others are not read).

        Arrays are read-only views of the bytes read (`.copy()` to modify): no copy is made.
        """
        return self._read([n for n in self.keys() if select is None or select(n)])

    def _read(self, names: list[str]) -> dict[str, np.ndarray]:
        by_shard: dict[int, list[TensorEntry]] = {}
        for n in names:
            by_shard.setdefault(self.entries[n].shard_id, []).append(self.entries[n])
        out: dict[str, np.ndarray] = {}
        for shard, entries in sorted(by_shard.items()):
            path = self.shard_path(shard)
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                raise BundleError(
                    f"checkpoint data file {path} does not exist (needed for {entries[0].name!r})"
                ) from None
            with f:
                for e in sorted(entries, key=lambda e: e.offset):
                    f.seek(e.offset)
                    out[e.name] = self._decode(e, f.read(e.size), path)
        return {n: out[n] for n in names}


def list_variables(path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """[(name, shape)] of a checkpoint, as `tf.train.list_variables` (reads only the index)."""
    return BundleReader(path, verify=True).variables()


def load_checkpoint(
    path: str | os.PathLike,
    select: Callable[[str], bool] | None = None,
    verify: bool = True,
    use_tensorflow: bool = False,
) -> dict[str, np.ndarray]:
    """{name: np.ndarray} of a TF checkpoint (prefix, `.index` file or directory).

    Args:
        path: checkpoint prefix such as `dir/model.ckpt-1000`, its `.index` file, or a directory.
        select: keep only names for which this returns True (others are not read).
        verify: check the index block checksums and every tensor's crc32c.
        use_tensorflow: read with `tf.train.load_checkpoint` instead (TensorFlow must be installed).

    Returns:
        Tensors with the stored dtype and shape; string tensors are object arrays of bytes.
    """
    if use_tensorflow:
        import tensorflow as tf

        r = tf.train.load_checkpoint(resolve_checkpoint_prefix(path))
        names = sorted(n for n in r.get_variable_to_shape_map() if select is None or select(n))
        return {n: np.asarray(r.get_tensor(n)) for n in names}
    return BundleReader(path, verify=verify).read_all(select)
