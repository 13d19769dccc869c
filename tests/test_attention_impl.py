"""The selectable attention kernel (model/attention.py): which one runs where, and that they agree.

On CPU: `"auto"` picks cuDNN only on a GPU backend in bf16/fp16 without active attention dropout (the
choice is checked through the real model with the backend reported as "gpu"), and the portable
`jax.nn.dot_product_attention(implementation="xla")` path, which shares all its wiring (layout,
scale, mask, probabilities) with the cuDNN one, equals our own attention within 1e-5, forward and
gradients, on a padded batch.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, rel_err

from mobilebert_jax import MobileBertConfig, MobileBertForSequenceClassification
from mobilebert_jax.model import attention, encoder, layers
from mobilebert_jax.model.attention import choose_attention
from mobilebert_jax.training.optim import path_str

BF16, F32 = jnp.bfloat16, jnp.float32


def _choose(requested="auto", backend="gpu", dtype=BF16, head_dim=32, seq_len=128, dropout_active=False):
    return choose_attention(
        requested,
        backend=backend,
        dtype=dtype,
        head_dim=head_dim,
        seq_len=seq_len,
        dropout_active=dropout_active,
    )


def test_auto_picks_cudnn_only_where_it_applies():
    assert _choose() == "cudnn"  # GPU, bf16, d=32 (MobileBERT), eval or dropout 0
    assert _choose(dtype=jnp.float16) == "cudnn"
    assert _choose(backend="cpu") == "default"  # T=128: one block, nothing to split
    # CPU, T a static multiple of 128 above it, no active dropout: blockwise, in every dtype
    assert _choose(backend="cpu", seq_len=512) == "blockwise"
    assert _choose(backend="cpu", seq_len=256, dtype=F32) == "blockwise"
    assert _choose(backend="cpu", seq_len=512, dropout_active=True) == "default"
    assert _choose(backend="cpu", seq_len=320) == "default"
    assert _choose(backend="tpu", seq_len=512) == "default"
    assert _choose(backend="gpu", seq_len=512, dtype=F32) == "default"
    with pytest.raises(ValueError, match="'blockwise' needs a static length that is a multiple of 128"):
        _choose("blockwise", backend="cpu", seq_len=100)
    assert _choose(backend="tpu") == "default"
    assert _choose(dtype=F32) == "default"  # cuDNN flash attention is bf16/fp16 only
    assert _choose(dropout_active=True) == "default"  # no attention dropout in the fused kernels
    assert _choose(head_dim=36) == "default" and _choose(head_dim=256) == "default"
    assert _choose(seq_len=127) == "default"  # cuDNN with a mask needs an even length
    # forced: taken as asked, or a clear error
    assert _choose("xla", backend="cpu", dtype=F32) == "xla"
    assert _choose("default") == "default"
    assert _choose("cudnn", backend="cpu") == "cudnn"
    with pytest.raises(ValueError, match="has no attention dropout; set attention_probs_dropout_prob=0"):
        _choose("cudnn", dropout_active=True)
    with pytest.raises(ValueError, match="'cudnn' needs bf16 or fp16 compute, got float32"):
        _choose("cudnn", dtype=F32)
    with pytest.raises(ValueError, match="attention_implementation must be one of"):
        _choose("flash")


def _flat(tree) -> dict[str, np.ndarray]:
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _model_and_batch(dtype=F32, impl="auto", dropout=0.0):
    over = dict(
        num_attention_heads=2,
        num_hidden_layers=1,
        attention_probs_dropout_prob=dropout,
        hidden_dropout_prob=0.0,
    )
    cfg = MobileBertConfig(**{**TINY, **over})  # head dim 16 / 2 = 8: a shape cuDNN takes
    model = MobileBertForSequenceClassification(cfg, dtype=dtype, attention_implementation=impl)
    r = np.random.default_rng(0)
    ids = r.integers(5, cfg.vocab_size, (3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # padded rows
    mask[2, 3:] = 0
    batch = dict(input_ids=ids * mask, attention_mask=mask, labels=np.array([0, 2, 1], np.int32))
    return cfg, model, batch


def test_the_model_makes_the_choice_from_the_backend(monkeypatch):
    seen = []
    real = attention.fused_attention

    def spy(q, k, v, mask_bias, n, impl):
        seen.append((impl, q.dtype))
        return real(q, k, v, mask_bias, n, "xla")  # what cuDNN computes, runnable on CPU

    monkeypatch.setattr(layers, "fused_attention", spy)
    cfg, model, batch = _model_and_batch(BF16)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    params = jax.eval_shape(model.init, jax.random.key(0), batch["input_ids"])["params"]

    def trace(m, **kw):  # traces the model (the choice is made at trace time), compiles nothing
        jax.eval_shape(lambda p: m.apply({"params": p}, **inputs, **kw), params)

    trace(model)
    assert seen == []  # CPU backend: our attention
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    trace(model)
    assert seen == [("cudnn", jnp.dtype(BF16))] * cfg.num_hidden_layers
    seen.clear()
    trace(model.clone(dtype=F32))  # float32: no fused kernel
    trace(model.clone(attention_implementation="default"))
    assert seen == []
    _, drop_model, _ = _model_and_batch(BF16, dropout=0.1)
    rngs = {"dropout": jax.random.key(1)}
    trace(drop_model, deterministic=False, rngs=rngs)  # attention dropout on: ours
    assert seen == []
    trace(drop_model)  # eval mode: no dropout, so cuDNN
    assert seen == [("cudnn", jnp.dtype(BF16))] * cfg.num_hidden_layers
    with pytest.raises(ValueError, match="has no attention dropout"):
        trace(drop_model.clone(attention_implementation="cudnn"), deterministic=False, rngs=rngs)


def test_xla_dot_product_attention_equals_ours_in_the_model():
    cfg, ours, batch = _model_and_batch(F32, impl="default")
    fused = ours.clone(attention_implementation="xla")
    shapes = jax.eval_shape(ours.init, jax.random.key(0), batch["input_ids"])["params"]
    r = np.random.default_rng(2)  # random params without an init compile; norm weights near 1
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(("LayerNorm" in path_str(p)) + 0.05 * r.normal(size=x.shape), F32),
        nn.meta.unbox(shapes),
    )

    run = jax.jit(
        lambda m, p: m.apply({"params": p}, **batch, output_attentions=True, output_hidden_states=True),
        static_argnums=0,
    )  # gradients: the next test, on the attention module with unsaturated scores
    out_a, out_b = run(ours, params), run(fused, params)
    assert rel_err(out_b.logits, out_a.logits) <= 1e-5
    assert rel_err(out_b.loss, out_a.loss) <= 1e-5
    for a, b in zip(out_a.hidden_states, out_b.hidden_states):
        assert rel_err(b, a) <= 1e-5
    for a, b in zip(out_a.attentions, out_b.attentions):  # probabilities, padded keys at 0
        assert rel_err(b, a) <= 1e-5
    assert float(jnp.abs(out_b.attentions[0][1, :, :, 6:]).max()) == 0.0
    assert dataclasses.asdict(cfg) == dataclasses.asdict(ours.config)  # the kernel is not a config field


def test_xla_dot_product_attention_equals_ours_per_param_and_input():
    """The attention module alone, with O(1) scores (not saturated), so every gradient is sizeable."""
    cfg = MobileBertConfig(**{**TINY, "num_attention_heads": 2})
    n, i = cfg.num_attention_heads, cfg.true_hidden_size
    r = np.random.default_rng(1)
    x = [jnp.asarray(r.normal(size=(3, 10, i)), F32) for _ in range(3)]
    mask = np.ones((3, 10), np.int32)
    mask[1, 6:], mask[2, 3:] = 0, 0
    bias = encoder.attention_bias(jnp.asarray(mask))
    ours = layers.MobileBertSelfAttention(cfg, attention_implementation="default")
    fused = ours.clone(attention_implementation="xla")
    shapes = nn.meta.unbox(jax.eval_shape(ours.init, jax.random.key(0), *x, bias)["params"])
    params = jax.tree.map(lambda p: jnp.asarray(r.normal(size=p.shape) / np.sqrt(i), F32), shapes)
    w = jnp.asarray(r.normal(size=(3, 10, n * (i // n))), F32) * mask[..., None]  # a loss over real rows

    def loss(model, p, xs):
        ctx, probs = model.apply({"params": p}, *xs, bias)
        return jnp.sum(ctx * w) + jnp.sum(probs[..., 0] ** 2), (ctx, probs)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)
    (_, (ctx_a, p_a)), (gp_a, gx_a) = grad(ours, params, x)
    (_, (ctx_b, p_b)), (gp_b, gx_b) = grad(fused, params, x)
    assert rel_err(ctx_b, ctx_a) <= 1e-5 and rel_err(p_b, p_a) <= 1e-5
    for a, b in zip(gx_a, gx_b):
        assert rel_err(b, a) <= 1e-5
    fa, fb = _flat(gp_a), _flat(gp_b)
    for k in fa:
        if k.endswith("key/bias"):  # zero gradient: softmax ignores a constant added to a row of scores
            assert np.abs(fa[k]).max() < 1e-5 and np.abs(fb[k]).max() < 1e-5
        else:
            assert rel_err(fb[k], fa[k]) <= 1e-5, k
