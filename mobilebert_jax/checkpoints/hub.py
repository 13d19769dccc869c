"""Loading and saving HF-format model directories, without torch or transformers.

`from_pretrained` is the `(model, params)` face of the one loader (`loader.load_model`): it reads
whatever `load_model` reads (HF directory, checkpoint file, TF1, orbax, training output dir, preset,
hub id) and builds the module. `save_pretrained` writes what transformers loads.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.checkpoints.loader import all_initialised, load_model
from mobilebert_jax.checkpoints.pytorch import to_pytorch
from mobilebert_jax.checkpoints.state_dict import SAFE_WEIGHTS
from mobilebert_jax.model.config import MobileBertConfig


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

    The name is resolved by `resolve_model` (the same rule as the CLI's `--model`) and read by
    `load_model`: a preset (`mobilebert-uncased`, `mobilebert-tiny`, ...) builds that architecture
    with random params and logs a warning saying so; a directory or hub id reads `config.json` and
    its weights (any format `load_model` reads).

    Args:
        name_or_path: a directory with `config.json` and weights, a hub id (needs huggingface_hub
            and a reachable hub), or a preset name.
        model_class: one of the eight classes or its name; default: the config's `architectures[0]`,
            else inferred from the checkpoint's heads (a preset: `MobileBertForPreTraining`).
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
    kw = dict(strict=strict, param_dtype=param_dtype, rng=rng, init=False)
    loaded = load_model(name_or_path, model_class, **kw, **config_overrides)
    model, params = loaded.build(
        dtype=dtype,
        param_dtype=None if isinstance(param_dtype, str) else param_dtype,
        scan_layers=scan_layers,
        remat=remat,
        unroll_layers=unroll_layers,
        rng=rng,
    )
    if not return_report:
        return model, params
    report = loaded.report.load if loaded.report is not None else all_initialised(params, loaded.config)
    return model, params, report


def save_pretrained(path: str, params: Any, config: MobileBertConfig, model_class: Any = None) -> None:
    """Writes `config.json` + `model.safetensors` that `transformers.MobileBertFor*.from_pretrained` loads.

    Tied decoder aliases are left out (as HF v5 saves); params HF creates but never uses are written
    as zeros so HF reports no missing keys.
    """
    from safetensors.numpy import save_file

    if storage.is_url(path):  # written locally, then uploaded whole (`storage.replace_dir`)
        storage.replace_dir(path, lambda local: save_pretrained(local, params, config, model_class))
        return
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


def save_orbax(path: str, params: Any, config: MobileBertConfig) -> None:
    """Writes the local folder `path`: `config.json` and `params/` (an orbax checkpoint of the Flax
    params) that `load_model` reads back; `config.extra["architectures"]` tells the reader the class.
    (`jobs.convert` writes a gs:// destination through `storage.replace_dir`.)"""
    import orbax.checkpoint as ocp

    os.makedirs(path, exist_ok=True)
    config.save(path)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(os.path.abspath(path), "params"), params)
