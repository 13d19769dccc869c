"""What a checkpoint path holds, and one reader per format: each returns `(params, config, class name, report)`.

| path | format |
|---|---|
| folder with `model.safetensors`, its index, or `pytorch_model.bin` (+ `config.json`); such a file | "hf" |
| folder with `tf_model.h5`, or the `.h5` file | "h5" (h5py, no TensorFlow) |
| TF1 prefix (`.../model.ckpt`), its `.index`/`.data-*` file, or a folder holding one | "tf1" |
| folder written by `convert --to orbax`, a trainer checkpoint folder (or one step of it), an orbax params tree | "orbax" |

`checkpoints/loader.py:load_model` is the one caller: it picks the reader from `detect_source`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from mobilebert_jax.checkpoints.errors import CheckpointError
from mobilebert_jax.checkpoints.pytorch import from_pytorch, scan_to_loop, to_pytorch
from mobilebert_jax.checkpoints.state_dict import (
    PT_WEIGHTS,
    SAFE_INDEX,
    SAFE_WEIGHTS,
    TF_WEIGHTS,
    load_safetensors,
    load_state_dict,
)
from mobilebert_jax.checkpoints.tensorflow import (
    TFConversionReport,
    h5_to_pytorch_names,
    load_config,
    load_tf1_checkpoint,
    load_tf_h5,
    map_tf1_names,
)
from mobilebert_jax.checkpoints.tf_bundle import BundleReader, resolve_checkpoint_prefix
from mobilebert_jax.checkpoints.torch_pickle import load_pytorch_bin
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES

__all__ = [
    "READERS",
    "detect_source",
    "dominant_float_dtype",
    "find_config",
    "has_teacher_model",
    "infer_model_class",
]

_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")

# (params, config, model class name, report)
ReadResult = tuple[dict, MobileBertConfig, str, TFConversionReport]


# --------------------------------------------------------------------------------------- detection
def _is_orbax_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS)


def _orbax_steps(path: str) -> list[int]:
    if not os.path.isdir(path):
        return []
    return sorted(int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n)))


def export_format(path: Any) -> str | None:
    """The format ("litert", "onnx", "stablehlo") of an `export` output folder, from its export.json (or
    the folder of an exported file); None for anything else."""
    import json

    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    try:
        with open(os.path.join(folder, "export.json"), encoding="utf-8") as f:
            fmt = json.load(f).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return fmt if isinstance(fmt, str) else None


def detect_source(src: str) -> str:
    """'hf' | 'h5' | 'tf1' | 'orbax' for what `src` holds; CheckpointError naming what was looked for."""
    if os.path.isdir(src):
        names = set(os.listdir(src))
        if names & {SAFE_WEIGHTS, SAFE_INDEX, PT_WEIGHTS}:
            return "hf"
        if TF_WEIGHTS in names:
            return "h5"
        if any(n.endswith(".index") for n in names):
            return "tf1"
        if _is_orbax_dir(src) or _is_orbax_dir(os.path.join(src, "params")) or _orbax_steps(src):
            return "orbax"
        if _is_orbax_dir(os.path.join(src, "state")):
            return "orbax"
        fmt = export_format(src)
        if fmt is not None:
            raise CheckpointError(
                f"{src} is an export folder ({fmt}, see its export.json), not a checkpoint: run it with "
                f"`mobilebert_jax.export.load_runtime` or a pipeline (backend {fmt!r}, the default there)"
            )
        raise CheckpointError(
            f"{src}: cannot tell the checkpoint format: no weights found (looked for {SAFE_WEIGHTS}, "
            f"{SAFE_INDEX}, {PT_WEIGHTS}, {TF_WEIGHTS}, *.index (TF1) or an orbax checkpoint inside)"
        )
    if src.endswith(".h5") and os.path.isfile(src):
        return "h5"
    if os.path.exists(resolve_checkpoint_prefix(src) + ".index"):
        return "tf1"
    if src.endswith((".safetensors", ".bin")) and os.path.isfile(src):
        return "hf"
    raise CheckpointError(
        f"{src}: no such checkpoint (not a folder, .h5 file, or TF1 prefix with a .index file)"
    )


def has_teacher_model(path: str) -> bool:
    """Whether `path` is a TF1 distillation checkpoint: a bundle holding `teacher/...` variables."""
    try:
        if detect_source(path) != "tf1":
            return False
    except CheckpointError:
        return False
    return any(n.startswith("teacher/") for n in BundleReader(path).keys())


def infer_model_class(keys: Any, config: MobileBertConfig | None = None) -> str:
    """The class a state dict (PT keys) or Flax param tree (top-level keys) was saved from.

    The config's `architectures` win; then fine-tune heads over pretraining heads (a SQuAD TF1
    checkpoint may still hold `cls/...`); `classifier` is read as sequence classification.
    """
    arch = (config.extra.get("architectures") or [None])[0] if config is not None else None
    if arch in MODEL_CLASSES:
        return arch
    keys = set(keys)
    has = lambda p: any(k == p or k.startswith(p + ".") for k in keys)  # noqa: E731
    if has("qa_outputs"):
        return "MobileBertForQuestionAnswering"
    if has("classifier"):
        return "MobileBertForSequenceClassification"
    mlm, nsp = has("cls.predictions"), has("cls.seq_relationship")
    if mlm and nsp:
        return "MobileBertForPreTraining"
    if mlm:
        return "MobileBertForMaskedLM"
    if nsp:
        return "MobileBertForNextSentencePrediction"
    return "MobileBertModel"


def _flax_head_keys(params: Mapping) -> list[str]:
    keys = []
    for k, v in params.items():
        if k == "cls" and isinstance(v, Mapping):
            keys += [f"cls.{sub}" for sub in v]
        else:
            keys.append(k)
    return keys


def find_config(
    config_file: str | None, overrides: Mapping[str, Any], *candidates: str | None
) -> MobileBertConfig:
    """`config_file` if given, else the first existing candidate (HF config.json, google bert_config.json,
    or a training run's run.json, whose "config" is the model's)."""
    if config_file:
        return load_config(config_file, **overrides)
    for c in candidates:
        if c and os.path.basename(c) == "run.json" and os.path.exists(c):
            with open(c, encoding="utf-8") as f:
                run = json.load(f)
            if isinstance(run.get("config"), dict):
                return MobileBertConfig.from_dict(run["config"], **overrides)
        elif c and os.path.exists(c):
            return load_config(c, **overrides)
    looked = ", ".join(c for c in candidates if c)
    raise CheckpointError(f"no config found (looked for {looked}); pass config_file (CLI: --config)")


def dominant_float_dtype(arrays: Iterable[Any]) -> np.dtype:
    """The float dtype holding most of the elements (what "checkpoint" precision means)."""
    counts: dict[np.dtype, int] = {}
    for v in arrays:
        if np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16":
            counts[v.dtype] = counts.get(v.dtype, 0) + v.size
    return max(counts, key=counts.get) if counts else np.dtype(np.float32)


def _cast_to(dtype: Any, state: Mapping[str, Any] | None) -> Any:
    """from_pytorch's `dtype`: "checkpoint" is the state dict's dominant float dtype (None: each tensor's own)."""
    if isinstance(dtype, str) and dtype == "checkpoint":
        return dominant_float_dtype(state.values()) if state is not None else None
    return dtype


# --------------------------------------------------------------------------------------- readers
# Each reader: (path, *, config_file, overrides, model_class, teacher, strict, rng, dtype) -> ReadResult.
def _read_hf(path: str, *, config_file, overrides, model_class, teacher, strict, rng, dtype) -> ReadResult:
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config = find_config(config_file, overrides, os.path.join(folder, "config.json"))
    if os.path.isdir(path):
        state = load_state_dict(path)
    else:
        state = load_pytorch_bin(path) if path.endswith(".bin") else load_safetensors(path)
    cls = model_class or infer_model_class(state, config)
    dtype = _cast_to(dtype, state)
    params, load = from_pytorch(state, config, cls, strict=strict, rng=rng, dtype=dtype, return_report=True)
    report = TFConversionReport(source=path, mapped={k: k for k in state}, load=load, config=config)
    return params, config, cls, report


def _read_h5(path: str, *, config_file, overrides, model_class, teacher, strict, rng, dtype) -> ReadResult:
    path = os.path.join(path, TF_WEIGHTS) if os.path.isdir(path) else path
    folder = os.path.dirname(os.path.abspath(path))
    config = find_config(config_file, overrides, os.path.join(folder, "config.json"))
    cls = model_class or (config.extra.get("architectures") or [None])[0]
    if cls not in MODEL_CLASSES:
        cls = infer_model_class(h5_to_pytorch_names(path), config)
    params, report = load_tf_h5(path, config, cls, strict=strict, rng=rng, dtype=_cast_to(dtype, None))
    return params, config, cls, report


def _read_tf1(path: str, *, config_file, overrides, model_class, teacher, strict, rng, dtype) -> ReadResult:
    reader = BundleReader(path)  # reads and checks the index only
    folder = os.path.dirname(os.path.abspath(reader.prefix))
    names = ("teacher_config.json",) if teacher else ("config.json", "bert_config.json")
    config = find_config(config_file, overrides, *(os.path.join(folder, n) for n in names))
    cls = model_class
    if cls is None:
        mapped, _ = map_tf1_names(reader.keys(), teacher=teacher)
        cls = infer_model_class([key for key, _ in mapped.values()], config)
    params, report = load_tf1_checkpoint(
        reader.prefix, config, cls, teacher=teacher, strict=strict, rng=rng, dtype=_cast_to(dtype, None)
    )
    return params, config, cls, report


def _orbax_params_dir(src: str) -> tuple[str, str | None]:
    """(orbax item folder, config.json candidate) for the layouts we read."""
    if _is_orbax_dir(os.path.join(src, "params")):  # written by convert --to orbax
        return os.path.join(src, "params"), os.path.join(src, "config.json")
    steps = _orbax_steps(src)
    if steps:  # a trainer CheckpointManager root: latest step, item "state"
        src = os.path.join(src, str(steps[-1]))
    if _is_orbax_dir(os.path.join(src, "state")):
        return os.path.join(src, "state"), None
    return src, None


def _restore_orbax_params(item: str) -> dict:
    import jax
    import orbax.checkpoint as ocp

    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(item)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    # host numpy arrays: restores on any device topology, whatever the saved sharding
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    tree = ckptr.restore(item, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    params = tree.get("params", tree) if isinstance(tree, Mapping) else None
    if not isinstance(params, Mapping):
        raise ValueError(f"{item}: the orbax tree has no 'params' mapping")
    return scan_to_loop(dict(params))


def _read_orbax(path: str, *, config_file, overrides, model_class, teacher, strict, rng, dtype) -> ReadResult:
    item, cfg_path = _orbax_params_dir(os.path.abspath(path))
    up = [
        os.path.join(os.path.dirname(item), "config.json"),
        os.path.join(os.path.dirname(item), "..", "config.json"),
        # a trainer checkpoint RUN/checkpoints/STEP/state: the run's identity holds the model config
        os.path.normpath(os.path.join(os.path.dirname(item), "..", "..", "run.json")),
    ]
    config = find_config(config_file, overrides, *([cfg_path] if cfg_path else []), *up)
    params = _restore_orbax_params(item)
    cls = model_class or infer_model_class(_flax_head_keys(params), config)
    # Round trip through the checked converter: shapes and names must fit the model exactly.
    sd = to_pytorch(params, config, include_tied=False, include_dead=False)
    dtype = _cast_to(dtype, sd)
    params, load = from_pytorch(sd, config, cls, strict=strict, rng=rng, dtype=dtype, return_report=True)
    report = TFConversionReport(source=item, mapped={k: k for k in sd}, load=load, config=config)
    return params, config, cls, report


READERS: dict[str, Callable[..., ReadResult]] = {
    "hf": _read_hf,
    "h5": _read_h5,
    "tf1": _read_tf1,
    "orbax": _read_orbax,
}
