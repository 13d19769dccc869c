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

With `metadata` (a device-ready export, `export/metadata.py`) the same pass adds the `TFLITE_METADATA`
buffer and writes the weights inline instead, as 16-byte aligned vectors inside the tables: the
TFLite runtime in the Task Library (tflite-support 0.4.4) predates buffers stored by offset and reads
such constants as missing ("Input tensor ... is not produced"), and re-serializing tools keep inline
data. The associated files (vocab, labels) follow as an uncompressed zip, as the metadata populators
append them.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

import numpy as np

ALIGN = 16


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _sharing_builder(size: int, align_bytes: bool) -> Any:
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        """Writes each distinct numpy vector once; later identical ones reuse its offset (a flatbuffer
        offset points forward, and earlier-written objects lie further on in the finished buffer)."""

        def __init__(self, n: int):
            super().__init__(n)
            self._seen: dict[tuple[str, bytes], int] = {}
            self._align_bytes = align_bytes

        def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
            arr = np.ascontiguousarray(x)
            key = (arr.dtype.str, arr.tobytes())
            if key not in self._seen:
                if self._align_bytes and arr.dtype == np.uint8:
                    self._seen[key] = self._aligned(key[1])
                else:
                    self._seen[key] = super().CreateNumpyVector(arr)
            return self._seen[key]

        def _aligned(self, blob: bytes) -> int:
            """A byte vector whose data starts 16-byte aligned (inline weights, as TFLite writes them)."""
            self.StartVector(1, len(blob), ALIGN)
            self.head = self.Head() - len(blob)
            self.Bytes[self.Head() : self.Head() + len(blob)] = blob
            self.vectorNumElems = len(blob)
            return self.EndVector()

    return SharingBuilder(size)


def subgraph_io(path: str) -> tuple[list[str], list[str]]:
    """The signature names of the one subgraph's inputs and outputs, in the subgraph's order (the order
    TFLite Metadata lists them in); raises unless the file has exactly one subgraph and signature."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(bytearray(f.read()), 0)
    if model.SubgraphsLength() != 1 or model.SignatureDefsLength() != 1:
        raise ValueError(
            f"{path}: {model.SubgraphsLength()} subgraphs, {model.SignatureDefsLength()} signatures; "
            "device clients need exactly one of each"
        )
    sg, sig = model.Subgraphs(0), model.SignatureDefs(0)
    by_tensor = {}
    for get, n in ((sig.Inputs, sig.InputsLength()), (sig.Outputs, sig.OutputsLength())):
        for k in range(n):
            by_tensor[get(k).TensorIndex()] = get(k).Name().decode()
    inputs = [by_tensor[sg.Inputs(k)] for k in range(sg.InputsLength())]
    outputs = [by_tensor[sg.Outputs(k)] for k in range(sg.OutputsLength())]
    return inputs, outputs


def _drop_names(model: Any) -> None:
    """Clears every tensor name but those of the subgraphs' and signatures' inputs and outputs."""
    for g, sg in enumerate(model.subgraphs or []):
        keep = {int(t) for io in (sg.inputs, sg.outputs) if io is not None for t in io}
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == g:
                keep |= {t.tensorIndex for t in (sig.inputs or []) + (sig.outputs or [])}
        for t, tensor in enumerate(sg.tensors or []):
            if t not in keep:
                tensor.name = None


def _set_metadata(model: Any, schema: Any, metadata: bytes) -> None:
    """Adds (or replaces) the `TFLITE_METADATA` entry and its buffer."""
    from mobilebert_jax.export.metadata import METADATA_NAME

    buf = schema.BufferT()
    buf.data = np.frombuffer(metadata, np.uint8)
    model.metadata = model.metadata or []
    for md in model.metadata:
        if md.name in (METADATA_NAME, METADATA_NAME.encode()):
            model.buffers[md.buffer] = buf
            return
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata.append(entry)


def _append_zip(out: bytearray, files: dict[str, bytes]) -> bytes:
    """The flatbuffer followed by `files` as an uncompressed zip (offsets from the start of the file, as
    `zipfile`'s append mode writes them after a non-zip prefix)."""
    stream = io.BytesIO(bytes(out))
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return stream.getvalue()


def compact(
    path: str,
    keep_names: bool = False,
    *,
    metadata: bytes | None = None,
    associated_files: dict[str, bytes] | None = None,
) -> dict[str, int]:
    """Rewrites the `.tflite` at `path` in place (see the module docstring); returns its sizes before and
    after in bytes. `keep_names` keeps every tensor's name. `metadata`: a `ModelMetadata` flatbuffer to
    store as `TFLITE_METADATA` (the weights are then written inline), with `associated_files`
    `{name: content}` appended as a zip."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    with open(path, "rb") as f:
        raw = f.read()
    model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    inline = metadata is not None

    # the weights, taken out of the tables (a converter may have written them inline or after them);
    # the metadata's few bytes (min_runtime_version, ...) stay inline, where every reader finds them
    meta_buffers = {md.buffer for md in model.metadata or []}
    data: dict[int, bytes] = {}
    for i, buf in enumerate(model.buffers or []):
        if buf.data is not None and len(buf.data):
            blob = np.asarray(buf.data, np.uint8).tobytes()
        elif buf.offset > 1 and buf.size:
            blob = raw[buf.offset : buf.offset + buf.size]
        else:
            continue
        if inline or i in meta_buffers:
            buf.data, buf.offset, buf.size = np.frombuffer(blob, np.uint8), 0, 0
        else:
            data[i] = blob
            buf.data, buf.offset, buf.size = None, 1, 1  # placeholders, patched once the tables are written
    if inline:
        _set_metadata(model, schema, metadata)
    if not keep_names:
        _drop_names(model)

    builder = _sharing_builder(1 << 20, align_bytes=inline)
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
    final = _append_zip(out, associated_files) if associated_files else bytes(out)
    tmp = path + ".compact.tmp"
    with open(tmp, "wb") as f:
        f.write(final)
    os.replace(tmp, path)
    return {"bytes_before": len(raw), "bytes_after": len(final)}
