"""Loading and saving HF-format model directories, without torch or transformers.

`from_pretrained` reads `config.json` plus `model.safetensors`, a sharded safetensors index,
`pytorch_model.bin` or `tf_model.h5` (the readers are in `state_dict.py`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mobilebert_jax.checkpoints.pytorch import from_pytorch, to_pytorch
from mobilebert_jax.checkpoints.state_dict import (
    SAFE_WEIGHTS,
    CheckpointError,
    load_state_dict,
)
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES, MobileBertForPreTraining


def _resolve_path(name_or_path: str) -> str:
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise CheckpointError(f"{name_or_path} is a file; pass the model directory that holds it")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{name_or_path!r} is not a local directory, and huggingface_hub is not installed to fetch it from "
            "the hub (pip install huggingface_hub)"
        ) from None
    try:
        return snapshot_download(
            name_or_path,
            allow_patterns=["config.json", "*.safetensors", "*.json", "pytorch_model.bin", "tf_model.h5"],
        )
    except Exception as e:
        raise CheckpointError(
            f"could not fetch {name_or_path!r} from the hub: {type(e).__name__}: {e}"
        ) from None


def from_pretrained(
    name_or_path: str,
    model_class: Any = None,
    *,
    dtype: Any = None,
    param_dtype: Any = None,
    scan_layers: bool = False,
    remat: bool = False,
    unroll_layers: bool = False,
    strict: bool = False,
    rng: Any = 0,
    return_report: bool = False,
    **config_overrides: Any,
):
    """Loads an HF-format MobileBERT directory (or hub id) → `(model, params)`.

    Args:
        name_or_path: a directory with `config.json` and weights, or a hub id (needs huggingface_hub
            and a reachable hub).
        model_class: one of the eight classes or its name; default: the config's `architectures[0]`,
            else `MobileBertForPreTraining`.
        dtype / param_dtype: compute and storage dtypes (defaults float32).
        scan_layers, remat: model options (params are laid out to match).
        unroll_layers: run HF's `layer/{i}` tree as L separate layers instead of the (faster) default,
            one scan over the stacked layer params; the params are the same either way.
        strict: fail instead of initialising or dropping head params.
        rng: seeds head params the checkpoint lacks.
        **config_overrides: config fields to change (e.g. `num_labels=3`).
    """
    import jax.numpy as jnp

    folder = _resolve_path(name_or_path)
    config = MobileBertConfig.from_json_file(os.path.join(folder, "config.json"), **config_overrides)
    if model_class is None:
        arch = (config.extra.get("architectures") or ["MobileBertForPreTraining"])[0]
        model_class = MODEL_CLASSES.get(arch, MobileBertForPreTraining)
    if isinstance(model_class, str):
        if model_class not in MODEL_CLASSES:
            raise ValueError(f"unknown model class {model_class!r}; known: {sorted(MODEL_CLASSES)}")
        model_class = MODEL_CLASSES[model_class]
    model = model_class(
        config,
        dtype=dtype or jnp.float32,
        param_dtype=param_dtype or jnp.float32,
        scan_layers=scan_layers,
        remat=remat,
        unroll_layers=unroll_layers,
    )
    state_dict = load_state_dict(folder)
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
    save_file(arrays, os.path.join(path, SAFE_WEIGHTS), metadata={"format": "pt"})
