"""The fine-tuning job (`finetune`, `pretrain`, `demo`): task data + model + sharded engine, end to end.

`run_finetune(job)` reads and checks every input and decides the output dir (`read_inputs`,
`make_plan`: nothing written yet), then trains (`fit`, with a `BestModel` tracker when it evaluates
during training) and finishes (final evaluation, predictions, HF export). Evaluate and predict jobs
live in `evaluate.py`; the run identity of the output dir in `run_dir.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import optax

from mobilebert_jax import storage
from mobilebert_jax.jobs import run_dir
from mobilebert_jax.jobs.config import JobConfig, UsageError
from mobilebert_jax.jobs.data import (
    count_truncation,
    make_task,
    model_arrays,
    read_split,
    require_labels,
    split_path,
)
from mobilebert_jax.jobs.evaluate import (
    evaluate_task,
    loss_metrics,
    predict_outputs,
    run_evaluate,
    run_predict,
)
from mobilebert_jax.jobs.model_io import (
    check_compatible,
    load_model,
    load_params,
    load_tokenizer,
    resolve_max_seq_length,
    save_hf_model,
)
from mobilebert_jax.jobs.run_dir import predictions_path, say
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.storage import write_json
from mobilebert_jax.tasks import DataError, Task
from mobilebert_jax.tasks import pretraining_data as prepared_data
from mobilebert_jax.text.tokenizer import MobileBertTokenizer
from mobilebert_jax.training import host_allocator, optim
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.grain_data import prepared_iterator
from mobilebert_jax.training.objectives import loss_fn_for
from mobilebert_jax.training.state import create_train_state, model_init_fn
from mobilebert_jax.training.trainer import ArrayIterator, FitConfig, fit, make_train_step, to_host

__all__ = ["BestModel", "run_finetune"]
QAT_STATS_ROWS = 256


# ---------------------------------------------------------------------------------------------------
# Plan: every input read and checked, the output dir decided; nothing written
# ---------------------------------------------------------------------------------------------------
def phases(job: JobConfig, command: str = "finetune") -> tuple[bool, bool, bool]:
    """(train, eval, predict): HF's --do_* flags; with none of them given, train and evaluate."""
    flags = (job.do_train, job.do_eval, job.do_predict)
    if command != "finetune" or all(f is None for f in flags):
        return True, True, bool(job.test_file) and command == "finetune"
    return tuple(bool(f) for f in flags)  # type: ignore[return-value]


def best_metric(job: JobConfig, task: Task) -> tuple[str, bool]:
    """(metric name, greater is better) for `--metric_for_best_model` (HF's `eval_` prefix accepted)."""
    name = job.metric_for_best_model or task.main_metric
    name = name[5:] if name.startswith("eval_") else name
    greater = job.greater_is_better if job.greater_is_better is not None else "loss" not in name
    return name, greater


def check_metric(job: JobConfig, task: Task, metric: str, eval_ex: list | None, eval_feats: Any) -> None:
    """`--metric_for_best_model` must name a metric of the task's evaluation, or `loss` (`eval_loss`)."""
    if job.metric_for_best_model is None or metric == "loss":
        return
    names = task.metric_names(eval_ex, eval_feats) if eval_ex is not None else None
    if names is not None and metric not in names:
        raise UsageError(
            f"--metric_for_best_model {job.metric_for_best_model!r} is not a metric of task {task.name}: "
            f"{[*names, 'loss']}"
        )


def job_mesh(job: JobConfig):
    """The job's mesh; fixed sizes (no -1) smaller than the device count use the first devices."""
    sizes = (job.mesh_data, job.mesh_fsdp, job.mesh_tensor)
    devices = jax.devices()
    if -1 not in sizes:
        if math.prod(sizes) > len(devices):
            raise UsageError(
                f"--mesh_data x --mesh_fsdp x --mesh_tensor = {math.prod(sizes)} > the {len(devices)} devices"
            )
        if math.prod(sizes) < len(devices) and jax.process_count() > 1:
            raise UsageError(  # the first devices would leave some processes without one
                f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} uses {math.prod(sizes)} of "
                f"{len(devices)} devices; a multi-process run needs a mesh over all of them (use -1)"
            )
        devices = devices[: math.prod(sizes)]
    return shd.make_mesh(*sizes, devices=devices)


def make_schedule(job: JobConfig, num_steps: int) -> optim.Schedule:
    """HF's `--lr_scheduler_type` schedules; warmup from `--warmup_steps` or `--warmup_ratio`."""
    ratio = math.ceil(job.warmup_ratio * num_steps)  # HF's TrainingArguments.get_warmup_steps rounds up
    warm = min(job.warmup_steps if job.warmup_steps > 0 else ratio, num_steps)
    lr = job.learning_rate
    if job.lr_scheduler_type == "linear":
        return optim.warmup_linear_decay(lr, num_steps, warm)
    if job.lr_scheduler_type == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, num_steps, 0.0)
    if job.lr_scheduler_type == "constant" or warm == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])


@dataclasses.dataclass
class Inputs:
    """What a fine-tune reads. `prepared`: `train_path` is a prepare-pretraining-data folder (streamed
    through Grain; `train_ex` is then empty); eval/test examples are None where not asked for."""

    task: Task
    tok: MobileBertTokenizer
    train_path: str
    train_ex: list
    prepared: bool
    eval_ex: list | None
    test_ex: list | None
    distill_ex: list | None = None  # --qat_distillation_file's rows (labels unused)


def read_inputs(job: JobConfig, do_eval: bool, do_predict: bool) -> tuple[JobConfig, Inputs]:
    """Reads and checks every file (and the labels each purpose needs); `job.train_file` resolved."""
    task = make_task(job.task, job.task_options)
    tok = load_tokenizer(job.model)
    prepared = task.is_prepared(job.train_file)
    if prepared:
        if job.max_train_samples:
            raise UsageError(
                "--max_train_samples does not apply to a prepared folder (prepare a smaller one)"
            )
        train_path, train_ex = job.train_file, []
    else:
        train_path = split_path(task, job.train_file, "train")
        job = dataclasses.replace(job, train_file=train_path)
        task, train_ex = task.read_training(train_path)
        train_ex = train_ex[: job.max_train_samples] if job.max_train_samples else train_ex
        require_labels(task, train_ex, "--train_file", train_path, "training")
    eval_ex = test_ex = None
    if do_eval:
        eval_path = split_path(task, job.validation_file, "validation")
        eval_ex = read_split(task, eval_path, "validation", job.max_eval_samples)
        require_labels(task, eval_ex, "--validation_file", eval_path, "evaluation")
    if do_predict:
        test_ex = read_split(task, split_path(task, job.test_file, "test"), "test", job.max_predict_samples)
    if job.eval_steps and not do_eval:
        raise UsageError("--eval_steps needs an evaluation (--do_eval and --validation_file)")
    n = f" and {len(eval_ex)} evaluation" if eval_ex is not None else ""
    n_train = prepared_data.num_instances(train_path) if prepared else len(train_ex)
    say(f"task {task.name}: {n_train} training{n} examples")
    if job.qat == "int8":
        import importlib.util

        if importlib.util.find_spec("qwix") is None:
            raise UsageError("--qat int8 needs qwix: pip install 'mobilebert-jax[export]'")
    if job.qat and prepared:
        raise UsageError("--qat does not apply to a prepared pretraining folder")
    distill_ex = None
    if job.qat_distillation_file:
        if not storage.isfile(job.qat_distillation_file):
            raise DataError("--qat_distillation_file: no such file", job.qat_distillation_file)
        distill_ex = task.read(job.qat_distillation_file)
        if not distill_ex:
            raise DataError("--qat_distillation_file: no rows", job.qat_distillation_file)
    return job, Inputs(task, tok, train_path, train_ex, prepared, eval_ex, test_ex, distill_ex)


def batch_plan(job: JobConfig, n_train: int, n_dev: int, train_path: str) -> tuple[int, int, int]:
    """(global batch, steps per epoch, steps); the batch shrinks to fit a small training set."""
    batch = job.per_device_train_batch_size * n_dev * job.gradient_accumulation_steps
    batch = min(batch, n_train - n_train % (n_dev * job.gradient_accumulation_steps)) or batch
    if batch > n_train:
        raise DataError(
            f"--train_file {train_path}: {n_train} training features, fewer than one batch of {batch} "
            f"({n_dev} devices x --gradient_accumulation_steps {job.gradient_accumulation_steps})"
        )
    steps_per_epoch = max(n_train // batch, 1)
    num_steps = job.max_steps if job.max_steps > 0 else max(int(job.num_train_epochs * steps_per_epoch), 1)
    return batch, steps_per_epoch, num_steps


@dataclasses.dataclass
class Plan:
    """A fine-tune decided before anything is written: model, mesh, output-dir mode, features, steps."""

    job: JobConfig
    data: Inputs
    config: MobileBertConfig
    model: Any
    params: Any  # None: random init, created sharded
    mesh: Any
    rules: Any
    identity: dict[str, Any]
    mode: str  # "new" or "resume" (see run_dir.decide)
    clean_first: bool
    train_arrays: dict | None  # None for a prepared folder
    eval_feats: dict | None
    test_feats: dict | None
    metric: str
    greater: bool
    truncated: dict[str, dict]  # {split: examples cut to max_seq_length} (see Task.truncation)
    batch: int
    steps_per_epoch: int
    num_steps: int

    @property
    def export_config(self) -> MobileBertConfig:
        """The config written with the model: the task and its options recorded for evaluate/predict."""
        extra = {
            "finetuning_task": self.data.task.name,
            "task_options": dict(self.job.task_options),
            "pad_invariant": self.job.pad_invariant,
            "max_seq_length": self.job.max_seq_length,
        }
        return self.config.replace(extra={**self.config.extra, **extra})


def make_plan(job: JobConfig, data: Inputs, rng: jax.Array) -> Plan:
    """Loads the model, decides the output dir (`run_dir.decide`), featurises and sizes the run."""
    task, tok = data.task, data.tok
    config, model, params = load_model(job, task, rng)
    job = resolve_qat_ranges(resolve_max_seq_length(job, config), params)
    length = job.max_seq_length
    check_compatible(config, tok, length, job.model)
    mesh = job_mesh(job)
    identity = run_dir.run_identity(job, task, config, mesh.devices.size)
    mode, clean_first = run_dir.decide(job, identity, say)
    train_feats = None if data.prepared else task.featurise(data.train_ex, tok, length)
    train_arrays = None if data.prepared else model_arrays(task, train_feats)
    if job.qat_distillation:
        check_distillation(job, model, params, train_arrays)
    if data.distill_ex:
        train_arrays = with_unlabelled_rows(task, train_arrays, data.distill_ex, tok, length)
        say(
            f"--qat_distillation_file: {len(data.distill_ex)} rows of {job.qat_distillation_file} join the "
            f"training rows (target: the teacher's predictions)"
        )
    eval_feats = task.featurise(data.eval_ex, tok, length) if data.eval_ex is not None else None
    test_feats = task.featurise(data.test_ex, tok, length) if data.test_ex is not None else None
    splits = {
        "training": (data.train_ex if not data.prepared else None, train_feats),
        "evaluation": (data.eval_ex, eval_feats),
        "test": (data.test_ex, test_feats),
    }
    truncated = count_truncation(task, tok, length, splits)
    metric, greater = best_metric(job, task)
    check_metric(job, task, metric, data.eval_ex, eval_feats)
    if data.prepared:
        n_train = prepared_data.num_instances(data.train_path)
    else:
        n_train = len(next(iter(train_arrays.values())))
    rules = shd.logical_rules(job.sharding_rules, mesh, config)
    sizes = batch_plan(job, n_train, mesh.devices.size, data.train_path)
    return Plan(
        job,
        data,
        config,
        model,
        params,
        mesh,
        rules,
        identity,
        mode,
        clean_first,
        train_arrays,
        eval_feats,
        test_feats,
        metric,
        greater,
        truncated,
        *sizes,
    )


# ---------------------------------------------------------------------------------------------------
# Evaluation during training: the best model
# ---------------------------------------------------------------------------------------------------
class BestModel:
    """The best evaluation so far (`best.json`) and its model (`best_model/`), read back on resume.

    Every process offers every evaluation (the metrics are global, and gathering the params is a
    collective); process 0 writes."""

    def __init__(self, out: str, metric: str, greater: bool, save: Callable[[str, Any], None]):
        self.file, self.dir = storage.join(out, "best.json"), storage.join(out, "best_model")
        self.metric, self.greater, self._save = metric, greater, save
        self.best: dict[str, Any] | None = None

    def load(self) -> None:
        """Reads the best so far of the run in the output dir (call it once the dir is decided)."""
        if storage.exists(self.file):
            self.best = json.loads(storage.read_text(self.file))

    def better(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.greater else value < self.best["value"]

    def offer(self, step: int, metrics: dict[str, Any], params: Any) -> None:
        """Saves `params` as the best model where `metrics` beat the best so far."""
        value = metrics.get(self.metric)
        if not self.better(value):
            return
        host_params = to_host(params)
        self.best = {"step": step, "metric": self.metric, "value": value}
        if jax.process_index() == 0:
            storage.replace_dir(self.dir, lambda tmp: self._save(tmp, host_params))
            write_json(self.file, self.best)
            say(f"step {step}: best {self.metric} so far ({value:.4f}): saved {self.dir}")


@dataclasses.dataclass
class Evaluator:
    """`fit`'s eval_fn: evaluates on the validation set, offers the result to `best`, keeps the last."""

    plan: Plan
    best: BestModel
    kw: dict[str, Any]  # mesh, rules, param_shardings
    last: dict[str, Any] = dataclasses.field(default_factory=dict)

    def evaluate(self, params: Any) -> tuple[dict, Any]:
        p = self.plan
        batch_size = p.job.per_device_eval_batch_size * p.mesh.devices.size
        task = p.data.task
        metrics, predictions = evaluate_task(
            task, p.model, params, p.data.eval_ex, p.eval_feats, batch_size, **self.kw
        )
        if p.metric == "loss" and "loss" not in metrics:  # HF's eval_loss, computed where it is asked for
            metrics["loss"] = loss_metrics(task, p.model, params, p.eval_feats, batch_size, **self.kw)["loss"]
        return metrics, predictions

    def __call__(self, state: Any, step: int) -> dict[str, float]:
        metrics, predictions = self.evaluate(state.params)
        self.last = dict(step=step, metrics=metrics, predictions=predictions)
        self.best.offer(step, metrics, state.params)
        return {k: v for k, v in metrics.items() if isinstance(v, int | float)}

    def at(self, params: Any, step: int) -> tuple[dict, Any]:
        """(metrics, predictions) of `params`, the model of `step` (reused where just evaluated)."""
        if self.last.get("step") == step:
            return self.last["metrics"], self.last["predictions"]
        return self.evaluate(params)


# ---------------------------------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------------------------------
def start_output_dir(plan: Plan) -> None:
    """The first write (once an explicit checkpoint has been restored): the earlier run's files removed
    where decided, the run identity recorded."""
    out = plan.job.output_dir
    if jax.process_index() == 0:
        if plan.clean_first:
            gone = run_dir.clean(out)
            if gone:
                say(f"removed the earlier run's {', '.join(gone)} from {out}")
        run_dir.write_identity(out, plan.identity)
    if plan.mode == "new":
        say(f"new run in {out}")


def build_training(plan: Plan, rng: jax.Array) -> tuple[Any, Any, Callable]:
    """(training data iterator, sharded train state, train step)."""
    job, data, batch = plan.job, plan.data, plan.batch
    if data.prepared:
        train_data = prepared_iterator(
            data.train_path,
            batch,
            seed=job.seed,
            num_workers=job.dataloader_num_workers,
            max_seq_length=job.max_seq_length,
            tokenizer=data.tok,
            keys=data.task.input_keys + data.task.label_keys,
            task_options=job.task_options,
        )
        example = train_data.example()
    else:
        arrays = plan.train_arrays
        if job.qat_distillation:
            t0 = time.perf_counter()
            arrays = {**arrays, **teacher_outputs(plan, arrays)}
            say(
                f"--qat_distillation: the float model's outputs on {len(arrays['input_ids'])} training rows "
                f"({time.perf_counter() - t0:.0f} s)"
            )
        train_data = ArrayIterator(arrays, batch, seed=job.seed)
        example = {k: v[:batch] for k, v in arrays.items()}
    schedule = make_schedule(job, plan.num_steps)
    make_tx = optim.adamw if job.optimizer == "adamw" else optim.lamb
    clip = job.max_grad_norm if job.max_grad_norm > 0 else None
    tx = make_tx(schedule, weight_decay=job.weight_decay, eps=job.adam_epsilon, clip_norm=clip)
    model = plan.model
    sharded = create_train_state(
        model_init_fn(model, example), tx, rng, plan.mesh, plan.rules, params=plan.params
    )
    ranges = qat_static_ranges(plan) if job.qat_ranges == "static" else None
    step = make_train_step(
        training_loss(job, model, ranges),
        state_shardings=sharded.shardings,
        mesh=plan.mesh,
        rules=plan.rules,
        num_micro_batches=job.gradient_accumulation_steps,
        learning_rate=schedule,
    )
    n_params = sum(x.size for x in jax.tree.leaves(sharded.state.params))
    say(
        f"model {type(model).__name__} ({job.model}): {n_params:,} params; mesh {dict(plan.mesh.shape)}; "
        f"{plan.num_steps} steps of {batch} examples ({plan.num_steps / plan.steps_per_epoch:.2f} epochs)"
    )
    if host_allocator.status() is not None:  # a detail: shown with --verbose
        logging.getLogger("mobilebert_jax").info("host allocator: %s", host_allocator.status())
    return train_data, sharded, step


def resolve_qat_ranges(job: JobConfig, params: Any) -> JobConfig:
    """`job` with `--qat_ranges auto` resolved for `--qat int8-full`: static from a trained model
    (`params`), batch from a random init (whose ranges are not the trained model's)."""
    if job.qat != "int8-full":
        return job
    if job.qat_ranges == "static" and params is None:
        raise UsageError(
            f"--qat_ranges static: --model {job.model} is a random init, whose ranges are not the trained "
            "model's (use --qat_ranges batch)"
        )
    if job.qat_ranges == "auto":
        return dataclasses.replace(job, qat_ranges="static" if params is not None else "batch")
    return job


def qat_static_ranges(plan: Plan) -> list:
    """`--qat_ranges static`: the min/max of each activation the full-integer fake quantization rounds,
    over the first training rows through the starting model (`full_integer.calibrate_full_integer_ranges`)."""
    from mobilebert_jax.export.common import make_forward
    from mobilebert_jax.export.full_integer import calibrate_full_integer_ranges, full_integer_qat_model
    from mobilebert_jax.jobs.config import QAT_RANGE_ROWS

    t0 = time.perf_counter()
    qat = full_integer_qat_model(plan.model)
    rows = {k: plan.train_arrays[k][:QAT_RANGE_ROWS] for k in plan.data.task.input_keys}
    n = len(rows["input_ids"])
    batches = [{k: v[s : s + plan.batch] for k, v in rows.items()} for s in range(0, n, plan.batch)]
    ranges = calibrate_full_integer_ranges(lambda p, **b: make_forward(qat, p)(**b), plan.params, batches)
    say(
        f"--qat_ranges static: {len(ranges)} activation ranges over {n} training rows through the starting "
        f"model, fixed for the run ({time.perf_counter() - t0:.0f} s)"
    )
    return ranges


def training_loss(job: JobConfig, model: Any, ranges: list | None = None) -> Callable:
    """The loss the train step differentiates: the model's, through `--qat`'s fake quantization (with
    `ranges`: `--qat_ranges static`) and `--qat_distillation`'s teacher term."""
    w = job.qat_distillation
    if w:
        say(f"--qat_distillation {w:g}: loss = {1 - w:g} x labels' CE + {w:g} x KL(float teacher || model)")
    if job.qat == "int8":
        from mobilebert_jax.export.quantize import qat_model

        say("--qat int8: training with fake int8 quantization (qwix ODML rules of export --quantize int8)")
        return loss_fn_for(qat_model(model), w)
    if job.qat == "int8-full":
        from mobilebert_jax.export.full_integer import full_integer_qat_model, with_full_integer_fake_quant

        where = "static" if ranges is not None else "each batch's own"
        say(
            "--qat int8-full: training with fake int8 quantization of the full-integer graph's tensors "
            f"({where} activation ranges)"
        )
        return with_full_integer_fake_quant(loss_fn_for(full_integer_qat_model(model), w), ranges)
    return loss_fn_for(model)


def check_distillation(job: JobConfig, model: Any, params: Any, arrays: dict | None) -> None:
    """`--qat_distillation` needs a trained float model (the teacher) and a head whose outputs are
    distributions (`objectives.DISTILLED_OUTPUTS`: a single-label classifier, token classification,
    QA); `--qat_distillation_file`'s label-free rows, a sequence classifier."""
    from mobilebert_jax.model.heads import MobileBertForSequenceClassification
    from mobilebert_jax.model.losses import problem_type_of
    from mobilebert_jax.training.objectives import DISTILLED_OUTPUTS

    if params is None:
        raise UsageError(
            f"--qat_distillation: --model {job.model} is a random init; the teacher is the float model "
            "being quantized (pass a fine-tuned model)"
        )
    classifier = isinstance(model, MobileBertForSequenceClassification)
    kind = problem_type_of(model.config, arrays["labels"]) if classifier and arrays is not None else None
    if not isinstance(model, tuple(DISTILLED_OUTPUTS)) or kind not in (None, "single_label_classification"):
        heads = "single-label sequence classification, token classification and question answering"
        raise UsageError(
            f"--qat_distillation is for {heads}; this run trains {type(model).__name__}"
            f"{f' ({kind})' if kind else ''}"
        )
    if job.qat_distillation_file and not classifier:
        raise UsageError(
            f"--qat_distillation_file adds label-free rows to sequence classification only; this run "
            f"trains {type(model).__name__} (distil on its training rows: --qat_distillation alone)"
        )


def with_unlabelled_rows(task: Task, arrays: dict, examples: list, tok: Any, length: int) -> dict:
    """`arrays` (the training rows) with `examples` appended, their labels -100 (no labels' loss)."""
    import numpy as np

    extra = model_arrays(task, task.featurise(examples, tok, length), with_labels=False)
    n = len(next(iter(extra.values())))
    extra["labels"] = np.full((n, *arrays["labels"].shape[1:]), -100, arrays["labels"].dtype)
    return {k: np.concatenate([v, extra[k].astype(v.dtype)]) for k, v in arrays.items()}


def teacher_outputs(plan: Plan, arrays: dict[str, Any]) -> dict[str, Any]:
    """The starting float model's outputs on every training row, as `teacher_<output>` arrays
    (`--qat_distillation`'s teacher; its weights never change, so once before training is enough, and
    a resumed run recomputes the same)."""
    out = predict_outputs(plan.data.task, plan.model, plan.params, arrays, plan.batch)
    return {f"teacher_{k}": v for k, v in out.items()}


def fit_config(plan: Plan) -> FitConfig:
    job = plan.job
    return FitConfig(
        num_steps=plan.num_steps,
        workdir=job.output_dir,
        log_every=job.logging_steps,
        checkpoint_every=job.save_steps,
        max_to_keep=job.save_total_limit,
        eval_every=job.eval_steps,
        progress=job.progress,
        resume_from=job.resume_from_checkpoint,
        plot_metric=plan.metric,
    )


# ---------------------------------------------------------------------------------------------------
# Finish: final evaluation, predictions, export
# ---------------------------------------------------------------------------------------------------
def save_qat_stats(folder: str, model: Any, params: Any, arrays: dict[str, Any], step: int) -> str:
    """The int8 ranges of a `--qat` model: min/max of each quantized tensor of the trained model over
    (up to 256 of) its training rows, written beside the HF files for `export --quantize int8`."""
    import numpy as np

    from mobilebert_jax.export.api import flat_layers
    from mobilebert_jax.export.quantize import calibrate, save_quant_stats

    n = min(QAT_STATS_ROWS, len(arrays["input_ids"]))
    ids = np.asarray(arrays["input_ids"][:n], np.int32)
    rows = {
        "input_ids": ids,
        "attention_mask": np.asarray(arrays.get("attention_mask", np.ones_like(ids))[:n], np.int32),
        "token_type_ids": np.asarray(arrays.get("token_type_ids", np.zeros_like(ids))[:n], np.int32),
    }
    flat, flat_params = flat_layers(model, params)
    stats = calibrate(flat, flat_params, rows)
    path = save_quant_stats(folder, stats, {"source": "finetune --qat", "rows": n, "model_step": step})
    say(f"--qat: int8 ranges of the trained model over {n} training rows: {path}")
    return path


def final_params(plan: Plan, result: Any, best: BestModel, param_shardings: Any) -> tuple[Any, int]:
    """(params, step) of the model to finish with: the last, or the best with --load_best_model_at_end."""
    b = best.best
    if not plan.job.load_best_model_at_end or b is None or b["step"] == result.step:
        return result.state.params, result.step
    params = load_params(best.dir, plan.data.task, plan.job.scan_layers)
    params = jax.device_put(params, param_shardings) if plan.mesh is not None else params
    say(f"loaded the best model ({b['metric']} {b['value']:.4f} at step {b['step']}) for the end")
    return params, b["step"]


def write_test_predictions(plan: Plan, params: Any, kw: dict[str, Any]) -> None:
    task, test_ex, out = plan.data.task, plan.data.test_ex, plan.job.output_dir
    batch_size = plan.job.per_device_eval_batch_size * plan.mesh.devices.size
    outputs = predict_outputs(task, plan.model, params, plan.test_feats, batch_size, **kw)
    test_pred = task.postprocess(test_ex, plan.test_feats, outputs)
    if jax.process_index() == 0:
        path = storage.join(out, "test_" + storage.basename(predictions_path(task, out)))
        task.write_predictions(path, test_ex, test_pred)
        say(f"wrote predictions for {len(test_ex)} test examples to {path}")


def finish(
    plan: Plan, result: Any, evaluator: Evaluator, report: dict[str, Any], t0: float
) -> dict[str, Any]:
    """Final evaluation (with the majority-class baseline), eval_results.json, predictions, hf_model/."""
    job, data, out = plan.job, plan.data, plan.job.output_dir
    params, step = final_params(plan, result, evaluator.best, evaluator.kw["param_shardings"])
    metrics = predictions = baseline = None
    if data.eval_ex is not None:
        say(f"final evaluation of the model of step {step}")
        metrics, predictions = evaluator.at(params, step)
        baseline = data.task.majority_baseline(data.train_ex, data.eval_ex, plan.eval_feats)
    report.update(
        eval=metrics,
        majority_class_baseline=baseline,
        model_step=step,
        best=evaluator.best.best,
        train_seconds=time.perf_counter() - t0,
    )
    host_params = to_host(params)  # every process: gathers FSDP/tensor shards

    def export(folder: str) -> None:
        save_hf_model(folder, host_params, plan.export_config, plan.model, data.tok)
        if job.qat == "int8":
            save_qat_stats(folder, plan.model, host_params, plan.train_arrays, step)
        elif job.qat == "int8-full":
            from mobilebert_jax.export.full_integer import save_full_integer_qat_record

            save_full_integer_qat_record(folder, {"source": "finetune --qat int8-full", "model_step": step})

    if jax.process_index() == 0:
        if predictions is not None:
            data.task.write_predictions(predictions_path(data.task, out), data.eval_ex, predictions)
        storage.replace_dir(storage.join(out, "hf_model"), export)
    if data.test_ex is not None:
        write_test_predictions(plan, params, evaluator.kw)
    if jax.process_index() == 0:  # last: "stopped": "done" means every file above is complete
        write_json(storage.join(out, "eval_results.json"), report)
    if metrics is not None:
        say(f"eval: {json.dumps(metrics)}")
    if baseline is not None:
        say(f"majority-class baseline: {json.dumps(baseline)}")
    say(
        f"wrote {out}: run.json, checkpoints/, metrics.jsonl, loss.png, eval_results.json, predictions*, hf_model/"
    )
    return report


# ---------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------
def _without_training(job: JobConfig, do_eval: bool, do_predict: bool) -> dict[str, Any]:
    """`finetune --do_eval/--do_predict` without --do_train: the evaluate and predict jobs."""
    report: dict[str, Any] = {"stopped": "done"}
    if do_eval:
        report["eval"] = run_evaluate(job)
    if do_predict:
        report["predictions"] = run_predict(job)
    if not do_eval and not do_predict:
        raise UsageError("nothing to do: give --do_train, --do_eval or --do_predict")
    return report


class _Stopped(Exception):
    """SIGTERM/SIGINT after training (during the final evaluation or export)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal = signal_name


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM and SIGINT raise `_Stopped` in the block (single-process runs, as `fit` handles them)."""
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
        yield
        return

    def on(signum, frame):
        raise _Stopped(signal.Signals(signum).name)

    old = {s: signal.signal(s, on) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _preempted(plan: Plan, result: Any, report: dict[str, Any]) -> dict[str, Any]:
    out = plan.job.output_dir
    report.update(signal=result.signal, checkpoint=storage.join(out, "checkpoints", str(result.step)))
    if jax.process_index() == 0:
        write_json(storage.join(out, "eval_results.json"), report)
    say(
        f"stopped ({result.signal or 'preempted'}) at step {result.step} of {plan.num_steps}: checkpoint saved; "
        "no final evaluation or export; run the same command again to resume"
    )
    return report


def run_finetune(job: JobConfig, command: str = "finetune") -> dict[str, Any]:
    """Trains on `train_file`, evaluates on `validation_file`; writes under `output_dir`: run.json,
    orbax checkpoints, metrics.jsonl, loss.png, eval_results.json, predictions and an HF-format
    `hf_model/` (and `best_model/` with `eval_steps`). Every file, label and flag is checked, and
    the output dir's run identity compared, before anything is written.

    The report has "stopped": "done", or "preempted" (SIGTERM/SIGINT during training or the finish:
    a checkpoint at the current step, no final evaluation or export, "signal" names the signal).
    The output dir is locked for the job's life; nothing in it is removed before an explicit
    `--resume_from_checkpoint` has been restored; eval_results.json is written last.
    """
    t0 = time.perf_counter()
    do_train, do_eval, do_predict = phases(job, command)
    if not do_train:
        return _without_training(job, do_eval, do_predict)
    job = dataclasses.replace(job, output_dir=job.output_dir or "runs/finetune")
    job.validate(command)
    rng = jax.random.key(job.seed)
    job, data = read_inputs(job, do_eval, do_predict)
    with run_dir.locked(job.output_dir):
        return _train_and_finish(job, data, rng, t0)


def _train_and_finish(job: JobConfig, data: Inputs, rng: jax.Array, t0: float) -> dict[str, Any]:
    """The job once the output dir is locked: plan, train, finish (a signal during the finish stops it
    as one during training does: the last step's checkpoint is saved, eval_results.json says so)."""
    plan = make_plan(job, data, rng)
    train_data, sharded, step = build_training(plan, rng)
    save = functools.partial(save_hf_model, config=plan.export_config, model=plan.model, tok=data.tok)
    best = BestModel(job.output_dir, plan.metric, plan.greater, save)
    kw = dict(mesh=plan.mesh, rules=plan.rules, param_shardings=sharded.shardings.params)
    evaluator = Evaluator(plan, best, kw)

    def start() -> None:  # from here on the output dir is written
        start_output_dir(plan)
        best.load()

    result = fit(
        fit_config(plan),
        sharded.state,
        step,
        train_data,
        rng,
        batch_sharding=shd.batch_sharding(plan.mesh),
        eval_fn=evaluator if job.eval_steps else None,
        before_write=start,
    )
    if data.prepared:
        train_data.close()
    report = {
        "task": data.task.name,
        "model": job.model,
        "steps": result.step,
        "num_steps": plan.num_steps,
        "stopped": result.stopped,
        "truncated": plan.truncated,
    }
    if result.stopped == "preempted":
        return _preempted(plan, result, report)
    try:
        with _signals_stop():
            return finish(plan, result, evaluator, report, t0)
    except _Stopped as e:  # nothing of the finish is kept but complete files; eval_results.json says so
        result.signal = e.signal
        keep = ("task", "model", "steps", "num_steps", "truncated")
        report = {k: report[k] for k in keep} | {"stopped": "preempted"}
        return _preempted(plan, result, report)
