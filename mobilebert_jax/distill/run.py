"""The distillation run: stages, optimizers, sharded teacher and student, resume, memory reports.

A run is a list of stages, each a `trainer.fit` call with its own orbax checkpoints under
`output_dir/<stage>/checkpoints` (the stage is the folder, the step is the checkpoint):

    transfer_00 .. transfer_{L-1}   progressive knowledge transfer, layer k alone, LAMB with the
                                    TF1 per-stage schedule (`distill.transfer_schedule`)
    distill                         pre-training distillation, every param, LAMB with linear warmup
                                    then linear decay to `end_lr_rate`·lr (google's schedule)

A run restarted with the same arguments skips the finished stages, restores the last finished one
(params and data position), and `fit` resumes an unfinished stage at its last checkpoint, so a
resumed run reaches the params of an uninterrupted one. Each stage starts a fresh optimizer
(`training/optim.py`: the TF gate zeroes the moments of inactive layers). Student embeddings and heads are
copied from the teacher before the first stage.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.checkpoints.hub import save_pretrained
from mobilebert_jax.distill import objectives as D
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import MobileBertForPreTraining
from mobilebert_jax.training import optim
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.state import (
    abstract_train_state,
    checkpoint_manager,
    create_train_state,
    model_init_fn,
    restore_checkpoint,
)
from mobilebert_jax.training.trainer import FitConfig, FitResult, fit, make_train_step, to_host

log = logging.getLogger(__name__)
RUN_FILE = "distill_run.json"  # the settings a resume must match


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The recipe. Defaults are the paper's (google-research README command, TF2 yaml)."""

    # progressive knowledge transfer: one stage per encoder layer
    steps_per_stage: int = 10_000  # README --num_distill_steps=240000 over 24 layers; 0 skips the phase
    transfer_learning_rate: float = 1.5e-3  # constant base lr of the warm-up (end_lr_rate=1 in TF1)
    transfer_lr_multiplier: float = 3.0  # distill_util: the active layer trains at 3 x background x lr
    factors: D.TransferFactors = D.TransferFactors()  # 100 / 1 / 5000 / 5
    # pre-training distillation
    distill_steps: int = 500_000  # --num_train_steps; 0 skips the phase
    learning_rate: float = 1.5e-3  # --learning_rate
    warmup_steps: int = 10_000  # --num_warmup_steps
    end_lr_rate: float = 1e-4  # linear decay to lr x this (optimization.py)
    ground_truth_ratio: float = 0.5  # --distill_ground_truth_ratio
    temperature: float = 1.0  # --distill_temperature
    max_predictions_per_seq: int | None = 20  # MLM logits only at the masked positions
    student_dropout: bool = False  # TF1 builds the student with is_training=False
    # optimizer (LAMB, optim.lamb)
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    # batches
    batch_size: int = 2048  # global batch (--train_batch_size)
    max_seq_length: int = 512
    num_micro_batches: int = 1  # gradient accumulation inside the step (memory)
    # run
    seed: int = 0
    checkpoint_every: int = 1000
    max_to_keep: int = 2
    log_every: int = 100

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        d = dict(d)
        if isinstance(d.get("factors"), dict):
            d["factors"] = D.TransferFactors(**d["factors"])
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown DistillConfig field(s) {bad}; known: {sorted(known)}")
        return cls(**d)


# The two presets of `mobilebert-jax distill --config`: the recipe plus the two model configs.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        student=dict(preset="mobilebert-uncased"),
        teacher=dict(preset="ibbert-large-teacher"),
        distill=dict(num_micro_batches=4),  # 2048 x 512 on 8 devices: 64 sequences per micro-batch
        sharding_rules="fsdp",
    ),
    "tiny": dict(
        # Real vocabulary (the packaged tokenizer works), 4 layers, widths a loaded 2-core CPU runs in minutes.
        student=dict(
            preset="mobilebert-uncased",
            embedding_size=32,
            hidden_size=64,
            intra_bottleneck_size=16,
            intermediate_size=64,
            num_hidden_layers=4,
            num_feedforward_networks=2,
            max_position_embeddings=64,
        ),
        teacher=dict(
            preset="ibbert-large-teacher",
            embedding_size=32,
            hidden_size=64,
            intra_bottleneck_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
        ),
        distill=dict(
            steps_per_stage=40,
            distill_steps=240,
            warmup_steps=20,
            learning_rate=5e-3,
            transfer_learning_rate=4e-3,
            batch_size=32,
            max_seq_length=48,
            max_predictions_per_seq=8,
            checkpoint_every=100,
            log_every=5,
        ),
        teacher_pretrain_steps=500,
        sharding_rules="dp",
    ),
}


_RECIPE_KEYS = {"student", "teacher", "distill", "sharding_rules", "teacher_pretrain_steps"}


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe: the name of a preset ("paper", "tiny") or a JSON file of the same form (`train/configs/`)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not storage.isfile(name_or_path):
        raise ValueError(
            f"--config {name_or_path!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a JSON recipe file"
        )
    try:
        recipe = json.loads(storage.read_text(name_or_path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{name_or_path}: not valid JSON ({e})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{name_or_path}: a recipe is a JSON object with keys {sorted(_RECIPE_KEYS)}")
    bad = sorted(set(recipe) - _RECIPE_KEYS)
    missing = sorted({"student", "teacher", "distill"} - set(recipe))
    if bad or missing:
        raise ValueError(
            f"{name_or_path}: unknown recipe key(s) {bad}, missing {missing}; keys: {sorted(_RECIPE_KEYS)}"
        )
    for key in ("student", "teacher"):
        if not isinstance(recipe[key], dict) or "preset" not in recipe[key]:
            raise ValueError(
                f"{name_or_path}: {key!r} must be an object with a 'preset' and config overrides"
            )
    return {"sharding_rules": "fsdp", **recipe}


def preset_configs(name: str) -> tuple[MobileBertConfig, MobileBertConfig, DistillConfig]:
    """(student config, teacher config, DistillConfig) of a recipe: a preset name or a JSON recipe file."""
    p = load_recipe(name)

    def cfg(d):
        d = dict(d)
        return MobileBertConfig.from_preset(d.pop("preset"), **d)

    return cfg(p["student"]), cfg(p["teacher"]), DistillConfig.from_dict(p["distill"])


# ---------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # folder under output_dir
    layer: int | None  # the trained layer (None: pre-training distillation)
    steps: int


def stage_plan(cfg: DistillConfig, num_layers: int) -> list[Stage]:
    """The stages in order: `transfer_{k:02d}` for every layer (if steps_per_stage), then `distill`."""
    plan = []
    if cfg.steps_per_stage > 0:
        plan += [Stage(f"transfer_{k:02d}", k, cfg.steps_per_stage) for k in range(num_layers)]
    if cfg.distill_steps > 0:
        plan.append(Stage("distill", None, cfg.distill_steps))
    if not plan:
        raise ValueError("nothing to run: steps_per_stage and distill_steps are both 0")
    return plan


def stage_setup(
    stage: Stage, student_model: nn.Module, teacher_model: nn.Module, params: Any, cfg: DistillConfig
):
    """(optax tx, learning-rate schedule, DistillLossFn) of `stage`; `params` may be abstract."""
    if stage.layer is not None:
        labels = optim.layer_labels(params, layer=stage.layer)
        schedule = D.transfer_schedule(cfg.transfer_learning_rate, stage.steps, cfg.transfer_lr_multiplier)
        tx = optim.lamb(schedule, cfg.weight_decay, clip_norm=cfg.clip_norm, trainable_labels=labels)
        loss = D.transfer_loss(
            student_model, teacher_model, stage.layer, cfg.factors, trainable_labels=labels
        )
        return tx, schedule, loss
    schedule = optim.warmup_linear_decay(
        cfg.learning_rate,
        stage.steps,
        min(cfg.warmup_steps, stage.steps),
        end_value=cfg.learning_rate * cfg.end_lr_rate,
        decay_from_zero=True,
    )
    tx = optim.lamb(schedule, cfg.weight_decay, clip_norm=cfg.clip_norm)
    loss = D.pretraining_distill_loss(
        student_model,
        teacher_model,
        cfg.ground_truth_ratio,
        cfg.temperature,
        cfg.max_predictions_per_seq,
        cfg.student_dropout,
    )
    return tx, schedule, loss


def example_batch(batch_size: int = 1, seq_len: int = 8) -> dict[str, np.ndarray]:
    """Model inputs of the given shape (for init and shape inference)."""
    z = np.zeros((batch_size, seq_len), np.int32)
    return {"input_ids": z, "attention_mask": z + 1, "token_type_ids": z}


def place_params(model: nn.Module, params: Any, mesh: jax.sharding.Mesh | None, rules: shd.Rules | None):
    """(params on their shards, their shardings), from the model's logical axes and `rules`."""
    boxed = jax.eval_shape(model_init_fn(model, example_batch()), jax.random.key(0))
    abstract = nn.meta.unbox(boxed)["params"]
    want = {optim.path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    got = {optim.path_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    bad = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    if want.keys() != got.keys() or bad:
        raise ValueError(
            f"params do not fit {type(model).__name__}: missing {sorted(want.keys() - got.keys())}, unexpected "
            f"{sorted(got.keys() - want.keys())}, wrong shapes {[f'{k}: {got[k]} vs {want[k]}' for k in bad]}"
        )
    shardings = shd.logical_to_sharding(nn.get_partition_spec(boxed)["params"], abstract, mesh, rules)
    params = jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), params, abstract)
    if mesh is not None:
        params = jax.device_put(params, shardings)
    return params, shardings


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DistillResult:
    params: Any  # the student's params after the last stage run (None if nothing ran or restored)
    stopped: str  # "done", "stopped" (stop_at_step) or "preempted"
    step: int  # global step reached (sum over stages)
    histories: dict[str, list[dict[str, float]]]  # per stage: fit's logged metrics


def _latest_step(workdir: str) -> int | None:
    path = storage.join(workdir, "checkpoints")
    if not storage.isdir(path):
        return None
    mngr = checkpoint_manager(path, async_save=False)
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def run_record(
    cfg: DistillConfig, student: MobileBertConfig, teacher: MobileBertConfig, data: dict | None = None
) -> dict[str, Any]:
    """What `distill_run.json` records: the settings a resume must match; `data`, where given, the
    training data's identity (the job's: size and sha256 of the text file, or a prepared folder's
    dataset.json)."""
    plan = stage_plan(cfg, student.num_hidden_layers)
    record = {
        "distill": cfg.to_dict(),
        "student": student.to_dict(),
        "teacher": teacher.to_dict(),
        "stages": [dataclasses.asdict(s) for s in plan],
    }
    return {**record, "data": data} if data is not None else record


def check_run_file(output_dir: str, record: dict) -> None:
    """Refuses a dir holding a run of other settings; records `record` in a new one (local or gs://)."""
    path = storage.join(output_dir, RUN_FILE)
    ignore = ("checkpoint_every", "max_to_keep", "log_every")
    if storage.exists(path):
        old = json.loads(storage.read_text(path))
        strip = lambda d: {**d, "distill": {k: v for k, v in d["distill"].items() if k not in ignore}}  # noqa: E731
        a, b = strip(old), strip(json.loads(json.dumps(record)))
        # The data's path is informative only (a moved file is the same data), and a record written
        # before the data was recorded matches any data.
        for d in (a, b):
            if isinstance(d.get("data"), dict):
                d["data"] = {k: v for k, v in d["data"].items() if k != "path"}
        if "data" not in a:
            b.pop("data", None)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(
                f"{output_dir} holds a run with other settings ({', '.join(diff)} differ); "
                "resume with the same configs or use a new --output-dir"
            )
    elif jax.process_index() == 0:
        storage.makedirs(output_dir)
        storage.write_json(path, record, sort_keys=True)


def run_distillation(
    student_model: nn.Module,
    teacher_model: nn.Module,
    teacher_params: Any,
    data: Any,
    cfg: DistillConfig,
    output_dir: str,
    *,
    student_params: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
    plot: bool = True,
    say: Callable[[str], None] = print,
    compiler_options: dict[str, Any] | None = None,
    data_identity: dict | None = None,
) -> DistillResult:
    """Runs (or resumes) every stage of `stage_plan(cfg, L)`; writes `output_dir/final_model` at the end.

    Args:
        student_model, teacher_model: `MobileBertForPreTraining` models (unrolled layers).
        teacher_params: the teacher's params (placed on their shards here; never trained).
        data: a `trainer.DataIterator` of pre-training batches (input_ids, token_type_ids,
            attention_mask, labels or masked_lm_*, next_sentence_label), global batch `cfg.batch_size`.
        cfg: the recipe.
        output_dir: stage folders, `distill_run.json` (the settings a resume must match), final_model/.
        student_params: initial student params (default: random init from `cfg.seed`); the non-encoder
            params are replaced by the teacher's either way.
        mesh, rules: from `sharding.make_mesh` / `sharding.logical_rules` (None: one device).
        stop_at_step: stop (with a checkpoint) when the global step reaches this; rerun to continue.
        progress, plot: fit's progress bar and per-stage loss.png.
        say: progress messages.
        compiler_options: XLA options for the step compiles (e.g. {"xla_backend_optimization_level": 0}).
        data_identity: what identifies `data` (recorded in `distill_run.json`: a resume on other data
            is refused); None: not recorded.
    """
    sc, tc = _check_models(student_model, teacher_model)
    plan = stage_plan(cfg, sc.num_hidden_layers)
    check_run_file(output_dir, run_record(cfg, sc, tc, data_identity))
    teacher_params, t_shard = place_params(teacher_model, teacher_params, mesh, rules)
    init_fn, rng = model_init_fn(student_model, example_batch()), jax.random.key(cfg.seed)
    run = _Run(
        student_model,
        teacher_model,
        teacher_params,
        t_shard,
        cfg,
        output_dir,
        init_fn,
        rng,
        mesh,
        rules,
        compiler_options,
    )
    params, histories, g0, stopped = None, {}, 0, "done"
    for i, stage in enumerate(plan):
        if _latest_step(storage.join(output_dir, stage.name)) == stage.steps:
            say(f"{stage.name}: finished earlier ({stage.steps} steps)")
            params, g0 = None, g0 + stage.steps
            continue
        if stop_at_step is not None and stop_at_step <= g0:
            stopped = "stopped"
            break
        params = _start_params(run, plan, i, params, student_params, data, say)
        n = stage.steps if stop_at_step is None else min(stage.steps, stop_at_step - g0)
        what = f"layer {stage.layer}" if stage.layer is not None else "pre-training distillation"
        say(f"{stage.name}: {what}, {stage.steps} steps" + (f" (running to {n})" if n < stage.steps else ""))
        res = _fit_stage(run, i, stage, params, data, n, progress=progress, plot=plot)
        params, histories[stage.name] = res.state.params, res.history
        if res.history:
            say(f"{stage.name}: " + _summary(res.history))
        if res.stopped != "done" or n < stage.steps:
            stopped = "preempted" if res.stopped == "preempted" else "stopped"
            g0 += res.step
            break
        g0 += stage.steps
    else:
        params = params if params is not None else _restore_final(run, plan[-1])[0]
        _save_final(params, sc, output_dir, say)
    return DistillResult(params=params, stopped=stopped, step=g0, histories=histories)


def _check_models(
    student_model: nn.Module, teacher_model: nn.Module
) -> tuple[MobileBertConfig, MobileBertConfig]:
    sc, tc = student_model.config, teacher_model.config
    D.check_compatible(sc, tc)
    if getattr(student_model, "scan_layers", False):
        raise ValueError(
            "the student needs unrolled layers (scan_layers=False) for the per-layer gate and LAMB"
        )
    return sc, tc


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every stage of one distillation run shares."""

    student_model: nn.Module
    teacher_model: nn.Module
    teacher_params: Any  # on their shards
    teacher_shardings: Any
    cfg: DistillConfig
    output_dir: str
    init_fn: Callable
    rng: jax.Array
    mesh: jax.sharding.Mesh | None
    rules: shd.Rules | None
    compiler_options: dict[str, Any] | None


def _initial_params(run: _Run, student_params: Any, say: Callable[[str], None]) -> Any:
    """The first stage's student: given or random params, embeddings and heads copied from the teacher."""
    p = student_params
    if p is None:
        with shd.mesh_context(run.mesh, run.rules):
            p = nn.meta.unbox(jax.jit(run.init_fn)(run.rng))["params"]
    sc, tc = run.student_model.config, run.teacher_model.config
    p, rep = D.copy_non_encoder(p, run.teacher_params, sc, tc)
    kept = rep.kept or "none"
    say(f"copied {len(rep.copied)} embedding/head params from the teacher; kept the student's {kept}")
    return p


def _restore_final(run: _Run, stage: Stage) -> tuple[Any, Any]:
    """(params, data state) at the end of a finished `stage`."""
    abstract_p = nn.meta.unbox(jax.eval_shape(run.init_fn, run.rng))["params"]
    tx, _, _ = stage_setup(stage, run.student_model, run.teacher_model, abstract_p, run.cfg)
    target, _, _ = abstract_train_state(run.init_fn, tx, run.rng, run.mesh, run.rules)
    workdir = storage.join(run.output_dir, stage.name, "checkpoints")
    state, data_state, _ = restore_checkpoint(workdir, target, step=stage.steps)
    return state.params, data_state


def _start_params(
    run: _Run,
    plan: list[Stage],
    i: int,
    params: Any,
    student_params: Any,
    data: Any,
    say: Callable[[str], None],
) -> Any:
    """The params stage `i` starts from: those in hand, the first stage's initial ones, or the end of stage i-1."""
    if params is not None:
        return params
    if i == 0:
        return _initial_params(run, student_params, say)
    params, data_state = _restore_final(run, plan[i - 1])
    if data_state and hasattr(data, "set_state"):
        data.set_state(data_state)
    say(f"restored the end of {plan[i - 1].name}")
    return params


def _fit_stage(
    run: _Run, i: int, stage: Stage, params: Any, data: Any, n: int, *, progress: bool, plot: bool
) -> FitResult:
    """Trains stage `i` from `params` up to step `n` (resuming its checkpoint if any); fit's result."""
    cfg = run.cfg
    fit_config = FitConfig(
        num_steps=n,
        workdir=storage.join(run.output_dir, stage.name),
        log_every=min(cfg.log_every, n),
        checkpoint_every=cfg.checkpoint_every,
        max_to_keep=cfg.max_to_keep,
        progress=progress,
        plot=plot,
    )
    tx, schedule, loss = stage_setup(stage, run.student_model, run.teacher_model, params, cfg)
    sharded = create_train_state(run.init_fn, tx, run.rng, run.mesh, run.rules, params=params)
    step = D.make_distill_step(
        loss,
        state_shardings=sharded.shardings,
        teacher_shardings=run.teacher_shardings,
        mesh=run.mesh,
        rules=run.rules,
        num_micro_batches=cfg.num_micro_batches,
        learning_rate=schedule,
        compiler_options=run.compiler_options,
    )
    step = functools.partial(_with_teacher, step, run.teacher_params)
    rng = jax.random.fold_in(run.rng, i)
    return fit(fit_config, sharded.state, step, data, rng, batch_sharding=shd.batch_sharding(run.mesh))


def _save_final(params: Any, config: MobileBertConfig, output_dir: str, say: Callable[[str], None]) -> None:
    host_params = to_host(params)  # every process: gathers FSDP/tensor shards
    if jax.process_index() == 0:
        final = storage.join(output_dir, "final_model")
        # put in place whole: a reader (or a rerun) sees no final_model or all of it, never half of one
        storage.replace_dir(
            final, lambda tmp: save_pretrained(tmp, host_params, config, "MobileBertForPreTraining")
        )
        say(f"wrote {final}")


def _with_teacher(step: Callable, teacher_params: Any, state: Any, batch: dict, rng: Any):
    return step(state, teacher_params, batch, rng)


_SHOW = (
    "loss",
    "feature_map_mse",
    "attention_kl",
    "attention_ce",
    "mean_sq_diff",
    "variance_abs_diff",
    "mlm_true",
    "mlm_accuracy",
)


def _summary(history: list[dict[str, float]]) -> str:
    first, last = history[0], history[-1]
    parts = [f"{k} {first[k]:.4g} -> {last[k]:.4g}" for k in _SHOW if k in first and k in last]
    return f"steps {first['step']}..{last['step']}: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------------
# Training without a teacher (teacher pre-training; the no-teacher baseline)
# ---------------------------------------------------------------------------------------------------


def pretrain(
    model: nn.Module,
    data: Any,
    num_steps: int,
    *,
    learning_rate: float,
    warmup_steps: int = 0,
    end_lr_rate: float = 1e-4,
    max_predictions: int | None = 20,
    params: Any = None,
    workdir: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | None = None,
    seed: int = 0,
    log_every: int = 50,
    progress: bool = True,
    compiler_options: dict[str, Any] | None = None,
) -> tuple[Any, list[dict[str, float]]]:
    """MLM + NSP with LAMB and google's schedule (the MLM at the masked positions); returns (params, history).

    The same loss as the distillation phase with no teacher (`pretraining_distill_loss(model)`), so
    a student trained here and a distilled one are measured the same way.
    """
    rng = jax.random.key(seed)
    schedule = optim.warmup_linear_decay(
        learning_rate,
        num_steps,
        min(warmup_steps, num_steps),
        end_value=learning_rate * end_lr_rate,
        decay_from_zero=True,
    )
    tx = optim.lamb(schedule)
    loss = D.bind_teacher(D.pretraining_distill_loss(model, None, max_predictions=max_predictions))
    sharded = create_train_state(model_init_fn(model, example_batch()), tx, rng, mesh, rules, params=params)
    step = make_train_step(
        loss,
        state_shardings=sharded.shardings,
        mesh=mesh,
        rules=rules,
        learning_rate=schedule,
        compiler_options=compiler_options,
    )
    res = fit(
        FitConfig(num_steps=num_steps, workdir=workdir, log_every=log_every, progress=progress, plot=False),
        sharded.state,
        step,
        data,
        rng,
        batch_sharding=shd.batch_sharding(mesh),
    )
    return res.state.params, res.history


# ---------------------------------------------------------------------------------------------------
# Compile-only memory report (paper scale on any mesh, no FLOPs, no params in memory)
# ---------------------------------------------------------------------------------------------------


def _bytes_per_device(tree: Any) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def compile_report(
    student_config: MobileBertConfig,
    teacher_config: MobileBertConfig,
    cfg: DistillConfig,
    mesh: jax.sharding.Mesh,
    rules: shd.Rules,
    stages: tuple[str, ...] | None = None,
    compile: bool = True,
    teacher_dtype: Any = jnp.float32,
    compiler_options: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Lowers (and compiles) the distillation steps on abstract inputs; bytes per device per stage.

    Nothing is materialised: params, optimizer state, teacher and batch are `ShapeDtypeStruct`s
    carrying their shardings. Returns per stage: "params", "opt_state", "teacher" (sharded bytes per
    device) and, when compiled, XLA's "argument", "output", "temp", "alias", "generated_code" sizes
    and "peak" = argument + output + temp - alias. `compiler_options` (e.g. a low LLVM optimization
    level) shorten the compile without changing the buffer assignment.
    """
    student = MobileBertForPreTraining(student_config)
    teacher = MobileBertForPreTraining(teacher_config, dtype=teacher_dtype, param_dtype=teacher_dtype)
    rng = jax.random.key(0)
    init_fn = model_init_fn(student, example_batch())
    abstract_p = nn.meta.unbox(jax.eval_shape(init_fn, rng))["params"]
    t_boxed = jax.eval_shape(model_init_fn(teacher, example_batch()), rng)
    t_abs = nn.meta.unbox(t_boxed)["params"]
    t_shard = shd.logical_to_sharding(nn.get_partition_spec(t_boxed)["params"], t_abs, mesh, rules)
    t_abs = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), t_abs, t_shard)
    b, t, p = cfg.batch_size, cfg.max_seq_length, cfg.max_predictions_per_seq or cfg.max_seq_length
    bs = shd.batch_sharding(mesh)
    sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=bs)  # noqa: E731
    batch = {k: sds((b, t), jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    batch.update(
        masked_lm_positions=sds((b, p), jnp.int32),
        masked_lm_ids=sds((b, p), jnp.int32),
        masked_lm_weights=sds((b, p), jnp.float32),
        next_sentence_label=sds((b,), jnp.int32),
    )
    plan = {s.name: s for s in stage_plan(cfg, student_config.num_hidden_layers)}
    names = stages or tuple(plan)
    out = {}
    for name in names:
        if name not in plan:
            raise ValueError(f"unknown stage {name!r}; stages: {sorted(plan)}")
        tx, schedule, loss = stage_setup(plan[name], student, teacher, abstract_p, cfg)
        state, shardings, _ = abstract_train_state(init_fn, tx, rng, mesh, rules)
        step = D.make_distill_step(
            loss,
            state_shardings=shardings,
            teacher_shardings=t_shard,
            mesh=mesh,
            rules=rules,
            num_micro_batches=cfg.num_micro_batches,
            learning_rate=schedule,
        )
        row = {
            "params": _bytes_per_device(state.params),
            "opt_state": _bytes_per_device(state.opt_state),
            "teacher": _bytes_per_device(t_abs),
        }
        with shd.mesh_context(mesh, rules):
            lowered = step.jitted.lower(state, t_abs, batch, jax.ShapeDtypeStruct((), rng.dtype))
        if compile:
            ma = lowered.compile(compiler_options).memory_analysis()
            if ma is not None:
                row.update(
                    argument=ma.argument_size_in_bytes,
                    output=ma.output_size_in_bytes,
                    temp=ma.temp_size_in_bytes,
                    alias=ma.alias_size_in_bytes,
                    generated_code=ma.generated_code_size_in_bytes,
                )
                row["peak"] = row["argument"] + row["output"] + row["temp"] - row["alias"]
        out[name] = row
    return out
