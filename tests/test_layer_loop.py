"""The layer loops over HF's `layer/{i}` params: one scan over them stacked inside `apply`
(`unroll_layers=False`), unrolled (`unroll_layers=True`), the default's choice by input size
(`unroll_layers=None`), and the stacked layout (`scan_layers=True`).

The HF parity of the default path is tests/test_parity.py's (all of it runs the default); here: the
ways give the same numbers, the same param tree, the default picks the loop it documents, and bad trees
fail with a clear message.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, rel_err
from flax.traverse_util import flatten_dict

from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
from mobilebert_jax.checkpoints.pytorch import loop_to_scan
from mobilebert_jax.model.encoder import AUTO_UNROLL_MAX_TOKENS

CLS = MODEL_CLASSES["MobileBertForSequenceClassification"]
CFG = MobileBertConfig(**{**TINY, "num_hidden_layers": 3, "hidden_dropout_prob": 0.1})


def _batch():
    rs = np.random.RandomState(0)
    ids = jnp.asarray(rs.randint(1, CFG.vocab_size, (2, 12)), jnp.int32)
    mask = jnp.asarray(np.array([[1] * 12, [1] * 8 + [0] * 4]), jnp.int32)
    return ids, mask, jnp.array([0, 2], jnp.int32)


def _params():
    ids, _, _ = _batch()
    p = nn.meta.unbox(jax.jit(CLS(CFG).init)(jax.random.key(0), ids)["params"])
    # NoNorm weights != 1 and biases != 0, so that every layer's params matter
    rs = np.random.RandomState(1)
    return jax.tree.map(lambda x: x + 0.05 * rs.standard_normal(x.shape).astype(np.float32), p)


def test_same_tree_and_init_as_unrolled():
    ids, _, _ = _batch()
    a = jax.jit(CLS(CFG).init)(jax.random.key(0), ids)["params"]
    b = jax.jit(CLS(CFG, unroll_layers=True).init)(jax.random.key(0), ids)["params"]
    fa, fb = flatten_dict(nn.meta.unbox(a)), flatten_dict(nn.meta.unbox(b))
    assert fa.keys() == fb.keys()
    assert ("mobilebert", "encoder", "layer", "2", "attention", "self", "query", "kernel") in fa
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_outputs_and_grads_match_unrolled_and_stacked():
    ids, mask, labels = _batch()
    p = _params()

    def run(model, params):
        out = model.apply(
            {"params": params}, ids, attention_mask=mask, output_hidden_states=True, output_attentions=True
        )
        grads = jax.grad(lambda q: model.apply({"params": q}, ids, attention_mask=mask, labels=labels).loss)(
            params
        )
        return out, grads

    ref, g_ref = jax.jit(lambda q: run(CLS(CFG, unroll_layers=True), q))(p)
    scan = dict(unroll_layers=False)
    models = (
        (CLS(CFG), p),
        (CLS(CFG, **scan), p),
        (CLS(CFG, remat=True, **scan), p),
        (CLS(CFG, scan_layers=True), None),
    )
    for model, params in models:
        stacked = params is None
        out, g = jax.jit(lambda q, m=model: run(m, q))(loop_to_scan(p) if stacked else params)
        assert rel_err(out.logits, ref.logits) < 1e-5
        for a, b in zip(out.hidden_states + out.attentions, ref.hidden_states + ref.attentions, strict=True):
            assert rel_err(a, b) < 1e-5
        if stacked:
            continue
        fg, fr = flatten_dict(g), flatten_dict(g_ref)
        assert fg.keys() == fr.keys()
        for k in fr:
            if np.abs(fr[k]).max() > 1e-12:  # key biases: mathematically zero (softmax shift)
                assert rel_err(fg[k], fr[k]) < 1e-3, k


def test_dropout_is_per_layer_and_reproducible():
    ids, mask, _ = _batch()
    p = _params()
    m = CLS(CFG, unroll_layers=False)

    @jax.jit
    def f(rng):
        drop = m.apply({"params": p}, ids, attention_mask=mask, deterministic=False, rngs={"dropout": rng})
        return drop.logits, m.apply({"params": p}, ids, attention_mask=mask).logits

    (a, det), (b, _), (c, _) = f(jax.random.key(1)), f(jax.random.key(1)), f(jax.random.key(2))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, det)


def test_missing_layer_is_named():
    ids, _, _ = _batch()
    p = _params()
    del p["mobilebert"]["encoder"]["layer"]["1"]
    with pytest.raises(ValueError, match=r"layer\(s\) \['1'\] of num_hidden_layers=3"):
        jax.jit(lambda q: CLS(CFG, unroll_layers=False).apply({"params": q}, ids))(p)


def _has_scan(model, p, ids) -> bool:
    jaxpr = jax.make_jaxpr(lambda q: model.apply({"params": q}, ids).logits)(p)
    return " scan[" in str(jaxpr)


def test_default_unrolls_small_inputs_and_scans_large_ones():
    p = _params()
    rs = np.random.RandomState(3)
    n = AUTO_UNROLL_MAX_TOKENS
    at, over = (
        jnp.asarray(rs.randint(1, CFG.vocab_size, (b, 16)), jnp.int32) for b in (n // 16, n // 16 + 1)
    )
    assert not _has_scan(CLS(CFG), p, at) and _has_scan(CLS(CFG), p, over)
    assert _has_scan(CLS(CFG, unroll_layers=False), p, at) and not _has_scan(
        CLS(CFG, unroll_layers=True), p, over
    )
    for ids in (at, over):
        auto = jax.jit(lambda q, x: CLS(CFG).apply({"params": q}, x).logits)(p, ids)
        unrolled = jax.jit(lambda q, x: CLS(CFG, unroll_layers=True).apply({"params": q}, x).logits)(p, ids)
        scanned = jax.jit(lambda q, x: CLS(CFG, unroll_layers=False).apply({"params": q}, x).logits)(p, ids)
        assert rel_err(auto, unrolled) < 1e-5 and rel_err(auto, scanned) < 1e-5


def test_eager_apply_runs_unrolled_and_matches():
    ids, mask, _ = _batch()
    p = _params()
    eager = CLS(CFG).apply({"params": p}, ids, attention_mask=mask).logits
    jitted = jax.jit(lambda q: CLS(CFG).apply({"params": q}, ids, attention_mask=mask).logits)(p)
    assert rel_err(eager, jitted) < 1e-5
