"""Checkpoint files as torch has written them over the years, read by our torch-free reader.

Every fixture is written here by torch itself (torch is the reference, never a library dependency):
the legacy pre-1.6 stream (`_use_new_zipfile_serialization=False`, how `google/mobilebert-uncased` and
most 2020 fine-tunes were uploaded) and the zip format; fp32, fp16, bf16; tied storages (the MLM decoder
shares the word-embedding storage) and views (every tensor a strided view into one flat storage); with
and without the `position_ids` buffer HF used to save. Each loads through `from_pretrained` and matches
HF PyTorch loading the same directory.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
from conftest import TINY, perturbed_hf_model, rel_err
from test_parity import make_inputs

from mobilebert_jax import MobileBertConfig, from_pretrained
from mobilebert_jax.checkpoints.errors import CheckpointError
from mobilebert_jax.checkpoints.torch_pickle import load_pytorch_bin

torch = pytest.importorskip("torch", reason="torch is the test reference")
transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")
CFG = MobileBertConfig(**TINY)
CLASS = "MobileBertForPreTraining"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _as_views(sd: dict) -> OrderedDict:
    """Every float tensor a view into one shared storage; 2-D ones with transposed (non-contiguous) strides.

    Tensors that were tied (same storage) stay tied: one slice serves both.
    """
    floats = [k for k, v in sd.items() if v.is_floating_point()]
    seen: dict[int, str] = {}
    unique = []
    for k in floats:
        ptr = sd[k].data_ptr()
        if ptr not in seen:
            seen[ptr] = k
            unique.append(k)
    flat = torch.cat(
        [sd[k].t().contiguous().reshape(-1) if sd[k].ndim == 2 else sd[k].reshape(-1) for k in unique]
    )
    views, off = {}, 0
    for k in unique:
        v = sd[k]
        n = v.numel()
        piece = flat[off : off + n]
        views[k] = piece.view(v.shape[::-1]).t() if v.ndim == 2 else piece.view(v.shape)
        off += n
    out = OrderedDict()
    for k, v in sd.items():
        out[k] = views[seen[v.data_ptr()]] if v.is_floating_point() else v
    return out


def _write_fixture(folder, fmt: str, dtype: str, layout: str, position_ids: bool):
    pt = perturbed_hf_model(CFG, CLASS)
    pt = pt.to(DTYPES[dtype])
    pt.config.save_pretrained(folder)
    sd = OrderedDict(pt.state_dict())
    assert (
        sd["cls.predictions.decoder.weight"].data_ptr()
        == sd["mobilebert.embeddings.word_embeddings.weight"].data_ptr()
    )
    if position_ids:  # transformers < 4.31 saved this buffer
        sd["mobilebert.embeddings.position_ids"] = torch.arange(CFG.max_position_embeddings)[None]
    if layout == "views":
        sd = _as_views(sd)
        assert not sd["mobilebert.encoder.layer.0.attention.self.query.weight"].is_contiguous()
    path = os.path.join(folder, "pytorch_model.bin")
    torch.save(sd, path, _use_new_zipfile_serialization=fmt == "zip")
    with open(path, "rb") as f:
        assert (f.read(2) == b"PK") == (fmt == "zip")
    return path


# (format, dtype, storage layout, position_ids buffer): each format meets each dtype, each layout and both
# buffer cases.
CASES = [
    ("legacy", "fp32", "tied", True),
    ("legacy", "fp16", "views", False),
    ("legacy", "bf16", "views", True),
    ("zip", "fp32", "views", False),
    ("zip", "fp16", "tied", True),
    ("zip", "bf16", "tied", False),
]


@pytest.mark.parametrize("fmt,dtype,layout,position_ids", CASES)
def test_torch_written_files_load_and_match_hf(tmp_path, fmt, dtype, layout, position_ids):
    _write_fixture(tmp_path, fmt, dtype, layout, position_ids)
    ref_model = (
        getattr(transformers, CLASS)
        .from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
        .eval()
    )
    model, params = from_pretrained(str(tmp_path))
    assert type(model).__name__ == CLASS
    assert {str(x.dtype) for x in jax_leaves(params)} == {"float32"}  # float32 master params by default
    inputs, _ = make_inputs(CFG, CLASS)
    with torch.no_grad():
        ref = ref_model(**{k: torch.tensor(v) for k, v in inputs.items()})
    ours = model.apply({"params": params}, **inputs)
    for field in ("prediction_logits", "seq_relationship_logits"):
        err = rel_err(getattr(ours, field), getattr(ref, field).numpy())
        assert err < 1e-5, (field, err)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_param_dtype_default_checkpoint_and_cast(tmp_path):
    import jax.numpy as jnp

    _write_fixture(tmp_path, "legacy", "bf16", "tied", False)
    sd = load_pytorch_bin(str(tmp_path / "pytorch_model.bin"))
    assert sd["mobilebert.embeddings.word_embeddings.weight"].dtype.name == "bfloat16"
    _, p32 = from_pretrained(str(tmp_path))
    model, pck = from_pretrained(str(tmp_path), param_dtype="checkpoint")
    _, p16 = from_pretrained(str(tmp_path), param_dtype=jnp.float16)
    assert {x.dtype.name for x in jax_leaves(p32)} == {"float32"}
    assert {x.dtype.name for x in jax_leaves(pck)} == {"bfloat16"} and model.param_dtype == jnp.bfloat16
    assert {x.dtype.name for x in jax_leaves(p16)} == {"float16"}
    w = "mobilebert/embeddings/word_embeddings/embedding".split("/")
    get = lambda p: np.asarray(p[w[0]][w[1]][w[2]][w[3]], np.float32)  # noqa: E731
    np.testing.assert_array_equal(get(p32), get(pck))  # the up-cast is exact


# ------------------------------------------------------------------------------------------ safety
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_legacy_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    state = {"embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": _Evil(str(marker))}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # the legacy stream, not a zip
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refusing to unpickle global posix.system"):
        load_pytorch_bin(str(path))
    assert not marker.exists()
    # The fixture really calls os.system when unpickled naively: its pickle holds that global.
    assert b"cposix\nsystem\n" in path.read_bytes()


def test_legacy_truncation_names_the_file(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"a": torch.randn(4, 3), "b": torch.randn(5)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    for n in (0, 3, 40, len(raw) // 2, len(raw) - 8, len(raw) - 1):
        path.write_bytes(raw[:n])
        with pytest.raises(CheckpointError, match=r"pytorch_model.bin: .*(truncated|not a PyTorch)"):
            load_pytorch_bin(str(path))


def test_legacy_pre_1_0_storage_views(tmp_path):
    """view_metadata (pre-1.0 storage views) is handled as torch.load does; torch 2 no longer writes it."""
    data = torch.arange(12, dtype=torch.float32)

    class Storage:
        pass

    storage = Storage()

    class T:
        def __init__(self, offset, size, stride):
            self.args = (storage, offset, size, stride, False, OrderedDict())

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, self.args)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:  # a 6-element view starting at element 4 of a 12-element storage
                return ("storage", torch.FloatStorage, "100", "cpu", 12, ("101", 4, 6))
            return None

    path = tmp_path / "old.bin"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        P(f, protocol=2).dump(OrderedDict(w=T(1, (2, 2), (1, 2))))
        pickle.dump(["100"], f, protocol=2)
        f.write(np.int64(12).tobytes() + data.numpy().tobytes())
    ref = torch.load(path, weights_only=True)["w"].numpy()
    ours = load_pytorch_bin(str(path))["w"]
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(ours, [[5, 7], [6, 8]])
