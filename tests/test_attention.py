"""Self-attention in training mode against HF's order of operations, with the same dropout mask.

Our attention applies dropout to exp(scores - max) and divides the [B, N, T, d] context by the row
sums; HF computes softmax, drops out the [B, N, T, T] probabilities, then multiplies by v. The two are
the same math. The reference below has HF's order and the same param and rng paths as ours
(`query`, `key`, `value`, `Dropout_0`), so both draw the same dropout mask.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from conftest import TINY, rel_err

from mobilebert_jax import MobileBertConfig
from mobilebert_jax.model.encoder import attention_bias
from mobilebert_jax.model.layers import MobileBertSelfAttention, _Base


class _HFOrder(_Base):
    @nn.compact
    def __call__(self, q_in, k_in, v_in, mask_bias, deterministic: bool = True):
        cfg = self.config
        n, d = cfg.num_attention_heads, cfg.head_dim
        q = self.dense(n * d, (None, None), "query")(q_in)
        k = self.dense(n * d, (None, None), "key")(k_in)
        v = self.dense(n * d, (None, None), "value")(v_in)
        b, t = q.shape[:2]
        q, k, v = (x.reshape(b, t, n, d) for x in (q, k, v))
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k) * (d**-0.5) + mask_bias
        probs = jax.nn.softmax(scores, axis=-1)
        dropped = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        return jnp.einsum("bnqk,bknd->bqnd", dropped, v).reshape(b, t, n * d), probs


def _setup(rate):
    cfg = MobileBertConfig(**dict(TINY, attention_probs_dropout_prob=rate))
    rs = np.random.RandomState(0)
    b, t, i, h = 3, 7, cfg.true_hidden_size, cfg.hidden_size
    qk = jnp.asarray(rs.randn(b, t, i), jnp.float32)
    v_in = jnp.asarray(rs.randn(b, t, h), jnp.float32)
    mask = np.ones((b, t), np.int32)
    mask[1, 5:] = 0  # padding in one row
    bias = attention_bias(jnp.asarray(mask))
    ours = MobileBertSelfAttention(cfg)
    params = ours.init(jax.random.key(0), qk, qk, v_in, bias)["params"]
    # Non-trivial biases: zeros would hide a bias applied in the wrong place.
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.asarray(rs.randn(*p.shape), p.dtype), params)
    return cfg, ours, params, (qk, qk, v_in, bias)


def test_train_mode_attention_equals_hf_order_with_the_same_dropout_mask():
    cfg, ours, params, args = _setup(rate=0.3)
    ref = _HFOrder(cfg)
    rngs = {"dropout": jax.random.key(7)}
    ctx, probs = ours.apply({"params": params}, *args, deterministic=False, rngs=rngs)
    ctx_ref, probs_ref = ref.apply({"params": params}, *args, deterministic=False, rngs=rngs)
    assert rel_err(ctx, ctx_ref) < 1e-6
    assert rel_err(probs, probs_ref) < 1e-6  # both the distribution before dropout
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-6)
    # Dropout did act (so the comparison above is about the dropped path), and eval mode has none.
    ctx_eval, _ = ours.apply({"params": params}, *args, deterministic=True)
    assert rel_err(ctx, ctx_eval) > 1e-2
    ctx_ref_eval, _ = ref.apply({"params": params}, *args, deterministic=True)
    assert rel_err(ctx_eval, ctx_ref_eval) < 1e-6


def test_attention_gradients_equal_hf_order_in_train_mode():
    cfg, ours, params, args = _setup(rate=0.3)
    ref = _HFOrder(cfg)
    rngs = {"dropout": jax.random.key(3)}
    w = jnp.asarray(np.random.RandomState(1).randn(*args[0].shape[:2], cfg.true_hidden_size), jnp.float32)

    def loss(module):
        return lambda p: jnp.sum(module.apply({"params": p}, *args, deterministic=False, rngs=rngs)[0] * w)

    g = jax.grad(loss(ours))(params)
    g_ref = jax.grad(loss(ref))(params)
    leaves = jax.tree_util.tree_leaves_with_path(g)
    ref_leaves = jax.tree_util.tree_leaves(g_ref)
    assert len(leaves) == len(ref_leaves) == 6  # query, key, value: kernel and bias
    scale = max(float(jnp.abs(x).max()) for x in ref_leaves)
    for (path, a), b in zip(leaves, ref_leaves):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:  # softmax ignores a per-query constant: this gradient is 0
            assert float(jnp.abs(a).max()) < 1e-6 * scale and float(jnp.abs(b).max()) < 1e-6 * scale
            continue
        assert rel_err(a, b) < 1e-5, name


def test_blockwise_attention_equals_the_full_one(monkeypatch):
    """The CPU blockwise path ("auto" on CPU for T a larger multiple of the block) against the full one,
    forward and gradients, on a padded batch; with a block of 4 queries, T=8 runs two blocks."""
    from mobilebert_jax.model import attention

    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)
    cfg = MobileBertConfig(**TINY)
    rs = np.random.RandomState(2)
    b, t = 3, 8
    qk = jnp.asarray(rs.randn(b, t, cfg.true_hidden_size), jnp.float32)
    v_in = jnp.asarray(rs.randn(b, t, cfg.hidden_size), jnp.float32)
    mask = np.ones((b, t), np.int32)
    mask[1, 3:] = 0  # padding reaching into the first block
    mask[2, 6:] = 0
    args = (qk, qk, v_in, attention_bias(jnp.asarray(mask)))
    blockwise = MobileBertSelfAttention(cfg)  # "auto"
    full = MobileBertSelfAttention(cfg, attention_implementation="default")
    params = full.init(jax.random.key(0), *args)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.asarray(rs.randn(*p.shape), p.dtype), params)
    run = jax.jit(lambda m, p: m.apply({"params": p}, *args), static_argnums=0)
    assert "while" in jax.jit(lambda p: blockwise.apply({"params": p}, *args)[0]).lower(params).as_text()
    assert "while" not in jax.jit(lambda p: full.apply({"params": p}, *args)[0]).lower(params).as_text()
    ctx, probs = run(blockwise, params)
    ctx_ref, probs_ref = run(full, params)
    assert rel_err(ctx, ctx_ref) < 1e-6 and rel_err(probs, probs_ref) < 1e-6
    w = jnp.asarray(rs.randn(b, t, cfg.true_hidden_size), jnp.float32)

    def loss(module):
        return lambda p: jnp.sum(module.apply({"params": p}, *args)[0] * w)

    g = jax.tree_util.tree_leaves_with_path(jax.grad(loss(blockwise))(params))
    g_ref = jax.tree_util.tree_leaves(jax.grad(loss(full))(params))
    # Compared at the gradients' scale: the key bias's gradient is 0 in exact math (softmax ignores a
    # shift shared by all keys), so on both sides it is rounding noise with no scale of its own.
    scale = max(float(jnp.abs(x).max()) for x in g_ref)
    for (path, a), r in zip(g, g_ref):
        assert float(jnp.abs(a - r).max()) < 1e-5 * scale, jax.tree_util.keystr(path)
    # Attention dropout active: the full path (dropout masks are drawn over the whole [B, N, T, T]),
    # so "auto" draws the same masks as "default".
    drop = MobileBertSelfAttention(MobileBertConfig(**dict(TINY, attention_probs_dropout_prob=0.3)))
    rngs = {"dropout": jax.random.key(1)}

    def dropped(m):
        return jax.jit(lambda p: m.apply({"params": p}, *args, deterministic=False, rngs=rngs)[0])(params)

    out = dropped(drop)
    assert rel_err(out, ctx_ref) > 1e-2  # dropout acted
    np.testing.assert_array_equal(out, dropped(drop.clone(attention_implementation="default")))
