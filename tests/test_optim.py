"""Optimizers against their references: torch.optim.AdamW + HF's schedule, google's TF LAMB/AdamW code."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from mobilebert_jax import MobileBertConfig, MobileBertForPreTraining
from mobilebert_jax.training import optim
from mobilebert_jax.training import state as ts
from mobilebert_jax.training.optim import path_str


def _params(seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    return {
        "dense": {"kernel": f(6, 5), "bias": f(5)},
        "LayerNorm": {"weight": f(5), "bias": f(5)},  # NoNorm names
        "ln": {"LayerNorm": {"scale": f(5), "bias": f(5)}},
        "emb": {"embedding": f(7, 3)},
        "zero": {"kernel": np.zeros((3, 2), np.float32)},  # trust ratio must fall back to 1
    }


def _grads(steps, seed=1):
    r = np.random.default_rng(seed)
    p = _params()
    # step 0 has a large gradient so the global-norm clip is active at least once
    return [
        jax.tree.map(
            lambda x, i=i: (r.normal(size=x.shape) * (5.0 if i == 0 else 0.05)).astype(np.float32), p
        )
        for i in range(steps)
    ]


def _run(tx, params, grads):
    state = jax.jit(tx.init)(params)
    upd = jax.jit(tx.update)
    for g in grads:
        u, state = upd(g, state, params)
        params = jax.tree.map(lambda p, d: p + d, params, u)
    return params


def test_decay_mask_on_model_names():
    cfg = MobileBertConfig.from_preset("mobilebert-test")
    init = ts.model_init_fn(MobileBertForPreTraining(cfg), {"input_ids": np.ones((1, 8), np.int32)})
    params = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0)))["params"]
    mask = {path_str(p): m for p, m in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    lay = "mobilebert/encoder/layer/0/"
    assert (
        mask[lay + "attention/self/query/kernel"] and mask["mobilebert/embeddings/word_embeddings/embedding"]
    )
    assert mask["cls/predictions/dense/weight"]  # a matrix named `weight`, not under a norm
    assert not mask[lay + "attention/self/query/bias"] and not mask["cls/predictions/bias"]
    assert not mask[lay + "output/LayerNorm/weight"] and not mask[lay + "output/LayerNorm/bias"]  # NoNorm
    assert not mask["cls/predictions/transform/LayerNorm/scale"]  # real LayerNorm
    n_off = sum(not v for v in mask.values())
    assert n_off == sum(k.endswith("bias") or "/LayerNorm/" in k for k in mask)


def test_adamw_matches_torch_adamw_with_hf_schedule():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    steps, warmup, lr, wd = 6, 2, 1e-2, 0.01
    params, grads = _params(), _grads(steps)
    sched = optim.warmup_linear_decay(lr, steps, warmup)
    ours = _run(optim.adamw(sched, weight_decay=wd), params, grads)

    mask = {path_str(p): m for p, m in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    tp = {
        path_str(p): torch.tensor(np.asarray(x), requires_grad=True)
        for p, x in jax.tree_util.tree_leaves_with_path(params)
    }
    groups = [
        {"params": [tp[k] for k in tp if mask[k]], "weight_decay": wd},
        {"params": [tp[k] for k in tp if not mask[k]], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)
    tsched = transformers.get_linear_schedule_with_warmup(opt, warmup, steps)
    for g in grads:
        flat = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(g)}
        for k, t in tp.items():
            t.grad = torch.tensor(flat[k])
        torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0)
        opt.step()
        tsched.step()
    for p, x in jax.tree_util.tree_leaves_with_path(ours):
        ref = tp[path_str(p)].detach().numpy()
        np.testing.assert_allclose(np.asarray(x), ref, rtol=2e-6, atol=2e-7, err_msg=path_str(p))


def _tf_reference(params, grads, lr_fn, wd, trust_ratio, clip=1.0, b1=0.9, b2=0.999, eps=1e-6):
    """google-research mobilebert/lamb_optimizer.py + optimization.py (AdamWeightDecay when not trust_ratio),
    in float64 numpy: tf.clip_by_global_norm, then per variable m/(sqrt(v)+eps) (no bias correction)."""
    p = {path_str(k): np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    excluded = lambda name: any(s in name for s in ("LayerNorm", "layer_norm", "bias"))  # noqa: E731
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, g in enumerate(grads):
        g = {path_str(k): np.asarray(x, np.float64) for k, x in jax.tree_util.tree_leaves_with_path(g)}
        norm = np.sqrt(sum((x**2).sum() for x in g.values()))
        g = {k: x * clip / max(norm, clip) for k, x in g.items()}
        lr = lr_fn(step)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = m[k] / (np.sqrt(v[k]) + eps)
            if not excluded(k):
                u = u + wd * p[k]
            ratio = 1.0
            if trust_ratio and not excluded(k):
                wn, un = np.linalg.norm(p[k]), np.linalg.norm(u)
                ratio = wn / un if (wn > 0 and un > 0) else 1.0
            p[k] = p[k] - ratio * lr * u
    return p


def _tf_lr(init_lr, total, warmup, end_rate):
    """tf.train.polynomial_decay(power=1, end = init*end_rate) overridden by linear warmup."""

    def lr(step):
        decayed = (init_lr - init_lr * end_rate) * (1 - min(step, total) / total) + init_lr * end_rate
        return init_lr * step / warmup if step < warmup else decayed

    return lr


@pytest.mark.parametrize("kind", ["lamb", "adamw_tf"])
def test_lamb_and_tf_adamw_match_google_code(kind):
    steps, warmup, lr, wd = 6, 2, 1.5e-3, 0.01
    params, grads = _params(), _grads(steps)
    sched = optim.warmup_linear_decay(lr, steps, warmup, end_value=lr * 1e-4, decay_from_zero=True)
    tf_lr = _tf_lr(lr, steps, warmup, 1e-4)
    np.testing.assert_allclose(
        [float(sched(i)) for i in range(steps + 2)], [tf_lr(i) for i in range(steps + 2)], rtol=1e-6
    )
    if kind == "lamb":
        tx = optim.lamb(sched, weight_decay=wd)
    else:
        tx = optim.adamw(sched, weight_decay=wd, bias_correction=False)
    ours = _run(tx, params, grads)
    ref = _tf_reference(params, grads, tf_lr, wd, trust_ratio=kind == "lamb")
    for p, x in jax.tree_util.tree_leaves_with_path(ours):
        np.testing.assert_allclose(np.asarray(x), ref[path_str(p)], rtol=1e-5, atol=1e-7, err_msg=path_str(p))
    # the zero-initialised kernel moved (trust ratio fell back to 1 instead of 0)
    assert np.abs(np.asarray(ours["zero"]["kernel"])).max() > 0


def test_schedule_hf_shape_and_errors():
    s = optim.warmup_linear_decay(1.0, 10, 4)
    np.testing.assert_allclose([float(s(i)) for i in (0, 2, 4, 7, 10, 12)], [0, 0.5, 1, 0.5, 0, 0], atol=1e-7)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.warmup_linear_decay(1.0, 10, 11)


def test_layer_gate_trains_only_one_layer():
    cfg = MobileBertConfig.from_preset("mobilebert-test")
    model = MobileBertForPreTraining(cfg)
    init = ts.model_init_fn(model, {"input_ids": np.ones((1, 8), np.int32)})
    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0)))["params"]
    r = np.random.default_rng(0)
    params = jax.tree.map(lambda x: r.normal(size=x.shape).astype(np.float32), shapes)
    labels = optim.layer_labels(params, layer=1)
    flat = {path_str(p): lab for p, lab in jax.tree_util.tree_leaves_with_path(labels)}
    assert {k for k, v in flat.items() if v == "train"} == {k for k in flat if "/encoder/layer/1/" in k}
    tx = optim.lamb(1e-2, trainable_labels=labels)
    grads = jax.tree.map(lambda x: np.full_like(x, 0.1), params)
    state = jax.jit(tx.init)(params)
    upd, _ = jax.jit(tx.update)(grads, state, params)
    new = jax.tree.map(np.add, params, upd)
    for p, a in jax.tree_util.tree_leaves_with_path(new):
        b = params
        for k in p:
            b = b[k.key]
        moved = not np.array_equal(np.asarray(a), np.asarray(b))
        assert moved == ("/encoder/layer/1/" in "/" + path_str(p)), path_str(p)
    # frozen params keep no optimizer state (mu/nu only for the trained layer)
    n_state = sum(x.size for x in jax.tree.leaves(state))
    n_train = sum(
        x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if flat[path_str(p)] == "train"
    )
    assert n_state == 2 * n_train
    with pytest.raises(ValueError, match=r"layer 7 not in params \(encoder layers found: \[0, 1\]\)"):
        optim.layer_labels(params, layer=7)
    scanned = {"mobilebert": {"encoder": {"layer": {"attention": {"kernel": np.zeros((2, 3, 3))}}}}}
    with pytest.raises(ValueError, match="scan_layers=False"):
        optim.layer_labels(scanned, layer=0)
