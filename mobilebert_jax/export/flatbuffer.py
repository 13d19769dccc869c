"""Lossless compaction of a `.tflite` after conversion (`compact`).

What litert-converter and litert-quantizer write carries, besides the weights, per tensor:
- a name (debug information: the JAX op path, ~0.3-0.65 MB at full size). Signatures address their
  inputs and outputs by the signature's own names, so only those tensors keep theirs;
- its quantization vectors. A per-channel int8 tensor stores a float32 scale and an int64 zero point
  per channel; the zero points are all 0 (symmetric int8), one copy per weight and bias tensor: 8 of
  every 12 bytes of ~1.2-1.8 MB of quantization parameters at full size. A flatbuffer vector may be
  referenced from several tables, so every distinct vector is written once and shared.

The weights themselves are copied byte for byte, outside the tables, each 16-byte aligned (the layout
litert-quantizer writes); the metadata entries stay inline. The model computes exactly what it
computed before; `export` verifies the compacted file in the runtime like any other.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

ALIGN = 16


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _sharing_builder(size: int) -> Any:
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        """Writes each distinct numpy vector once; later identical ones reuse its offset (a flatbuffer
        offset points forward, and earlier-written objects lie further on in the finished buffer)."""

        def __init__(self, n: int):
            super().__init__(n)
            self._seen: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
            arr = np.ascontiguousarray(x)
            key = (arr.dtype.str, arr.tobytes())
            if key not in self._seen:
                self._seen[key] = super().CreateNumpyVector(arr)
            return self._seen[key]

    return SharingBuilder(size)


def compact(path: str, keep_names: bool = False) -> dict[str, int]:
    """Rewrites the `.tflite` at `path` in place (see the module docstring); returns its sizes before and
    after in bytes. `keep_names` keeps every tensor's name."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    with open(path, "rb") as f:
        raw = f.read()
    model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)

    # the weights, taken out of the tables (a converter may have written them inline or after them);
    # the metadata's few bytes (min_runtime_version, ...) stay inline, where every reader finds them
    metadata = {md.buffer for md in model.metadata or []}
    data: dict[int, bytes] = {}
    for i, buf in enumerate(model.buffers or []):
        if i in metadata:
            if buf.offset > 1 and buf.size:
                buf.data = np.frombuffer(raw, np.uint8, buf.size, buf.offset).copy()
            buf.offset, buf.size = 0, 0
            continue
        if buf.data is not None and len(buf.data):
            data[i] = np.asarray(buf.data, np.uint8).tobytes()
        elif buf.offset > 1 and buf.size:
            data[i] = raw[buf.offset : buf.offset + buf.size]
        else:
            continue
        buf.data, buf.offset, buf.size = None, 1, 1  # placeholders, patched once the tables are written

    if not keep_names:
        for g, sg in enumerate(model.subgraphs or []):
            keep = {int(t) for io in (sg.inputs, sg.outputs) if io is not None for t in io}
            for sig in model.signatureDefs or []:
                if sig.subgraphIndex == g:
                    keep |= {t.tensorIndex for t in (sig.inputs or []) + (sig.outputs or [])}
            for t, tensor in enumerate(sg.tensors or []):
                if t not in keep:
                    tensor.name = None

    builder = _sharing_builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    tables = builder.Output()

    out = bytearray(_round_up(len(tables)))
    out[: len(tables)] = tables
    packed = schema.Model.GetRootAs(out, 0)
    for i, blob in data.items():
        offset = len(out)
        flatbuffer_utils.update_packed_buffer(packed.Buffers(i), offset=offset, size=len(blob))
        out += blob
        out += bytes(_round_up(len(out)) - len(out))
    tmp = path + ".compact.tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, path)
    return {"bytes_before": len(raw), "bytes_after": len(out)}
