"""Knowledge transfer (issue 8): each loss against numpy, the layer gate, resume, paper-scale compile."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import MobileBertConfig, MobileBertForPreTraining, init_params
from mobilebert_jax.distill import objectives as D
from mobilebert_jax.distill import run as R
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.optim import path_str
from mobilebert_jax.training.state import abstract_train_state, model_init_fn, restore_checkpoint
from mobilebert_jax.training.trainer import ArrayIterator

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------- numpy
def np_ln(x, eps=1e-12):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def masked_probs(scores, key_mask):
    """Softmax over keys with masked keys at exactly 0 ([B, N, T, T] from [B, T] mask)."""
    s = np.where(key_mask[:, None, None, :] > 0, scores, -np.inf)
    return np_softmax(s)


def _hidden(b=3, t=5, h=8, scale=3.0):
    return (RNG.normal(size=(b, t, h)) * scale + 1.0).astype(np.float32)


MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], np.int32)


# ------------------------------------------------------------------------------------------- losses
def test_feature_map_transfer_matches_numpy():
    t, s = _hidden(), _hidden()
    got_s, got_n = D.feature_map_transfer(jnp.asarray(t), jnp.asarray(s), jnp.asarray(MASK))
    w = MASK[..., None].astype(np.float64)
    ref = ((np_ln(t) - np_ln(s)) ** 2 * w).sum()
    np.testing.assert_allclose(float(got_s), ref, rtol=1e-5)
    assert float(got_n) == MASK.sum() * 8
    # no mask: the mean over all tokens is tf.losses.mean_squared_error of the normalised states
    s2, n2 = D.feature_map_transfer(jnp.asarray(t), jnp.asarray(s))
    np.testing.assert_allclose(float(s2 / n2), ((np_ln(t) - np_ln(s)) ** 2).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="equal shapes"):
        D.feature_map_transfer(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 4)))


def test_attention_transfer_matches_numpy_with_masked_keys():
    b, n, t = 3, 2, 5
    pt = masked_probs(RNG.normal(size=(b, n, t, t)) * 2, MASK)
    ps = masked_probs(RNG.normal(size=(b, n, t, t)) * 2, MASK)
    assert (pt == 0).any()  # masked keys are exact zeros, as our models return them
    live = pt > 0
    kl_rows = np.where(live, pt * (np.log(np.where(live, pt, 1)) - np.log(np.where(live, ps, 1))), 0).sum(-1)
    ce_rows = np.where(live, -pt * np.log(np.where(live, ps, 1)), 0).sum(-1)
    w = np.broadcast_to(MASK[:, None, :], kl_rows.shape)
    for form, rows in (("kl", kl_rows), ("cross_entropy", ce_rows)):
        s, cnt = D.attention_transfer(
            jnp.asarray(pt, jnp.float32), jnp.asarray(ps, jnp.float32), jnp.asarray(MASK), form
        )
        np.testing.assert_allclose(float(s), (rows * w).sum(), rtol=1e-5)
        assert float(cnt) == w.sum()
    s, _ = D.attention_transfer(jnp.asarray(pt, jnp.float32), jnp.asarray(pt, jnp.float32), jnp.asarray(MASK))
    assert abs(float(s)) < 1e-5  # KL(p||p) = 0

    # through the model's own masking (finfo.min bias): finite value and finite gradient
    bias = jnp.where(jnp.asarray(MASK)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
    t_scores = jnp.asarray(RNG.normal(size=(b, n, t, t)), jnp.float32)

    def loss(scores):
        sp = jax.nn.softmax(scores + bias, -1)
        tp = jax.nn.softmax(t_scores + bias, -1)
        s, c = D.attention_transfer(tp, sp, jnp.asarray(MASK))
        return s / c

    val, grad = jax.value_and_grad(loss)(jnp.asarray(RNG.normal(size=(b, n, t, t)), jnp.float32))
    assert np.isfinite(float(val)) and np.isfinite(np.asarray(grad)).all()
    assert not np.asarray(grad)[2, :, :, 2:].any()  # masked keys get no gradient


def test_mean_and_variance_transfer_match_numpy():
    t, s = _hidden(scale=5.0), _hidden(scale=2.0)
    w = MASK.astype(np.float64)
    mt, ms = t.astype(np.float64).mean(-1), s.astype(np.float64).mean(-1)
    vt, vs = t.astype(np.float64).var(-1), s.astype(np.float64).var(-1)
    got, n = D.mean_transfer(jnp.asarray(t), jnp.asarray(s), jnp.asarray(MASK))
    np.testing.assert_allclose(float(got), ((mt - ms) ** 2 * w).sum(), rtol=1e-5)
    got, n2 = D.variance_transfer(jnp.asarray(t), jnp.asarray(s), jnp.asarray(MASK))
    np.testing.assert_allclose(float(got), (np.abs(vt - vs) * w).sum(), rtol=1e-5)
    assert float(n) == float(n2) == MASK.sum()


@pytest.mark.parametrize("ratio,temp", [(0.5, 1.0), (0.3, 2.0), (1.0, 1.0)])
def test_distill_mlm_matches_numpy(ratio, temp):
    v = 11
    sl, tl = RNG.normal(size=(2, 4, v)) * 2, RNG.normal(size=(2, 4, v)) * 2
    labels = np.array([[3, -100, 7, 0], [-100, -100, 10, 1]])
    logp = np.log(np_softmax(sl))
    onehot = np.eye(v)[np.where(labels >= 0, labels, 0)]
    target = ratio * onehot + (1 - ratio) * np_softmax(tl / temp)
    per = -(target * logp).sum(-1)
    s, n = D.distill_mlm(
        jnp.asarray(sl, jnp.float32), jnp.asarray(labels), jnp.asarray(tl, jnp.float32), ratio, temp
    )
    np.testing.assert_allclose(float(s), per[labels >= 0].sum(), rtol=1e-5)
    assert float(n) == (labels >= 0).sum()


def test_layer_terms_scale_by_factor_over_layers_and_transfer_schedule():
    L, b, t, h, n = 3, 3, 5, 8, 2

    def hs():
        return tuple(jnp.asarray(_hidden(b, t, h)) for _ in range(L + 1))

    def at():
        return tuple(
            jnp.asarray(masked_probs(RNG.normal(size=(b, n, t, t)), MASK), jnp.float32) for _ in range(L)
        )

    T = types.SimpleNamespace(hidden_states=hs(), attentions=at())
    S = types.SimpleNamespace(hidden_states=hs(), attentions=at())
    f = D.TransferFactors(
        hidden_distill_factor=100.0,
        attention_distill_factor=1.0,
        beta_distill_factor=5000.0,
        gamma_distill_factor=5.0,
    )
    m = jnp.asarray(MASK)
    sums, counts, _ = D.layer_transfer_terms(T, S, m, [1], L, f)
    fm = D.feature_map_transfer(T.hidden_states[2], S.hidden_states[2], m)
    np.testing.assert_allclose(
        float(sums["feature_map"] / counts["feature_map"]), 100 / L * float(fm[0] / fm[1]), rtol=1e-6
    )
    at1 = D.attention_transfer(T.attentions[1], S.attentions[1], m)
    np.testing.assert_allclose(
        float(sums["attention"] / counts["attention"]), float(at1[0] / at1[1]) / L, rtol=1e-6
    )
    mv = D.mean_transfer(T.hidden_states[2], S.hidden_states[2], m)
    np.testing.assert_allclose(
        float(sums["mean"] / counts["mean"]), 5000 / L * float(mv[0] / mv[1]), rtol=1e-6
    )
    # all layers: the average over layers (TF1 with every gate open)
    sums, counts, _ = D.layer_transfer_terms(T, S, m, range(L), L, f)
    per = [D.feature_map_transfer(T.hidden_states[k + 1], S.hidden_states[k + 1], m) for k in range(L)]
    np.testing.assert_allclose(
        float(sums["feature_map"] / counts["feature_map"]),
        100 * np.mean([float(s / c) for s, c in per]),
        rtol=1e-6,
    )
    # TF1 background lr: min(polynomial_decay(1 -> 0.9, power 0.5), polynomial_decay(0 -> 10, power 1))
    sched = D.transfer_schedule(1e-3, 100)
    for step in (0, 1, 5, 10, 11, 50, 99, 100):
        frac = step / 100
        ref = 3e-3 * min((1.0 - 0.9) * (1 - frac) ** 0.5 + 0.9, (0.0 - 10.0) * (1 - frac) + 10.0)
        np.testing.assert_allclose(float(sched(step)), ref, rtol=1e-6)


# ------------------------------------------------------------------------------------- tiny models
STUDENT = MobileBertConfig.from_preset("mobilebert-test", num_hidden_layers=2)
TEACHER = MobileBertConfig.from_preset(
    "ibbert-large-teacher",
    vocab_size=1000,
    embedding_size=16,
    hidden_size=64,
    num_hidden_layers=2,
    intra_bottleneck_size=128,
    intermediate_size=128,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
)


def _data(n=32, t=16, seed=0):
    r = np.random.default_rng(seed)
    ids = r.integers(5, 1000, (n, t)).astype(np.int32)
    mask = (np.arange(t)[None] < r.integers(8, t + 1, n)[:, None]).astype(np.int32)
    ids *= mask
    labels = np.where((r.random((n, t)) < 0.2) & (mask > 0), ids, -100).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "labels": labels,
        "next_sentence_label": r.integers(0, 2, n).astype(np.int32),
    }


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Persistent XLA cache for this module: the resumed run recompiles the uninterrupted run's steps."""
    keys = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update(keys[1], 0)
    jax.config.update(keys[2], 0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def models():
    s, t = MobileBertForPreTraining(STUDENT), MobileBertForPreTraining(TEACHER)
    return s, t, jax.device_get(init_params(t, 1))


def test_copy_non_encoder_and_incompatible_configs(models):
    s, t, tp = models
    sp = jax.device_get(init_params(s, 0))
    out, rep = D.copy_non_encoder(sp, tp, STUDENT, TEACHER)
    flat = lambda p: {path_str(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(p)}  # noqa: E731
    fo, fs, ft = flat(out), flat(sp), flat(tp)
    for k in fo:
        if "/encoder/" in k or k.startswith("mobilebert/embeddings/LayerNorm/"):
            np.testing.assert_array_equal(fo[k], fs[k], err_msg=k)  # encoder and NoNorm embedding norm kept
        else:
            np.testing.assert_array_equal(fo[k], ft[k], err_msg=k)
    assert sorted(rep.kept) == [
        "mobilebert/embeddings/LayerNorm/bias",
        "mobilebert/embeddings/LayerNorm/weight",
    ]
    assert "mobilebert/embeddings/LayerNorm/scale" in rep.unused
    with pytest.raises(ValueError, match=r"hidden_size: student 64 vs teacher 96"):
        D.copy_non_encoder(sp, tp, STUDENT, TEACHER.replace(hidden_size=96))


def test_distill_loss_matches_numpy_on_model_logits(models):
    """The gathered-position MLM head equals the model's own logits; mixed targets as in numpy."""
    s, t, tp = models
    sp = init_params(s, 0)
    b = _data(4, 16, seed=3)
    loss = D.pretraining_distill_loss(s, t, 0.5, 2.0, max_predictions=6)
    sums, (counts, aux) = jax.jit(lambda p, q, bb: loss(p, q, bb, None, True))(sp, tp, b)
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    so = jax.jit(lambda p: s.apply({"params": p}, **inputs))(sp)
    to = jax.jit(lambda p: t.apply({"params": p}, **inputs))(tp)
    lab = b["labels"]
    keep = lab >= 0
    keep &= np.cumsum(keep, axis=1) <= 6  # the first 6 targets of each row
    sl, tl = (
        np.asarray(so.prediction_logits, np.float64)[keep],
        np.asarray(to.prediction_logits, np.float64)[keep],
    )
    onehot = np.eye(sl.shape[-1])[lab[keep]]
    ref = -((0.5 * onehot + 0.5 * np_softmax(tl / 2.0)) * np.log(np_softmax(sl))).sum()
    np.testing.assert_allclose(float(sums["mlm"]), ref, rtol=1e-5)
    assert float(counts["mlm"]) == keep.sum()
    nsp = np.log(np_softmax(np.asarray(so.seq_relationship_logits, np.float64)))
    np.testing.assert_allclose(
        float(sums["nsp"]), -nsp[np.arange(4), b["next_sentence_label"]].sum(), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(aux["mlm_true"][0]), -np.log(np_softmax(sl))[np.arange(len(sl)), lab[keep]].sum(), rtol=1e-5
    )


# ------------------------------------------------------------------ the gate, and resume (one run)
# Tiny programs: a cheaper LLVM pipeline halves the compile time and changes no number we check.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CFG = R.DistillConfig(
    steps_per_stage=3,
    distill_steps=3,
    warmup_steps=1,
    batch_size=8,
    max_seq_length=16,
    max_predictions_per_seq=6,
    checkpoint_every=2,
    log_every=1,
    seed=0,
)


def _run(models, out, **kw):
    s, t, tp = models
    return R.run_distillation(
        s,
        t,
        tp,
        ArrayIterator(_data(), CFG.batch_size, seed=1),
        CFG,
        str(out),
        progress=False,
        plot=False,
        say=lambda m: None,
        compiler_options=FAST,
        **kw,
    )


def _stage_params(models, out, name):
    s, t, _ = models
    stage = next(st for st in R.stage_plan(CFG, STUDENT.num_hidden_layers) if st.name == name)
    init_fn = model_init_fn(s, R.example_batch())
    abstract = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.key(0)))["params"]
    tx, _, _ = R.stage_setup(stage, s, t, abstract, CFG)
    target = abstract_train_state(init_fn, tx, jax.random.key(0))[0]
    state, _, step = restore_checkpoint(os.path.join(out, name, "checkpoints"), target)
    assert step == stage.steps
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state.params)}


@pytest.fixture(scope="module")
def full_run(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill_full")
    res = _run(models, out)
    return out, res


def test_layer_gate_changes_only_the_trained_layer(models, full_run):
    out, res = full_run
    assert res.stopped == "done" and res.step == 9
    s, _, tp = models
    init = nn.meta.unbox(jax.jit(model_init_fn(s, R.example_batch()))(jax.random.key(CFG.seed)))["params"]
    init, _ = D.copy_non_encoder(init, tp, STUDENT, TEACHER)
    before = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(init)}
    after0 = _stage_params(models, out, "transfer_00")
    after1 = _stage_params(models, out, "transfer_01")
    final = _stage_params(models, out, "distill")
    for a, b, layer in ((before, after0, 0), (after0, after1, 1)):
        moved = {k for k in a if not np.array_equal(a[k], b[k])}
        inside = {k for k in a if f"/encoder/layer/{layer}/" in k}
        assert moved <= inside, sorted(moved - inside)
        # every matrix of the layer moves (LAMB scales its step to the weight norm); a NoNorm scale
        # at 1.0 whose gradient is ~1e-10 at init may round back to 1.0, so only kernels are required
        assert {k for k in inside if k.endswith("kernel")} <= moved
    moved = {k for k in after1 if not np.array_equal(after1[k], final[k])}
    assert any("/encoder/layer/0/" in k for k in moved) and any(k.startswith("cls/") for k in moved)
    hist = res.histories["transfer_01"]
    assert {"feature_map_mse", "attention_kl", "mean_sq_diff", "variance_abs_diff"} <= set(hist[0])
    assert os.path.exists(os.path.join(out, "final_model", "config.json"))


def test_resume_mid_stage_equals_uninterrupted_run(models, full_run, tmp_path):
    out_full, res_full = full_run
    out = tmp_path / "run"
    # transfer_00 as the uninterrupted run left it (saves its recompute); then stop inside
    # transfer_01 (global step 4 = its step 1), and rerun the same command.
    shutil.copytree(out_full / "transfer_00", out / "transfer_00")
    res = _run(models, out, stop_at_step=4)
    assert res.stopped == "stopped" and res.step == 4
    assert R._latest_step(str(out / "transfer_01")) == 1
    res = _run(models, out)
    assert res.stopped == "done"
    full = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(res_full.params)}
    got = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(res.params)}
    for k in full:
        np.testing.assert_array_equal(got[k], full[k], err_msg=k)
    # a resume with other settings is refused
    with pytest.raises(ValueError, match="other settings"):
        s, t, tp = models
        R.run_distillation(
            s,
            t,
            tp,
            ArrayIterator(_data(), 8, seed=1),
            dataclasses.replace(CFG, distill_steps=5),
            str(out),
            progress=False,
            plot=False,
            say=lambda m: None,
        )
    shutil.rmtree(out)


def test_distills_from_a_prepared_folder(models, full_run, tmp_path):
    """The distillation phase reading a prepare-pretraining-data folder through Grain (the full run's
    distill-stage program, from the cache: no compile) finishes with finite losses, and each checkpoint
    holds the Grain position from which a resumed run reads on (a bit-exact resume of the command:
    test_pretraining_data.py's slow test; of `pretrain` through Grain after SIGKILL: its sigkill test)."""
    pytest.importorskip("grain", reason="grain is a dependency (pip install -e .)")
    import random

    from mobilebert_jax.tasks import pretraining_data as PD
    from mobilebert_jax.training.grain_data import prepared_iterator

    words = "the a of to and in film river city music game war king queen team school water light".split()
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + words)
    )
    r = random.Random(0)
    docs = [
        [" ".join(r.choices(words, k=r.randint(2, 9))) + "." for _ in range(r.randint(1, 5))]
        for _ in range(8)
    ]
    (tmp_path / "c.txt").write_text("".join("\n".join(d) + "\n\n" for d in docs))
    data = str(tmp_path / "data")
    m = PD.prepare_pretraining_data(
        [str(tmp_path / "c.txt")],
        data,
        tokenizer=str(tmp_path / "tok"),
        max_seq_length=CFG.max_seq_length,
        max_predictions_per_seq=CFG.max_predictions_per_seq,
        num_workers=0,
        progress=False,
    )
    assert (
        CFG.distill_steps * CFG.batch_size > m["num_instances"] > 2 * CFG.batch_size
    )  # step 3 crosses an epoch
    cfg = dataclasses.replace(CFG, steps_per_stage=0)  # the distillation phase only
    keys = ("input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label")

    def grain_data():
        return prepared_iterator(
            data,
            cfg.batch_size,
            seed=1,
            max_seq_length=cfg.max_seq_length,
            max_predictions_per_seq=cfg.max_predictions_per_seq,
            keys=keys,
        )

    s, t, tp = models
    it = grain_data()
    res = R.run_distillation(
        s,
        t,
        tp,
        it,
        cfg,
        str(tmp_path / "run"),
        progress=False,
        plot=False,
        say=lambda m: None,
        compiler_options=FAST,
    )
    it.close()
    assert res.stopped == "done" and res.step == cfg.distill_steps
    hist = res.histories["distill"]
    assert [h["step"] for h in hist] == [1, 2, 3] and np.isfinite([h["loss"] for h in hist]).all(), hist
    assert os.path.exists(tmp_path / "run" / "final_model" / "model.safetensors")
    # the step-2 checkpoint's data item: Grain's position; an iterator set to it reads the third batch
    import orbax.checkpoint as ocp

    from mobilebert_jax.training.state import checkpoint_manager

    mngr = checkpoint_manager(tmp_path / "run" / "distill" / "checkpoints")
    state, last = (
        dict(mngr.restore(k, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]) for k in (2, 3)
    )
    mngr.close()
    assert state["batches"] == 2 and last["batches"] == 3, (state, last)
    fresh, resumed = grain_data(), grain_data()
    resumed.set_state(state)
    third = [next(fresh) for _ in range(3)][-1]
    for k, v in next(resumed).items():
        np.testing.assert_array_equal(v, third[k], err_msg=k)
    fresh.close(), resumed.close()


# -------------------------------------------------------------------------- paper-scale compile
def _paper(stages, compile):
    sc, tc, cfg = R.preset_configs("paper")
    assert (cfg.steps_per_stage, cfg.distill_steps, cfg.batch_size, cfg.max_seq_length) == (
        10_000,
        500_000,
        2048,
        512,
    )
    assert (sc.num_hidden_layers, tc.intra_bottleneck_size, tc.intermediate_size) == (24, 1024, 4096)
    mesh = shd.make_mesh(data=1, fsdp=8, devices=jax.devices()[:8])
    rules = shd.logical_rules("fsdp", mesh, sc)
    return R.compile_report(
        sc, tc, cfg, mesh, rules, stages=stages, compile=compile, compiler_options=FAST
    ), tc


def _show(capsys, rep):
    with capsys.disabled():
        for name, row in rep.items():
            print(
                f"\npaper config {name}, 8-device FSDP mesh, per device: "
                + ", ".join(f"{k} {v / 2**30:.3f} GiB" for k, v in row.items())
            )


NEEDS_8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


@NEEDS_8
def test_paper_config_lowers_on_8_devices(capsys):
    """The whole distillation step (24+24 layers, batch 2048 x 512) lowers with shardings; sharded bytes."""
    rep, tc = _paper(("distill",), compile=False)
    row = rep["distill"]
    shapes = jax.eval_shape(model_init_fn(MobileBertForPreTraining(tc), R.example_batch()), jax.random.key(0))
    n_teacher = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes)["params"]))
    assert 280e6 < n_teacher < 310e6  # IB-BERT-large, ~293M
    # FSDP shards the teacher 8 ways; only the vocab tables (30522 rows, not divisible by 8) stay whole
    assert n_teacher * 4 / 8 < row["teacher"] < n_teacher * 4 / 8 + 80e6
    assert row["opt_state"] == pytest.approx(2 * row["params"], rel=0.01)  # LAMB mu, nu (+ counts)
    _show(capsys, rep)


@pytest.mark.slow
@NEEDS_8
def test_paper_config_compiles_with_memory_analysis(capsys):
    """XLA's buffer assignment for the last transfer stage and the distillation step (minutes on CPU)."""
    rep, _ = _paper(("transfer_23", "distill"), compile=True)
    for row in rep.values():
        if "peak" in row:
            assert row["temp"] > 0 and row["peak"] > row["params"] + row["teacher"]
    _show(capsys, rep)


def test_run_file_refuses_a_resume_on_other_data(tmp_path):
    """`distill_run.json` records the training data (size and sha256; the path is informative): a
    resume on other data is refused, the same data moved is accepted, and a record written before the
    data was recorded accepts any."""
    data = {"path": "/a/corpus.txt", "bytes": 10, "sha256": "aa"}
    R.check_run_file(str(tmp_path), R.run_record(CFG, STUDENT, TEACHER, data))
    R.check_run_file(str(tmp_path), R.run_record(CFG, STUDENT, TEACHER, {**data, "path": "/b/moved.txt"}))
    with pytest.raises(ValueError, match=r"holds a run with other settings \(data differ\)"):
        R.check_run_file(str(tmp_path), R.run_record(CFG, STUDENT, TEACHER, {**data, "sha256": "bb"}))
    old = tmp_path / "old"
    R.check_run_file(str(old), R.run_record(CFG, STUDENT, TEACHER))
    R.check_run_file(str(old), R.run_record(CFG, STUDENT, TEACHER, data))
    assert "data" not in json.loads((old / R.RUN_FILE).read_text())
