"""HF PyTorch state dict ↔ Flax params, by one name rule plus a short list of exceptions.

The Flax tree mirrors the PT module tree, so a Flax path maps to a PT key by joining with "." and
renaming the leaf:

| Flax leaf | PT leaf | transform |
|---|---|---|
| `kernel` (Dense, (in, out)) | `weight` (out, in) | transpose |
| `embedding` | `weight` | none |
| `scale` (real LayerNorm) | `weight` | none |
| anything else (`bias`, NoNorm `weight`) | same name | none |

Exceptions, each handled explicitly below:
- `cls.predictions.dense.weight` (H-E, V) is used untransposed by PT; its Flax leaf is named `weight`,
  so the rule above leaves it alone.
- `cls.predictions.decoder.weight` / `.bias` are tied aliases of the word embeddings and of
  `cls.predictions.bias`: dropped on import (checked equal), written back on export.
- `embeddings.position_ids` (a buffer in old checkpoints) is ignored.
- The pooler has no params when `classifier_activation=False`.
- HF creates params its forward pass never uses (`embedding_transformation` without trigram when
  E == H; `bottleneck.attention` with bottleneck attention): dropped on import, zeros on export.
- A base checkpoint (`embeddings.*`) loads into a head model (`mobilebert.embeddings.*`) and back;
  head params the source lacks are initialised, heads the target lacks are dropped, and both are said.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import (
    MODEL_CLASSES,
    MobileBertForMaskedLM,
    MobileBertForMultipleChoice,
    MobileBertForPreTraining,
    MobileBertForQuestionAnswering,
    MobileBertForTokenClassification,
    MobileBertModel,
)

logger = logging.getLogger("mobilebert_jax")

BASE_PREFIX = "mobilebert."
# Heads HF builds with `add_pooling_layer=False`: checkpoint pooler weights are ignored, as HF does.
_NO_POOLER = (MobileBertForMaskedLM, MobileBertForTokenClassification, MobileBertForQuestionAnswering)
_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_BUFFERS = re.compile(r"(^|\.)position_ids$")


class ConversionError(ValueError):
    """Raised when a checkpoint does not match the model; nothing is loaded."""


@dataclasses.dataclass
class LoadReport:
    """What a conversion did, by PT key."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    initialised: list[str] = dataclasses.field(default_factory=list)
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> reason

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.initialised:
            lines.append(
                f"initialised (not in checkpoint) {len(self.initialised)}: {', '.join(self.initialised)}"
            )
        if self.dropped:
            by_reason: dict[str, list[str]] = {}
            for k, r in self.dropped.items():
                by_reason.setdefault(r, []).append(k)
            for r, ks in by_reason.items():
                shown = ", ".join(ks[:8]) + (f", ... ({len(ks)} in all)" if len(ks) > 8 else "")
                lines.append(f"dropped ({r}): {shown}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- names
def flax_to_pt_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Flax param path → (PT key, transpose?)."""
    *mods, leaf = path
    if leaf == "kernel":
        return ".".join([*mods, "weight"]), True
    if leaf in ("embedding", "scale"):
        return ".".join([*mods, "weight"]), False
    return ".".join(path), False


def dead_pt_keys(config: MobileBertConfig, prefix: str = "") -> list[str]:
    """PT params HF creates but never uses in the forward pass for this config."""
    keys = []
    if not config.trigram_input and config.embedding_size == config.hidden_size:
        keys += [f"{prefix}embeddings.embedding_transformation.{n}" for n in ("weight", "bias")]
    if config.use_bottleneck and config.use_bottleneck_attention and config.key_query_shared_bottleneck:
        for i in range(config.num_hidden_layers):
            base = f"{prefix}encoder.layer.{i}.bottleneck.attention."
            keys += [base + s for s in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias")]
    return keys


def _dead_shapes(config: MobileBertConfig) -> dict[str, tuple[int, ...]]:
    H, I = config.hidden_size, config.true_hidden_size  # noqa: E741
    shapes = {
        "embeddings.embedding_transformation.weight": (H, config.embedding_size),
        "embeddings.embedding_transformation.bias": (H,),
    }
    for i in range(config.num_hidden_layers):
        b = f"encoder.layer.{i}.bottleneck.attention."
        shapes.update(
            {
                b + "dense.weight": (I, H),
                b + "dense.bias": (I,),
                b + "LayerNorm.weight": (I,),
                b + "LayerNorm.bias": (I,),
            }
        )
    return shapes


# ---------------------------------------------------------------------------------------- scan
def is_scanned(params: Mapping) -> bool:
    enc = params.get("mobilebert", params).get("encoder", {})
    layer = enc.get("layer", {})
    return bool(layer) and not all(k.isdigit() for k in layer)


def _map_encoder(params: Mapping, fn) -> dict:
    params = dict(params)
    if "mobilebert" in params:
        params["mobilebert"] = _map_encoder(params["mobilebert"], fn)
        return params
    enc = dict(params["encoder"])
    enc["layer"] = fn(enc["layer"])
    params["encoder"] = enc
    return params


def loop_to_scan(params: Mapping) -> dict:
    """`encoder/layer/{i}/...` → `encoder/layer/...` stacked on a leading layer axis."""
    if is_scanned(params):
        return dict(params)

    def stack(layer):
        n = len(layer)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[layer[str(i)] for i in range(n)])

    return _map_encoder(params, stack)


def scan_to_loop(params: Mapping) -> dict:
    """Stacked `encoder/layer/...` → `encoder/layer/{i}/...`."""
    if not is_scanned(params):
        return dict(params)

    def unstack(layer):
        n = jax.tree.leaves(layer)[0].shape[0]
        return {str(i): jax.tree.map(lambda x, i=i: x[i], layer) for i in range(n)}

    return _map_encoder(params, unstack)


# ---------------------------------------------------------------------------------------- helpers
def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def _dummy_inputs(model: nn.Module, seq_len: int = 8):
    shape = (1, 2, seq_len) if isinstance(model, MobileBertForMultipleChoice) else (1, seq_len)
    return jnp.ones(shape, jnp.int32)


def abstract_params(model: nn.Module) -> dict:
    """Shapes/dtypes of `model`'s params (no FLOPs), plain (unboxed) nested dict.

    Traces the scanned variant (one layer instead of L, so the cost does not grow with depth) and
    splits the layer axis back out when `model` is unrolled.
    """
    unrolled = hasattr(model, "scan_layers") and not model.scan_layers
    traced = model.clone(scan_layers=True) if unrolled else model
    ids = _dummy_inputs(model)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: traced.init(jax.random.key(0), input_ids=ids)))["params"]
    if not unrolled:
        return shapes

    def split(layer):
        n = jax.tree.leaves(layer)[0].shape[0]
        one = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), layer)
        return {str(i): one for i in range(n)}

    return _map_encoder(shapes, split)


def _fresh_param(
    path: tuple[str, ...], shape: tuple[int, ...], key: jax.Array, config: MobileBertConfig
) -> np.ndarray:
    """HF's `_init_weights` for one param: N(0, initializer_range) weights, zero biases, unit norms."""
    leaf = path[-1]
    in_norm = len(path) > 1 and path[-2] == "LayerNorm"
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    if leaf == "scale" or (leaf == "weight" and in_norm):
        return np.ones(shape, np.float32)
    return np.asarray(config.initializer_range * jax.random.normal(key, shape, jnp.float32))


def _resolve_model(config: MobileBertConfig, model_class: Any, **model_kwargs) -> nn.Module:
    if isinstance(model_class, str):
        if model_class not in MODEL_CLASSES:
            raise ValueError(f"unknown model class {model_class!r}; known: {sorted(MODEL_CLASSES)}")
        model_class = MODEL_CLASSES[model_class]
    if isinstance(model_class, nn.Module):
        return model_class
    return model_class(config, **model_kwargs)


# ---------------------------------------------------------------------------------------- PT → Flax
def _normalised_source(
    state_dict: Mapping[str, Any], config: MobileBertConfig, model: Any, report: LoadReport
) -> dict[str, Any]:
    """The state dict without buffers, tied aliases, dead and unused pooler keys, and with the base
    prefix the target expects; each key left out is recorded in `report.dropped`."""
    is_base = isinstance(model, MobileBertModel)
    src = {k: v for k, v in state_dict.items()}
    for k in list(src):
        if _BUFFERS.search(k):
            report.dropped[k] = "buffer, not a parameter"
            del src[k]
    # Normalise the base/head prefix to what the target expects.
    has_prefixed = any(k.startswith(BASE_PREFIX) for k in src)
    has_bare = any(k.startswith(("embeddings.", "encoder.", "pooler.")) for k in src)
    if is_base and has_prefixed:
        for k in list(src):
            if k.startswith(BASE_PREFIX):
                src[k[len(BASE_PREFIX) :]] = src.pop(k)
    elif not is_base and has_bare and not has_prefixed:
        for k in list(src):
            if k.startswith(("embeddings.", "encoder.", "pooler.")):
                src[BASE_PREFIX + k] = src.pop(k)
    prefix = "" if is_base else BASE_PREFIX

    for k in _TIED:
        if k not in src or (k.endswith("weight") and not config.tie_word_embeddings):
            continue  # an untied decoder weight is a real parameter, mapped by the rule
        v = _to_numpy(src.pop(k))
        twin = (
            f"{prefix}embeddings.word_embeddings.weight" if k.endswith("weight") else "cls.predictions.bias"
        )
        if twin in src and v.shape == np.shape(src[twin]) and not np.array_equal(v, _to_numpy(src[twin])):
            logger.warning("%s differs from its tied twin %s; the twin is used, as HF ties them", k, twin)
        report.dropped[k] = "tied alias"
    for k in dead_pt_keys(config, prefix):
        if k in src:
            del src[k]
            report.dropped[k] = "created by HF but unused by its forward pass"
    if isinstance(model, _NO_POOLER) or (is_base and not model.add_pooling_layer):
        for k in [k for k in src if k.startswith(f"{prefix}pooler.")]:
            del src[k]  # HF builds MaskedLM/TokenCls/QA without a pooler and ignores these too
            report.dropped[k] = f"pooler not used by {type(model).__name__}"
    return src


def _matched_params(
    src: dict[str, Any], pt_to_flax: dict, model: Any, strict: bool, report: LoadReport
) -> tuple[dict[tuple[str, ...], Any], list[str], list[str]]:
    """Flat Flax params from the source keys that map, and the head keys missing / not in the model.

    Raises `ConversionError` listing every missing or unexpected base key, wrong shape and (strict)
    head key; nothing is returned then.
    """
    is_base = isinstance(model, MobileBertModel)
    errors: list[str] = []
    flat: dict[tuple[str, ...], Any] = {}
    missing = [k for k in pt_to_flax if k not in src]
    unexpected = [k for k in src if k not in pt_to_flax]
    head_missing = [k for k in missing if not is_base and not k.startswith(BASE_PREFIX)]
    base_missing = [k for k in missing if k not in head_missing]
    head_unexpected = [
        k
        for k in unexpected
        if not k.startswith(BASE_PREFIX) and not k.startswith(("embeddings.", "encoder.", "pooler."))
    ]
    base_unexpected = [k for k in unexpected if k not in head_unexpected]
    if base_missing:
        errors.append(f"missing keys ({len(base_missing)}): {', '.join(base_missing)}")
    if base_unexpected:
        errors.append(f"unexpected keys ({len(base_unexpected)}): {', '.join(base_unexpected)}")
    if strict and head_missing:
        errors.append(f"missing head keys (strict): {', '.join(head_missing)}")
    if strict and head_unexpected:
        errors.append(f"unexpected head keys (strict): {', '.join(head_unexpected)}")
    for k, (path, transpose, shape) in pt_to_flax.items():
        if k not in src:
            continue
        v = _to_numpy(src[k])
        want = tuple(shape[::-1]) if transpose else tuple(shape)
        if v.shape != want:
            errors.append(f"{k}: checkpoint shape {v.shape}, model expects {want}")
            continue
        flat[path] = v.T if transpose else v
        report.loaded.append(k)
    if errors:
        raise ConversionError(
            f"checkpoint does not fit {type(model).__name__} with this config; nothing was loaded:\n- "
            + "\n- ".join(errors)
        )
    return flat, head_missing, head_unexpected


def from_pytorch(
    state_dict: Mapping[str, Any],
    config: MobileBertConfig,
    model_class: Any = MobileBertForPreTraining,
    *,
    scan_layers: bool = False,
    rng: jax.Array | int = 0,
    strict: bool = False,
    return_report: bool = False,
    dtype: Any = None,
):
    """HF PyTorch state dict → Flax params for `model_class(config)`.

    Args:
        state_dict: PT key → tensor/array (torch tensors are read without importing torch).
        config: the architecture; must match the checkpoint's shapes.
        model_class: one of the eight classes (or its name, or a module instance).
        scan_layers: return the stacked (scanned) layer layout.
        rng: seeds head params the checkpoint lacks (e.g. a classifier on a pretrained base).
        strict: raise instead of initialising missing head params or dropping unknown heads.
        return_report: also return a `LoadReport`.
        dtype: cast every param to this dtype (default: keep the checkpoint's).

    Raises:
        ConversionError: naming every missing/unexpected key or wrong shape; nothing is returned.
    """
    model = _resolve_model(config, model_class)
    if getattr(model, "scan_layers", False):
        model = model.clone(scan_layers=False)
    expected = flax.traverse_util.flatten_dict(abstract_params(model))
    pt_to_flax = {}
    for path, leaf in expected.items():
        key, transpose = flax_to_pt_name(path)
        pt_to_flax[key] = (path, transpose, leaf.shape)

    report = LoadReport()
    src = _normalised_source(state_dict, config, model, report)
    flat, head_missing, head_unexpected = _matched_params(src, pt_to_flax, model, strict, report)
    for k in head_unexpected:
        report.dropped[k] = f"head not in {type(model).__name__}"
    if head_missing:
        key = jax.random.key(rng) if isinstance(rng, int) else rng
        for i, k in enumerate(head_missing):
            path, _, shape = pt_to_flax[k]
            flat[path] = _fresh_param(path, tuple(shape), jax.random.fold_in(key, i), config)
            report.initialised.append(k)
    if report.initialised or any(r.startswith("head not") for r in report.dropped.values()):
        logger.warning("%s from a checkpoint of another head:\n%s", type(model).__name__, report.summary())
    params = flax.traverse_util.unflatten_dict(
        {p: jnp.asarray(v, dtype=dtype) if dtype is not None else jnp.asarray(v) for p, v in flat.items()}
    )
    if scan_layers:
        params = loop_to_scan(params)
    return (params, report) if return_report else params


# ---------------------------------------------------------------------------------------- Flax → PT
def to_pytorch(
    params: Mapping, config: MobileBertConfig, *, include_tied: bool = True, include_dead: bool = True
) -> dict[str, np.ndarray]:
    """Flax params → HF PyTorch state dict of numpy arrays (PT names and layouts).

    Args:
        params: a param tree of any of the eight classes, loop or scanned layout.
        config: the architecture the params belong to.
        include_tied: add `cls.predictions.decoder.*` aliases, as PT's `state_dict()` has them.
        include_dead: add zeros for params HF creates but never uses, so HF loads with no missing keys.
    """
    params = scan_to_loop(flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params)
    out: dict[str, np.ndarray] = {}
    for path, v in flax.traverse_util.flatten_dict(params).items():
        key, transpose = flax_to_pt_name(path)
        a = np.asarray(jax.device_get(v))
        out[key] = np.ascontiguousarray(a.T) if transpose else a
    prefix = BASE_PREFIX if "mobilebert" in params else ""
    if include_tied and "cls.predictions.bias" in out:
        if config.tie_word_embeddings:
            out["cls.predictions.decoder.weight"] = out[f"{prefix}embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    if include_dead:
        shapes = _dead_shapes(config)
        for k in dead_pt_keys(config, prefix):
            dtype = out[f"{prefix}embeddings.word_embeddings.weight"].dtype
            out[k] = np.zeros(shapes[k[len(prefix) :]], dtype)
    return out
