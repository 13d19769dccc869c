"""The trainer's loss functions equal the heads' own (HF-semantics) losses, exactly as sums / counts."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import (
    MobileBertConfig,
    MobileBertForMaskedLM,
    MobileBertForMultipleChoice,
    MobileBertForNextSentencePrediction,
    MobileBertForPreTraining,
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
    MobileBertModel,
)
from mobilebert_jax.training import objectives
from mobilebert_jax.training.state import model_init_fn

FAST = {"xla_backend_optimization_level": 0}
B, T = 4, 10


def _cfg(**kw):
    return MobileBertConfig.from_preset("mobilebert-test", num_hidden_layers=1, **kw)


def _params(model, batch):
    """Random params with the model's tree from eval_shape (no init compile)."""
    shapes = nn.meta.unbox(jax.eval_shape(model_init_fn(model, batch), jax.random.key(0)))["params"]
    r = np.random.default_rng(0)
    return jax.tree.map(lambda x: (0.1 * r.normal(size=x.shape)).astype(np.float32), shapes)


def _inputs(r, shape=(B, T)):
    ids = r.integers(5, 1000, shape).astype(np.int32)
    mask = np.ones(shape, np.int32)
    mask[..., 0, -3:] = 0  # one padded example
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros(shape, np.int32)}


def _check(model, batch, label_kwargs):
    """objective(loss_fn) vs model.apply(..., labels).loss, in one compile."""
    params = _params(model, batch)
    loss_fn = objectives.loss_fn_for(model)

    def both(p):
        sums, (counts, aux) = loss_fn(p, batch, None, True)
        out = model.apply({"params": p}, **objectives.model_inputs(batch), **label_kwargs)
        return objectives.objective(sums, counts), out.loss, aux

    ours, ref, aux = jax.jit(both, compiler_options=FAST)(params)
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)
    assert np.isfinite(float(ours))
    return aux


def test_pretraining_and_masked_lm():
    r = np.random.default_rng(0)
    b = _inputs(r)
    labels = np.where(r.random((B, T)) < 0.3, b["input_ids"], -100).astype(np.int32)
    nsp = np.array([0, 1, 1, 0], np.int32)
    batch = {**b, "labels": labels, "next_sentence_label": nsp}
    aux = _check(MobileBertForPreTraining(_cfg()), batch, {"labels": labels, "next_sentence_label": nsp})
    assert set(aux) == {"mlm_accuracy", "nsp_accuracy"} and float(aux["nsp_accuracy"][1]) == B
    assert float(aux["mlm_accuracy"][1]) == (labels != -100).sum()
    _check(MobileBertForMaskedLM(_cfg()), {**b, "labels": labels}, {"labels": labels})
    _check(MobileBertForNextSentencePrediction(_cfg()), {**b, "labels": nsp}, {"labels": nsp})


@pytest.mark.parametrize(
    "num_labels,problem,labels",
    [
        (3, None, np.array([0, 2, 1, 2], np.int32)),  # single-label
        (1, None, np.array([0.5, -1.0, 2.0, 0.1], np.float32)),  # regression
        (2, "regression", np.array([[0.5, 1], [-1, 0], [2, 2], [0.1, 3]], np.float32)),
        (3, None, np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], np.float32)),  # multi-label
    ],
)
def test_sequence_classification(num_labels, problem, labels):
    model = MobileBertForSequenceClassification(_cfg(num_labels=num_labels, problem_type=problem))
    b = _inputs(np.random.default_rng(1))
    _check(model, {**b, "labels": labels}, {"labels": labels})


def test_example_mask_makes_a_padded_batch_count_exactly():
    """Rows with example_mask 0 contribute nothing: regression over 3 real rows == HF on those rows."""
    model = MobileBertForSequenceClassification(_cfg(num_labels=1))
    r = np.random.default_rng(2)
    b = _inputs(r)
    y = np.array([0.5, -1.0, 2.0, 123.0], np.float32)
    batch = {**b, "labels": y, "example_mask": np.array([1, 1, 1, 0], np.int32)}
    params = _params(model, batch)
    loss_fn = objectives.loss_fn_for(model)
    s, (n, _) = jax.jit(lambda p: loss_fn(p, batch, None, True), compiler_options=FAST)(params)
    real = {k: v[:3] for k, v in b.items()}
    ref = jax.jit(lambda p: model.apply({"params": p}, **real, labels=y[:3]).loss, compiler_options=FAST)(
        params
    )
    assert float(n) == 3
    np.testing.assert_allclose(float(s / n), float(ref), rtol=1e-6)


def test_token_classification_multiple_choice_question_answering():
    r = np.random.default_rng(3)
    b = _inputs(r)
    tok = r.integers(0, 3, (B, T)).astype(np.int32)
    tok[0, -3:] = -100
    _check(MobileBertForTokenClassification(_cfg(num_labels=3)), {**b, "labels": tok}, {"labels": tok})

    mc = _inputs(r, (B, 3, T))
    y = np.array([2, 0, 1, 1], np.int32)
    _check(MobileBertForMultipleChoice(_cfg()), {**mc, "labels": y}, {"labels": y})

    # one start position out of range: clamped to T and ignored in the start term only
    start, end = np.array([1, 3, 50, 0], np.int32), np.array([2, 5, 7, 0], np.int32)
    batch = {**b, "start_positions": start, "end_positions": end}
    aux = _check(
        MobileBertForQuestionAnswering(_cfg(num_labels=2)),
        batch,
        {"start_positions": start, "end_positions": end},
    )
    assert float(aux["start_accuracy"][1]) == 3 and float(aux["end_accuracy"][1]) == 4


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="no loss for MobileBertModel"):
        objectives.loss_fn_for(MobileBertModel(_cfg()))
    model = MobileBertForSequenceClassification(_cfg(num_labels=3))
    loss_fn = objectives.loss_fn_for(model)
    params = jax.eval_shape(lambda: _params(model, _inputs(np.random.default_rng(0))))
    with pytest.raises(KeyError, match=r"batch is missing \['labels'\]"):
        jax.eval_shape(lambda p: loss_fn(p, _inputs(np.random.default_rng(0)), None, True), params)
    bad = {**_inputs(np.random.default_rng(0)), "labels": jnp.zeros((B, 2), jnp.float32)}
    with pytest.raises(
        ValueError, match=r"multi_label_classification labels must have shape \[batch, num_labels=3\]"
    ):
        jax.eval_shape(lambda p: loss_fn(p, bad, None, True), params)
