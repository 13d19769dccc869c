"""IB-BERT teacher vs an independent numpy forward; bf16 compute; HF loss rules; dropout."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, perturbed_hf_model, rel_err
from scipy.special import erf

from mobilebert_jax import MODEL_CLASSES, MobileBertConfig, init_params
from mobilebert_jax.checkpoints.pytorch import from_pytorch


# ------------------------------------------------------------------ numpy reference (REFERENCE §2)
def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _lin(p, x):
    return x @ p["kernel"] + p["bias"]


def numpy_teacher_forward(p, cfg, ids, mask, tt):
    """Plain numpy forward of a layer_norm + gelu, kq-not-shared, I != H model (the IB-BERT teacher),
    written from REFERENCE.md §2.1-2.3 with PT's eps quirk; float64 throughout."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    e = p["embeddings"]
    x = e["word_embeddings"]["embedding"][ids]
    B, T, E = x.shape
    z = np.zeros((B, 1, E))
    x = np.concatenate([np.concatenate([x[:, 1:], z], 1), x, np.concatenate([z, x[:, :-1]], 1)], -1)
    h = _lin(e["embedding_transformation"], x)
    h = (
        h
        + e["position_embeddings"]["embedding"][np.arange(T)][None]
        + e["token_type_embeddings"]["embedding"][tt]
    )
    h = _ln(h, e["LayerNorm"]["scale"], e["LayerNorm"]["bias"], 1e-5)
    bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min)
    gelu = lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2)))  # noqa: E731
    N, I = cfg.num_attention_heads, cfg.true_hidden_size  # noqa: E741
    d = I // N
    eps = cfg.layer_norm_eps
    for i in range(cfg.num_hidden_layers):
        L = p["encoder"]["layer"][str(i)]
        bi = L["bottleneck"]["input"]
        li = _ln(_lin(bi["dense"], h), bi["LayerNorm"]["scale"], bi["LayerNorm"]["bias"], eps)
        s = L["attention"]["self"]
        q, k, v = (_lin(s[n], h).reshape(B, T, N, d).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        pr = sc / sc.sum(-1, keepdims=True)
        ctx = (pr @ v).transpose(0, 2, 1, 3).reshape(B, T, I)
        ao = L["attention"]["output"]
        a = _ln(_lin(ao["dense"], ctx) + li, ao["LayerNorm"]["scale"], ao["LayerNorm"]["bias"], eps)
        m = gelu(_lin(L["intermediate"]["dense"], a))
        o = L["output"]
        o1 = _ln(_lin(o["dense"], m) + a, o["LayerNorm"]["scale"], o["LayerNorm"]["bias"], 1e-5)
        ob = o["bottleneck"]
        h = _ln(_lin(ob["dense"], o1) + h, ob["LayerNorm"]["scale"], ob["LayerNorm"]["bias"], eps)
    return h


def _perturb(params, seed=0, scale=0.1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_ibbert_teacher_matches_independent_numpy_forward():
    teacher = MobileBertConfig.from_preset(
        "ibbert-large-teacher",
        vocab_size=99,
        embedding_size=16,
        hidden_size=32,
        intra_bottleneck_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=32,
    )
    assert not teacher.hf_compatible  # HF crashes on exactly this (REFERENCE §0.9)
    model = MODEL_CLASSES["MobileBertModel"](teacher)
    params = _perturb(init_params(model))
    q = params["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
    assert q.shape == (32, 64)  # q/k/v read the H-wide stream and project H -> I
    rs = np.random.RandomState(0)
    ids = rs.randint(1, 99, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, 5:] = 0
    tt = (np.arange(9) >= 4).astype(np.int64)[None].repeat(2, 0)
    ours = model.apply(
        {"params": params}, input_ids=ids, attention_mask=mask, token_type_ids=tt
    ).last_hidden_state
    ref = numpy_teacher_forward(params, teacher, ids, mask, tt)
    assert rel_err(ours, ref) < 1e-5


def test_full_size_teacher_builds():
    cfg = MobileBertConfig.from_preset("ibbert-large-teacher")
    shapes = jax.eval_shape(
        lambda: MODEL_CLASSES["MobileBertModel"](cfg, scan_layers=True).init(
            jax.random.key(0), input_ids=jnp.ones((1, 8), jnp.int32)
        )
    )
    n = sum(np.prod(x.shape) for x in jax.tree.leaves(flax.linen.meta.unbox(shapes)))
    assert 287e6 < n < 299e6, n  # the paper's IB-BERT-LARGE has 293M parameters (we count 294.2M)


def test_bf16_compute_full_size_is_finite_and_close():
    cfg = MobileBertConfig()
    pt = perturbed_hf_model(cfg, "MobileBertForPreTraining", scale=0.02)
    params = from_pytorch(pt.state_dict(), cfg, "MobileBertForPreTraining", scan_layers=True)
    rs = np.random.RandomState(0)
    ids = rs.randint(1, cfg.vocab_size, (2, 64))
    mask = np.ones_like(ids)
    mask[1, 40:] = 0
    f32 = MODEL_CLASSES["MobileBertForPreTraining"](cfg, scan_layers=True)
    bf16 = MODEL_CLASSES["MobileBertForPreTraining"](cfg, dtype=jnp.bfloat16, scan_layers=True)
    a = jax.jit(lambda p: f32.apply({"params": p}, input_ids=ids, attention_mask=mask))(params)
    b = jax.jit(
        lambda p: bf16.apply({"params": p}, input_ids=ids, attention_mask=mask, output_hidden_states=True)
    )(params)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(b))
    err = rel_err(b.prediction_logits, a.prediction_logits)
    print(f"bf16 vs f32 relative error: prediction_logits {err:.2e}")
    assert b.prediction_logits.dtype == jnp.float32 and err < 5e-2


# ------------------------------------------------------------------ loss rules (HF as reference)
torch = pytest.importorskip("torch", reason="torch is the test reference")


@pytest.mark.parametrize(
    "num_labels, labels",
    [
        (1, np.array([0.5, -1.0, 2.0], np.float32)),  # regression
        (3, np.array([0, 2, 1], np.int64)),  # single-label
        (3, np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0]], np.float32)),  # multi-label
    ],
)
def test_sequence_classification_problem_types(num_labels, labels):
    cfg = MobileBertConfig(**{**TINY, "num_labels": num_labels})
    pt = perturbed_hf_model(cfg, "MobileBertForSequenceClassification")
    params = from_pytorch(pt.state_dict(), cfg, "MobileBertForSequenceClassification")
    ids = np.random.RandomState(1).randint(1, 99, (3, 7))
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(ids), labels=torch.tensor(labels)).loss.item()
    ours = (
        MODEL_CLASSES["MobileBertForSequenceClassification"](cfg)
        .apply({"params": params}, input_ids=ids, labels=labels)
        .loss
    )
    assert abs(float(ours) - ref) <= 1e-5 * abs(ref)


def test_losses_with_nothing_to_count_are_nan_like_pytorch():
    cfg = MobileBertConfig(**{**TINY, "num_labels": 2})
    model = MODEL_CLASSES["MobileBertForQuestionAnswering"](cfg)
    params = init_params(model)
    ids = np.ones((2, 6), np.int32)
    out = model.apply(
        {"params": params}, input_ids=ids, start_positions=np.array([9, 6]), end_positions=np.array([7, 8])
    )
    assert np.isnan(float(out.loss))  # every position clamped to T and ignored
    with pytest.raises(ValueError, match="num_labels=2"):
        MODEL_CLASSES["MobileBertForQuestionAnswering"](cfg.replace(num_labels=3)).init(
            jax.random.key(0), input_ids=ids
        )


def test_dropout_is_active_only_in_training_and_reproducible():
    cfg = MobileBertConfig(**{**TINY, "hidden_dropout_prob": 0.1})
    model = MODEL_CLASSES["MobileBertForSequenceClassification"](cfg)
    params = init_params(model)
    ids = np.random.RandomState(0).randint(1, 99, (2, 8))

    def run(det, seed):
        return model.apply(
            {"params": params},
            input_ids=ids,
            deterministic=det,
            rngs={"dropout": jax.random.key(seed)},
        ).logits

    np.testing.assert_array_equal(run(True, 0), run(True, 1))
    np.testing.assert_array_equal(run(False, 0), run(False, 0))
    assert not np.array_equal(run(False, 0), run(False, 1))
