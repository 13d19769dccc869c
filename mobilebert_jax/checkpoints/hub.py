"""Loading and saving HF-format model directories, without torch or transformers.

`resolve_model` is the one rule from a model name (preset, local directory, hub id) to its files;
`from_pretrained` and the CLI's `--model` both use it. `from_pretrained` reads `config.json` plus
`model.safetensors`, a sharded safetensors index, `pytorch_model.bin` (zip or legacy format) or
`tf_model.h5` (the readers are in `state_dict.py` and `torch_pickle.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any

import numpy as np

from mobilebert_jax.checkpoints.pytorch import LoadReport, from_pytorch, to_pytorch
from mobilebert_jax.checkpoints.state_dict import (
    SAFE_WEIGHTS,
    CheckpointError,
    load_state_dict,
)
from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES, MobileBertForPreTraining, init_params

logger = logging.getLogger("mobilebert_jax")


# A Hugging Face Hub repo id: "name" or "owner/name" (what huggingface_hub's validator accepts).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_FILES = ["config.json", "*.safetensors", "*.json", "pytorch_model.bin", "tf_model.h5"]


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model name points: `kind` is "preset", "local" or "hub"; `folder` holds its files."""

    kind: str
    name: str
    folder: str | None = None  # None for a preset


def resolve_model(name_or_path: str | os.PathLike) -> ModelSource:
    """The one rule that turns a model name into a source, for the Python API and the CLI alike.

    In order: an existing directory (so a clone named like a preset loads its weights); a preset name
    from `PRESETS` (random init, no files); anything that looks like a path (absolute, `./`, `~`,
    two or more `/`, a backslash) or names an existing file: an error that there is no such directory;
    else a Hugging Face Hub id, fetched with huggingface_hub. Every error names what was tried.
    """
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return ModelSource("local", name, name)
    if name in PRESETS:
        return ModelSource("preset", name)
    if os.path.exists(name):
        raise CheckpointError(
            f"{name} is a file; pass the model directory that holds it (config.json + weights)"
        )
    expanded = os.path.expanduser(name)
    if expanded != name and os.path.isdir(expanded):
        return ModelSource("local", name, expanded)
    if not _HUB_ID.match(name):
        raise CheckpointError(
            f"{name}: no such directory (read as a local path: it is not a preset, {sorted(PRESETS)}, "
            "and not a hub id of the form owner/name)"
        )
    tried = f"{name!r} is not a local directory nor a preset ({', '.join(sorted(PRESETS))}); as a hub id"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{tried} it needs huggingface_hub, which is not installed (pip install huggingface_hub)"
        ) from None
    try:
        return ModelSource("hub", name, snapshot_download(name, allow_patterns=_HUB_FILES))
    except Exception as e:
        raise CheckpointError(f"{tried} it could not be fetched: {type(e).__name__}: {e}") from None


def _model_class(model_class: Any, config: MobileBertConfig) -> type:
    if model_class is None:
        arch = (config.extra.get("architectures") or ["MobileBertForPreTraining"])[0]
        return MODEL_CLASSES.get(arch, MobileBertForPreTraining)
    if isinstance(model_class, str):
        if model_class not in MODEL_CLASSES:
            raise ValueError(f"unknown model class {model_class!r}; known: {sorted(MODEL_CLASSES)}")
        return MODEL_CLASSES[model_class]
    return model_class


def _float_dtype(state_dict: dict[str, np.ndarray]) -> np.dtype:
    """The float dtype holding most of a state dict's elements (what "checkpoint" precision means)."""
    counts: dict[np.dtype, int] = {}
    for v in state_dict.values():
        if np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16":
            counts[v.dtype] = counts.get(v.dtype, 0) + v.size
    return max(counts, key=counts.get) if counts else np.dtype(np.float32)


def from_pretrained(
    name_or_path: str,
    model_class: Any = None,
    *,
    dtype: Any = None,
    param_dtype: Any = None,
    scan_layers: bool = False,
    remat: bool = False,
    unroll_layers: bool | None = None,
    strict: bool = False,
    rng: Any = 0,
    return_report: bool = False,
    **config_overrides: Any,
):
    """Loads a model by name → `(model, params)`: an HF-format directory, a hub id or a preset.

    The name is resolved by `resolve_model` (the same rule as the CLI's `--model`): a preset
    (`mobilebert-uncased`, `mobilebert-tiny`, ...) builds that architecture with random params and
    logs a warning saying so; a directory or hub id reads `config.json` and its weights.

    Args:
        name_or_path: a directory with `config.json` and weights, a hub id (needs huggingface_hub
            and a reachable hub), or a preset name.
        model_class: one of the eight classes or its name; default: the config's `architectures[0]`,
            else `MobileBertForPreTraining`.
        dtype: compute dtype (default float32).
        param_dtype: storage dtype of the returned params. Default (None): float32 master params,
            whatever the file holds (an fp16/bf16 checkpoint is cast up exactly, as training needs).
            "checkpoint": keep the file's precision (its dominant float dtype). Any dtype: cast to it.
        scan_layers, remat: model options (params are laid out to match).
        unroll_layers: how HF's `layer/{i}` tree runs: None (default) by input size (unrolled up to
            `AUTO_UNROLL_MAX_TOKENS` = 1024 tokens per call, one scan over the stacked layer params
            above), True always unrolled, False always the scan; the params are the same either way.
        strict: fail instead of initialising or dropping head params.
        rng: seeds head params the checkpoint lacks (and all params of a preset).
        return_report: also return a `LoadReport` (for a preset: every param initialised).
        **config_overrides: config fields to change (e.g. `num_labels=3`).
    """
    import jax.numpy as jnp

    source = resolve_model(name_or_path)
    if source.kind == "preset":
        config = MobileBertConfig.from_preset(source.name, **config_overrides)
    else:
        config = MobileBertConfig.from_json_file(
            os.path.join(source.folder, "config.json"), **config_overrides
        )
    model_class = _model_class(model_class, config)
    state_dict = load_state_dict(source.folder) if source.kind != "preset" else {}
    if param_dtype is None:
        param_dtype = jnp.float32
    elif isinstance(param_dtype, str) and param_dtype == "checkpoint":
        param_dtype = _float_dtype(state_dict)
    model = model_class(
        config,
        dtype=dtype or jnp.float32,
        param_dtype=param_dtype,
        scan_layers=scan_layers,
        remat=remat,
        unroll_layers=unroll_layers,
    )
    if source.kind == "preset":
        if strict:
            raise CheckpointError(f"{source.name!r} is a preset: it has no weights to load (strict=True)")
        logger.warning(
            "%s is a preset, not a checkpoint: %s params are randomly initialised",
            source.name,
            model_class.__name__,
        )
        params = init_params(model, rng)
        report = LoadReport(initialised=sorted(to_pytorch(params, config, include_tied=False)))
        return (model, params, report) if return_report else (model, params)
    params, report = from_pytorch(
        state_dict,
        config,
        model_class,
        scan_layers=scan_layers,
        rng=rng,
        strict=strict,
        return_report=True,
        dtype=param_dtype,
    )
    return (model, params, report) if return_report else (model, params)


def save_pretrained(path: str, params: Any, config: MobileBertConfig, model_class: Any = None) -> None:
    """Writes `config.json` + `model.safetensors` that `transformers.MobileBertFor*.from_pretrained` loads.

    Tied decoder aliases are left out (as HF v5 saves); params HF creates but never uses are written
    as zeros so HF reports no missing keys.
    """
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    sd = to_pytorch(params, config, include_tied=False)
    if model_class is None:
        model_class = (
            "MobileBertForPreTraining"
            if "cls.predictions.bias" in sd and "cls.seq_relationship.bias" in sd
            else None
        )
    name = model_class if isinstance(model_class, str) or model_class is None else model_class.__name__
    d = config.to_dict()
    if name:
        d["architectures"] = [name]
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")
    arrays = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    weights = os.path.join(path, SAFE_WEIGHTS)
    save_file(arrays, weights, metadata={"format": "pt"})
    # safetensors writes through a private temp file (mode 0600); give it an ordinary file's mode
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights, 0o666 & ~umask)
