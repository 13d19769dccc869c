"""Loss functions for every MobileBERT head, in the form the trainer accumulates exactly.

A loss function is `loss_fn(params, batch, rng, deterministic) -> (sums, (counts, aux))`:

- `sums`, `counts`: a scalar each, or dicts with the same keys (one entry per loss term). The
  objective is `Σ_k sums[k] / counts[k]` where the counts are totals over the whole (accumulated)
  batch, so micro-batching and padding change nothing: padded targets add 0 to both.
- `aux`: dict of extra metrics `name -> (sum, count)`, reported as `sum / count` (e.g. accuracy).
- `rng`: dropout key (used when `deterministic` is False); `batch`: dict of arrays with the model
  inputs (`input_ids`, `attention_mask`, `token_type_ids`, `position_ids`) and the labels named as in
  HF (`labels`, `next_sentence_label`, `start_positions`, `end_positions`).

The losses are those of HF's PyTorch heads (and of this package's `model/heads.py`), computed from the
logits in float32 with `mobilebert_jax.model.losses`. Sequence-level losses accept an optional
`example_mask` [B] (1 = real example) so a padded last eval batch counts exactly; token-level
labels use -100 for ignored positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.model import losses
from mobilebert_jax.model.heads import (
    MobileBertForMaskedLM,
    MobileBertForMultipleChoice,
    MobileBertForNextSentencePrediction,
    MobileBertForPreTraining,
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
)

LossFn = Callable[[Any, dict, jax.Array | None, bool], tuple[Any, tuple[Any, dict]]]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of `batch` the model's `__call__` takes."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def apply_model(
    model: nn.Module, params: Any, batch: dict, rng: jax.Array | None, deterministic: bool
) -> Any:
    """`model.apply` on the batch's inputs, with dropout from `rng` when not deterministic."""
    rngs = {} if deterministic or rng is None else {"dropout": rng}
    # `quant_stats` is scratch state: a qwix QAT model (`finetune --qat`) writes it on every call (each
    # batch fake-quantized with its own ranges); other models write none. Either way it is dropped.
    out, _ = model.apply(
        {"params": params},
        **model_inputs(batch),
        deterministic=deterministic,
        rngs=rngs,
        mutable=["quant_stats"],
    )
    return out


def _need(batch: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; it has {sorted(batch)}")


def split_terms(terms: dict[str, losses.SumCount]) -> tuple[dict, dict]:
    """`{term: (sum, count)}` as the trainer's (sums, counts) dicts."""
    return {k: s for k, (s, _) in terms.items()}, {k: n for k, (_, n) in terms.items()}


def pretraining_loss(model: MobileBertForPreTraining) -> LossFn:
    """MLM + NSP: `CE_mlm(labels [B, T], -100 ignored) + CE_nsp(next_sentence_label [B])`."""

    def loss_fn(params, batch, rng, deterministic):
        _need(batch, "labels", "next_sentence_label")
        out = apply_model(model, params, batch, rng, deterministic)
        mask, labels = batch.get("example_mask"), batch["labels"]
        terms = losses.pretraining_terms(
            out.prediction_logits, out.seq_relationship_logits, labels, batch["next_sentence_label"], mask
        )
        nsp_labels = losses.mask_examples(jnp.reshape(batch["next_sentence_label"], (-1,)), mask)
        aux = {
            "mlm_accuracy": losses.accuracy_sum_and_count(out.prediction_logits, labels),
            "nsp_accuracy": losses.accuracy_sum_and_count(out.seq_relationship_logits, nsp_labels),
        }
        sums, counts = split_terms(terms)
        return sums, (counts, aux)

    return loss_fn


def masked_lm_loss(model: MobileBertForMaskedLM) -> LossFn:
    """Token CE over `labels` [B, T] (-100 ignored)."""

    def loss_fn(params, batch, rng, deterministic):
        _need(batch, "labels")
        out = apply_model(model, params, batch, rng, deterministic)
        s, n = losses.cross_entropy_sum_and_count(out.logits, batch["labels"])
        return s, (n, {"accuracy": losses.accuracy_sum_and_count(out.logits, batch["labels"])})

    return loss_fn


def _classification(logits: jax.Array, labels: jax.Array, batch: dict) -> tuple[Any, tuple[Any, dict]]:
    labels = losses.mask_examples(labels, batch.get("example_mask"))
    s, n = losses.cross_entropy_sum_and_count(logits, labels)
    return s, (n, {"accuracy": losses.accuracy_sum_and_count(logits, labels)})


def next_sentence_loss(model: MobileBertForNextSentencePrediction) -> LossFn:
    """NSP CE over `labels` [B] (0 = B follows A)."""

    def loss_fn(params, batch, rng, deterministic):
        _need(batch, "labels")
        out = apply_model(model, params, batch, rng, deterministic)
        return _classification(out.logits, jnp.reshape(batch["labels"], (-1,)), batch)

    return loss_fn


def sequence_classification_loss(model: MobileBertForSequenceClassification) -> LossFn:
    """HF's three problem types on logits [B, num_labels]:

    - regression: MSE (labels [B] or [B, num_labels] floats); count = B·num_labels;
    - single-label: CE over `labels` [B] ints (-100 ignored); aux accuracy;
    - multi-label: BCE-with-logits over `labels` [B, num_labels] in {0, 1}; count = B·num_labels.
    """
    return _head_loss(model, _sequence_classification_terms(model.config), "labels")


def _sequence_classification_terms(cfg: Any) -> Callable:
    def terms(out, batch):
        labels = jnp.asarray(batch["labels"])
        kind = losses.problem_type_of(cfg, labels)
        if kind == "single_label_classification":
            return _classification(out.logits, jnp.reshape(labels, (-1,)), batch)
        mask = batch.get("example_mask")
        s, n = losses.sequence_classification_sum_and_count(kind, out.logits, labels, mask)
        return s, (n, {})

    return terms


def _head_loss(model: nn.Module, terms: Callable, *needs: str) -> LossFn:
    """The loss function computing `terms(outputs, batch)` on the model's outputs."""

    def loss_fn(params, batch, rng, deterministic):
        _need(batch, *needs)
        return terms(apply_model(model, params, batch, rng, deterministic), batch)

    return loss_fn


# The outputs `--qat_distillation` distils, by head: each a distribution over its last axis.
DISTILLED_OUTPUTS = {
    MobileBertForSequenceClassification: ("logits",),
    MobileBertForTokenClassification: ("logits",),
    MobileBertForQuestionAnswering: ("start_logits", "end_logits"),
}


def distillation_loss(model: nn.Module, weight: float) -> LossFn:
    """Self-distillation (`finetune --qat ... --qat_distillation W`): `(1 - W)·(the head's loss on the
    labels) + W·KL(teacher ‖ model)`, the teacher's outputs coming with the batch (`teacher_<output>`:
    the float model's, computed once before training). The KL is over the last axis of each distilled
    output (`DISTILLED_OUTPUTS`): per example for a single-label classifier and for QA (the mean of the
    start and end distributions), per real token (`attention_mask`) for token classification; its
    count is the examples' (or tokens'). aux adds `teacher_agreement`: the argmax (QA: start and end)
    equal to the teacher's."""
    keys = next((k for cls, k in DISTILLED_OUTPUTS.items() if isinstance(model, cls)), None)
    if keys is None:
        raise TypeError(
            f"distillation is for {[c.__name__ for c in DISTILLED_OUTPUTS]}, not {type(model).__name__}"
        )
    base = _terms_for(model)
    per_token = isinstance(model, MobileBertForTokenClassification)

    def loss_fn(params, batch, rng, deterministic):
        _need(batch, *(f"teacher_{k}" for k in keys))
        out = apply_model(model, params, batch, rng, deterministic)
        sums, (counts, aux) = base(out, batch)
        if not isinstance(sums, dict):
            sums, counts = {"labels": sums}, {"labels": counts}
        sums = {k: (1.0 - weight) * v for k, v in sums.items()}
        kl, same = 0.0, 1.0
        for k in keys:
            teacher = jax.nn.log_softmax(jnp.asarray(batch[f"teacher_{k}"], jnp.float32), axis=-1)
            student_logits = getattr(out, k).astype(jnp.float32)
            student = jax.nn.log_softmax(student_logits, axis=-1)
            kl = kl + jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1) / len(keys)
            same = same * (jnp.argmax(student_logits, -1) == jnp.argmax(teacher, -1)).astype(jnp.float32)
        rows = jnp.ones(kl.shape, jnp.float32)
        if per_token:
            rows = jnp.asarray(batch["attention_mask"], jnp.float32)
        if batch.get("example_mask") is not None:
            mask = jnp.asarray(batch["example_mask"], jnp.float32)
            rows = rows * jnp.reshape(mask, mask.shape + (1,) * (rows.ndim - mask.ndim))
        sums["distillation"] = weight * jnp.sum(kl * rows)
        counts["distillation"] = jnp.sum(rows)
        aux["teacher_agreement"] = (jnp.sum(same * rows), jnp.sum(rows))
        return sums, (counts, aux)

    return loss_fn


def token_classification_loss(model: MobileBertForTokenClassification) -> LossFn:
    """Token CE over `labels` [B, T] (-100 ignored, e.g. padding and non-first sub-words)."""

    return _head_loss(model, _token_classification_terms, "labels")


def _token_classification_terms(out, batch):
    return _classification(out.logits, jnp.asarray(batch["labels"]), batch)


def multiple_choice_loss(model: MobileBertForMultipleChoice) -> LossFn:
    """CE over choices: inputs [B, C, T], logits [B, C], `labels` [B]."""

    def loss_fn(params, batch, rng, deterministic):
        _need(batch, "labels")
        out = apply_model(model, params, batch, rng, deterministic)
        return _classification(out.logits, jnp.reshape(batch["labels"], (-1,)), batch)

    return loss_fn


def question_answering_loss(model: MobileBertForQuestionAnswering) -> LossFn:
    """HF's QA loss (CE_start + CE_end) / 2; positions [B] clamped to [0, T], position T ignored.

    Returned as two terms ("start", "end") each pre-multiplied by 1/2, so the objective
    Σ sums/counts is exactly HF's even when a position is ignored in only one of them.
    """
    return _head_loss(model, _question_answering_terms, "start_positions", "end_positions")


def _question_answering_terms(out, batch):
    mask = batch.get("example_mask")
    terms = losses.question_answering_terms(
        out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"], mask
    )
    aux = {}
    for name, logits in (("start", out.start_logits), ("end", out.end_logits)):
        pos = losses.span_positions(logits, batch[f"{name}_positions"], mask)
        t = logits.shape[-1]
        aux[f"{name}_accuracy"] = losses.accuracy_sum_and_count(logits, pos, ignore_index=t)
    sums, counts = split_terms(terms)
    return sums, (counts, aux)


_BY_CLASS = {
    MobileBertForPreTraining: pretraining_loss,
    MobileBertForMaskedLM: masked_lm_loss,
    MobileBertForNextSentencePrediction: next_sentence_loss,
    MobileBertForSequenceClassification: sequence_classification_loss,
    MobileBertForTokenClassification: token_classification_loss,
    MobileBertForMultipleChoice: multiple_choice_loss,
    MobileBertForQuestionAnswering: question_answering_loss,
}


def _terms_for(model: nn.Module) -> Callable:
    """`terms(outputs, batch)` of the heads `distillation_loss` wraps."""
    if isinstance(model, MobileBertForSequenceClassification):
        return _sequence_classification_terms(model.config)
    if isinstance(model, MobileBertForTokenClassification):
        return _token_classification_terms
    return _question_answering_terms


def loss_fn_for(model: nn.Module, distillation: float = 0.0) -> LossFn:
    """The loss function of a head model (raises for the bare `MobileBertModel`); `distillation` > 0:
    `distillation_loss` (single-label sequence classification, token classification, QA)."""
    if distillation:
        return distillation_loss(model, distillation)
    for cls, make in _BY_CLASS.items():
        if isinstance(model, cls):
            return make(model)
    raise TypeError(
        f"no loss for {type(model).__name__}; heads with losses: {[c.__name__ for c in _BY_CLASS]}"
    )


def objective(sums: Any, counts: Any) -> jax.Array:
    """Σ_k sums[k] / counts[k] (or sums / counts for scalars): the loss HF would report.

    A term with no targets at all (count 0, so sum 0) contributes 0 where HF's mean would be NaN, so
    a batch without, say, any masked token does not trip the trainer's NaN guard.
    """
    if isinstance(sums, dict):
        return sum(sums[k] / jnp.maximum(counts[k], 1) for k in sorted(sums))
    return sums / jnp.maximum(counts, 1)
