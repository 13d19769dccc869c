"""Losses with PyTorch's semantics, computed in float32.

Each loss comes in two forms: a `*_sum_and_count` pair that a training step can add up exactly over
micro-batches (weighting by token count, exact under padding), and the mean that HF returns
(`sum / count`). As in PyTorch, a mean over zero counted targets is NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def cross_entropy_sum_and_count(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, jax.Array]:
    """Summed token cross-entropy and the number of targets that count.

    Args:
        logits: [..., num_classes] scores (any float dtype; computed in float32).
        labels: [...] integer class ids; `ignore_index` entries do not count.
        ignore_index: label value that is skipped (PyTorch's `ignore_index`).

    Returns:
        (sum of -log p[label] over counted targets, count), both float32 scalars.
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    nll = jnp.where(valid, nll, 0.0)
    return nll.sum(), valid.sum().astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """`torch.nn.CrossEntropyLoss(ignore_index=...)` with mean reduction (NaN if nothing counts)."""
    s, n = cross_entropy_sum_and_count(logits, labels, ignore_index)
    return s / n


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """`torch.nn.MSELoss()`: mean squared error in float32."""
    d = predictions.astype(jnp.float32) - targets.astype(jnp.float32)
    return jnp.mean(d * d)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`torch.nn.BCEWithLogitsLoss()`: mean binary cross-entropy on logits, numerically stable."""
    x = logits.astype(jnp.float32)
    y = targets.astype(jnp.float32)
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))
