"""The losses of every MobileBERT head, with PyTorch's (HF's) semantics, computed in float32.

Each loss is written once, as `(sum, count)`: a training step adds those up exactly over micro-batches
(the loss is weighted by target count, and padded targets add 0 to both), and HF's mean is `sum / count`
(`mean_of_terms`; as in PyTorch, a mean over zero counted targets is NaN). The heads' `labels=` path,
the trainer's loss functions (`training/objectives.py`), the tasks' `loss_terms` and the distillation
losses all call these functions.

Sequence-level losses take an optional `example_mask` [B] (1 = real example, 0 = a padding row added to
fill the last batch): a masked example counts nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100
SumCount = tuple[jax.Array, jax.Array]


def cross_entropy_sum_and_count(
    logits: jax.Array,
    labels: jax.Array,
    ignore_index: int = IGNORE_INDEX,
    *,
    soft_targets: jax.Array | None = None,
    label_weight: float = 1.0,
) -> SumCount:
    """Summed token cross-entropy and the number of targets that count.

    Args:
        logits: [..., num_classes] scores (any float dtype; computed in float32).
        labels: [...] integer class ids; `ignore_index` entries do not count.
        ignore_index: label value that is skipped (PyTorch's `ignore_index`).
        soft_targets: [..., num_classes] probabilities (e.g. a teacher's softmax) or None. Given, each
            counted target is `label_weight · one_hot(label) + (1 − label_weight) · soft_targets`.
        label_weight: weight of the one-hot label when `soft_targets` is given.

    Returns:
        (Σ over counted targets of −Σ_c target_c log p_c, count), both float32 scalars.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = jnp.asarray(labels).astype(jnp.int32)
    valid = labels != ignore_index
    per = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    if soft_targets is not None and label_weight != 1.0:
        soft = -jnp.sum(soft_targets.astype(jnp.float32) * logp, axis=-1)
        per = label_weight * per + (1.0 - label_weight) * soft
    return jnp.sum(jnp.where(valid, per, 0.0)), jnp.sum(valid).astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """`torch.nn.CrossEntropyLoss(ignore_index=...)` with mean reduction (NaN if nothing counts)."""
    s, n = cross_entropy_sum_and_count(logits, labels, ignore_index)
    return s / n


def accuracy_sum_and_count(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX
) -> SumCount:
    """(hits, counted targets): a hit when the label's logit is the row maximum.

    The same as `argmax == label` up to exact ties, computed with a plain max: XLA's CPU argmax (a
    variadic reduce) is much slower over a vocabulary of logits.
    """
    valid = labels != ignore_index
    picked = jnp.take_along_axis(logits, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    hit = (picked >= jnp.max(logits, axis=-1)) & valid
    return hit.sum().astype(jnp.float32), valid.sum().astype(jnp.float32)


def mean_of_terms(terms: Mapping[str, SumCount]) -> jax.Array:
    """HF's loss from `{term: (sum, count)}`: Σ_k sum_k / count_k (NaN for a term with no targets)."""
    return sum(s / n for s, n in terms.values())


def mask_examples(labels: jax.Array, example_mask: jax.Array | None, ignore_index: int = IGNORE_INDEX):
    """Labels [B, ...] with the rows of padded examples (`example_mask` 0) set to `ignore_index`."""
    labels = jnp.asarray(labels)
    if example_mask is None:
        return labels
    m = jnp.reshape(jnp.asarray(example_mask), (-1,) + (1,) * (labels.ndim - 1)) > 0
    return jnp.where(m, labels, ignore_index)


def pretraining_terms(
    prediction_logits: jax.Array,
    seq_relationship_logits: jax.Array,
    labels: jax.Array,
    next_sentence_label: jax.Array,
    example_mask: jax.Array | None = None,
    *,
    mlm_soft_targets: jax.Array | None = None,
    label_weight: float = 1.0,
) -> dict[str, SumCount]:
    """MLM + NSP as `{"mlm": (sum, count), "nsp": (sum, count)}`; HF's loss is `mean_of_terms`.

    Args:
        prediction_logits: [B, T, V] (or [B, P, V] at gathered masked positions).
        seq_relationship_logits: [B, 2].
        labels: [B, T] (or [B, P]) token ids, -100 where nothing is predicted.
        next_sentence_label: [B] (or [B, 1]); 0 = B follows A.
        example_mask: [B] or None; padded examples count in neither term.
        mlm_soft_targets, label_weight: distillation's mixed MLM targets (`cross_entropy_sum_and_count`).
    """
    labels = mask_examples(labels, example_mask)
    nsp_labels = mask_examples(jnp.reshape(jnp.asarray(next_sentence_label), (-1,)), example_mask)
    mlm = cross_entropy_sum_and_count(
        prediction_logits, labels, soft_targets=mlm_soft_targets, label_weight=label_weight
    )
    return {"mlm": mlm, "nsp": cross_entropy_sum_and_count(seq_relationship_logits, nsp_labels)}


def problem_type_of(config: Any, labels: jax.Array) -> str:
    """HF's rule: `config.problem_type`, else (inferred, not written back) one label → regression,
    integer labels → single-label classification, else multi-label classification."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_sum_and_count(
    problem_type: str, logits: jax.Array, labels: jax.Array, example_mask: jax.Array | None = None
) -> SumCount:
    """HF's sequence-classification loss for `problem_type` on logits [B, num_labels]:

    - regression: squared error over `labels` [B] or [B, num_labels] floats; count B·num_labels;
    - single-label: cross-entropy over `labels` [B] ints (-100 ignored);
    - multi-label: BCE-with-logits over `labels` [B, num_labels] in {0, 1}; count B·num_labels.
    """
    labels = jnp.asarray(labels)
    if problem_type == "single_label_classification":
        return cross_entropy_sum_and_count(logits, mask_examples(jnp.reshape(labels, (-1,)), example_mask))
    b = logits.shape[0]
    y = jnp.reshape(labels, (b, -1)).astype(jnp.float32)
    x = logits.astype(jnp.float32)
    if y.shape != x.shape:
        raise ValueError(
            f"{problem_type} labels must have shape [batch, num_labels={x.shape[-1]}] "
            f"(or [batch] for one label), got {labels.shape}"
        )
    w = jnp.ones((b, 1), jnp.float32)
    if example_mask is not None:
        w = jnp.reshape(jnp.asarray(example_mask), (b, 1)).astype(jnp.float32)
    if problem_type == "regression":
        per = (x - y) ** 2
    elif problem_type == "multi_label_classification":
        per = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    else:
        raise ValueError(f"unknown problem_type {problem_type!r}")
    return (per * w).sum(), (w * jnp.ones_like(per)).sum()


def span_positions(logits: jax.Array, positions: jax.Array, example_mask: jax.Array | None = None):
    """HF's QA targets for logits [B, T]: positions [B] (or [B, 1]) clamped to [0, T]; T is ignored
    (out-of-range positions and padded examples)."""
    t = logits.shape[-1]
    pos = jnp.clip(jnp.reshape(jnp.asarray(positions), (-1,)), 0, t)
    return mask_examples(pos, example_mask, ignore_index=t)


def question_answering_terms(
    start_logits: jax.Array,
    end_logits: jax.Array,
    start_positions: jax.Array,
    end_positions: jax.Array,
    example_mask: jax.Array | None = None,
) -> dict[str, SumCount]:
    """HF's QA loss (CE_start + CE_end) / 2 as `{"start": ..., "end": ...}`, each sum halved, so that
    `mean_of_terms` is HF's value even when a position is ignored in only one of them."""
    out = {}
    for name, logits, pos in (("start", start_logits, start_positions), ("end", end_logits, end_positions)):
        s, n = cross_entropy_sum_and_count(
            logits, span_positions(logits, pos, example_mask), ignore_index=logits.shape[-1]
        )
        out[name] = (0.5 * s, n)
    return out
