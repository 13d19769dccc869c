"""Optimizers (optax) for MobileBERT: the AdamW fine-tuning recipe, LAMB for pre-training, schedules.

- `adamw`: HF/PyTorch `torch.optim.AdamW` (bias-corrected; `bias_correction=False` gives google
  BERT's `AdamWeightDecayOptimizer`), eps 1e-6, decoupled weight decay 0.01 on every param except
  biases and norm params, global-norm clip 1.0, linear warmup then linear decay.
- `lamb`: google-research `mobilebert/lamb_optimizer.py`: β1 0.9, β2 0.999, ε 1e-6, no bias
  correction, weight decay 0.01 and the trust ratio ‖w‖/‖update‖ on the same params (excluded
  params get neither), global-norm clip 1.0 over all gradients.
- Freezing (progressive layer-wise distillation): `layer_labels(params, k)` labels every param
  "train" or "frozen"; pass the labels as `trainable_labels=` to either factory and only the
  "train" params move, their optimizer state living alone (frozen params have none). As in the
  TF code the global-norm clip still sees every gradient. Start each phase with a fresh
  `tx.init(params)`: the TF gate zeroes the moments of inactive layers, so a newly activated
  layer starts from zero moments there too.

Param names: NoNorm params are `.../LayerNorm/weight|bias`, LayerNorm ones `.../LayerNorm/scale|bias`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]

TRAIN, FROZEN = "train", "frozen"
# A param is excluded from weight decay (and from LAMB's trust ratio) when a path component
# matches: biases, and everything under a norm module (NoNorm `weight`/`bias`, LayerNorm `scale`/`bias`).
_NO_DECAY = re.compile(r"^(bias|LayerNorm|layer_norm|FakeLayerNorm)$")


def path_str(path: tuple) -> str:
    """'mobilebert/encoder/layer/0/attention/self/query/kernel' for a `tree_map_with_path` key path."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return "/".join(parts)


def decay_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True where weight decay (and LAMB's trust ratio) applies."""

    def keep(path, _):
        return not any(_NO_DECAY.match(p) for p in path_str(path).split("/"))

    return jax.tree_util.tree_map_with_path(keep, params)


def warmup_linear_decay(
    peak_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    end_value: float = 0.0,
    decay_from_zero: bool = False,
) -> Schedule:
    """Linear warmup from 0 to `peak_value`, then linear decay to `end_value` at `total_steps`.

    `decay_from_zero=False` is HF's `get_linear_schedule_with_warmup` (decay spans the steps after
    warmup); True is google BERT/MobileBERT `optimization.py` (the decay line starts at step 0 and the
    warmup overrides it). The value at optimizer count t is used for the (t+1)-th update, as in both.
    """
    if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), total > 0")

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = peak_value * t / max(warmup_steps, 1)
        if decay_from_zero:
            frac = jnp.clip(t / total_steps, 0.0, 1.0)
        else:
            frac = jnp.clip((t - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
        decay = end_value + (peak_value - end_value) * (1.0 - frac)
        return jnp.where(t < warmup_steps, warm, decay)

    return schedule


class MomentsState(NamedTuple):
    """First and second moments (same tree and sharding as the params)."""

    mu: Any
    nu: Any


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    """m/(sqrt(v) + eps) with m, v the raw EMAs (no bias correction), as google's BERT/LAMB code."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return MomentsState(mu=zeros, nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * (g * g), state.nu, updates)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return out, MomentsState(mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def _finish(core: optax.GradientTransformation, clip_norm: float | None, trainable_labels: Any):
    if trainable_labels is not None:
        core = optax.multi_transform({TRAIN: core, FROZEN: optax.set_to_zero()}, trainable_labels)
    if clip_norm is None:
        return core
    return optax.chain(optax.clip_by_global_norm(clip_norm), core)


def adamw(
    learning_rate: float | Schedule,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    clip_norm: float | None = 1.0,
    bias_correction: bool = True,
    mask: Any = decay_mask,
    trainable_labels: Any = None,
) -> optax.GradientTransformation:
    """The fine-tuning recipe: clip → Adam → + wd·w (masked) → × −lr.

    Args:
        learning_rate: a float or a schedule of the update count (e.g. `warmup_linear_decay`).
        weight_decay: decoupled decay rate (multiplied by the learning rate, as torch AdamW).
        b1, b2, eps: Adam constants (eps outside the square root).
        clip_norm: global-norm gradient clip (None: off).
        bias_correction: True = torch.optim.AdamW; False = google BERT's AdamWeightDecayOptimizer.
        mask: pytree or callable giving True where decay applies (default `decay_mask`).
        trainable_labels: optional "train"/"frozen" labels (`layer_labels`) to freeze params.
    """
    moments = (
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
        if bias_correction
        else scale_by_adam_no_bias_correction(b1, b2, eps)
    )
    core = optax.chain(
        moments,
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return _finish(core, clip_norm, trainable_labels)


def lamb(
    learning_rate: float | Schedule,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    clip_norm: float | None = 1.0,
    mask: Any = decay_mask,
    trainable_labels: Any = None,
) -> optax.GradientTransformation:
    """MobileBERT's pre-training LAMB: clip → m/(√v+ε) (no bias correction) → + wd·w → × trust ratio → × −lr.

    Params excluded by `mask` (biases, norms) get neither weight decay nor the trust ratio, as in
    `lamb_optimizer.py` (its `exclude_from_layer_adaptation` defaults to the decay exclusions).
    The trust ratio is ‖w‖/‖u‖ per param tensor, 1 where either norm is 0. With scanned layers a
    stacked [L, ...] tensor would get one ratio for all L layers, so use unrolled layers
    (`scan_layers=False`) to match the per-layer paper recipe.
    """
    core = optax.chain(
        scale_by_adam_no_bias_correction(b1, b2, eps),
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.masked(optax.scale_by_trust_ratio(), mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return _finish(core, clip_norm, trainable_labels)


_LAYER = re.compile(r"(^|/)encoder/layer/(\d+)/")


def layer_index(path: str) -> int | None:
    """Encoder layer of a param path ('.../encoder/layer/3/...' → 3), None outside the layers."""
    m = _LAYER.search(path)
    return int(m.group(2)) if m else None


def layer_labels(
    params: Any, layer: int | None = None, trainable: Callable[[str], bool] | None = None
) -> Any:
    """ "train"/"frozen" labels for `multi_transform` (the layer-wise learning-rate gate).

    Args:
        params: the param tree (unrolled layers: `encoder/layer/{i}/...`).
        layer: train only encoder layer `layer` (everything else, embeddings and heads included, is
            frozen, as the TF layer-wise warm-up gives non-encoder params lr 0).
        trainable: instead of `layer`, any predicate on the '/'-joined param path.

    Returns:
        Pytree of "train"/"frozen" strings like `params`.
    """
    if (layer is None) == (trainable is None):
        raise ValueError("pass exactly one of layer= and trainable=")
    paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    if any(re.search(r"(^|/)encoder/layer/(?!\d+/)", p) for p in paths):
        raise ValueError(
            "layer_labels needs unrolled layers (scan_layers=False): a scanned encoder/layer "
            "stack holds all layers in one tensor and cannot be frozen per layer"
        )
    if layer is not None:
        found = {layer_index(p) for p in paths} - {None}
        if layer not in found:
            raise ValueError(f"layer {layer} not in params (encoder layers found: {sorted(found)})")

        def trainable(p: str) -> bool:
            return layer_index(p) == layer

    return jax.tree_util.tree_map_with_path(lambda p, _: TRAIN if trainable(path_str(p)) else FROZEN, params)


def learning_rate_at(tx_schedule: float | Schedule, step: jax.Array) -> jax.Array:
    """The learning rate used for the update made at optimizer count `step` (for logging)."""
    if callable(tx_schedule):
        return jnp.asarray(tx_schedule(step), jnp.float32)
    return jnp.asarray(tx_schedule, jnp.float32)
