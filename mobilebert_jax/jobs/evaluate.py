"""The evaluate and predict jobs, and the evaluation that fine-tuning runs during and after training."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.jobs import run_dir
from mobilebert_jax.jobs.config import JobConfig
from mobilebert_jax.jobs.data import (
    count_truncation,
    model_arrays,
    padded_batches,
    read_split,
    require_labels,
    split_path,
    task_for_model,
)
from mobilebert_jax.jobs.model_io import (
    check_compatible,
    load_model,
    load_tokenizer,
    resolve_max_seq_length,
)
from mobilebert_jax.jobs.run_dir import predictions_path, say
from mobilebert_jax.model.heads import init_params
from mobilebert_jax.storage import write_json
from mobilebert_jax.tasks import Task
from mobilebert_jax.tasks.metrics import check_finite
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.objectives import loss_fn_for
from mobilebert_jax.training.trainer import evaluate, make_eval_step, make_predict_step, to_host


def predict_outputs(
    task: Task, model, params, features, batch_size: int, mesh=None, rules=None, param_shardings=None
) -> dict[str, np.ndarray]:
    """The task's `output_keys` of the model over all features (numpy, [N, ...])."""

    def fn(p, batch):
        out = model.apply({"params": p}, **{k: batch[k] for k in task.input_keys}, deterministic=True)
        return {k: getattr(out, k) for k in task.output_keys}

    step = make_predict_step(fn, param_shardings=param_shardings, mesh=mesh, rules=rules)
    sharding = shd.batch_sharding(mesh)
    chunks: dict[str, list] = {k: [] for k in task.output_keys}
    for b, m in padded_batches(model_arrays(task, features, with_labels=False), batch_size):
        local = shd.host_rows(b) if sharding is not None else b  # no mesh: each process runs it all
        out = to_host(step(params, shd.make_global_batch(local, sharding)))
        for k in task.output_keys:
            chunks[k].append(np.asarray(out[k])[:m])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def loss_metrics(
    task: Task, model, params, features, batch_size: int, mesh=None, rules=None, param_shardings=None
) -> dict[str, float]:
    """The training objective's loss and accuracies over all features (`task.evaluate_by_loss`)."""
    eval_step = make_eval_step(loss_fn_for(model), param_shardings=param_shardings, mesh=mesh, rules=rules)
    sharding = shd.batch_sharding(mesh)
    batches = (b for b, _ in padded_batches(model_arrays(task, features), batch_size))
    if sharding is not None:  # each process feeds its rows of every batch
        batches = (shd.host_rows(b) for b in batches)
    return evaluate(eval_step, params, batches, sharding)


def evaluate_task(task, model, params, examples, features, batch_size, **kw) -> tuple[dict, Any]:
    """(metrics, predictions); a task evaluated by its loss has no predictions."""
    if task.evaluate_by_loss:
        metrics = loss_metrics(task, model, params, features, batch_size, **kw)
        outputs = predictions = None
    else:
        outputs = predict_outputs(task, model, params, features, batch_size, **kw)
        predictions = task.postprocess(examples, features, outputs)
        metrics = task.metric(predictions, task.references(examples, features))
    check_finite(metrics, f"evaluation of {task.name}", outputs)  # NaN metrics are an error, not a score
    return metrics, predictions


def _task_and_tokenizer(job: JobConfig, command: str) -> tuple[Task, Any]:
    """The task (see `task_for_model`) and tokenizer of `job.model`, after checking the flags."""
    job.validate(command)
    task = task_for_model(job)
    tok = load_tokenizer(job.model)
    return task, tok


def _model(job: JobConfig, task: Task, tok) -> tuple[JobConfig, Any, Any]:
    """(job with its length decided, model, params) of `job.model`, checked against the tokenizer; a
    preset gets random weights."""
    config, model, params = load_model(job, task, jax.random.key(job.seed))
    job = resolve_max_seq_length(job, config)
    check_compatible(config, tok, job.max_seq_length, job.model)
    if params is None:
        params = init_params(model, job.seed)
        say(f"warning: {job.model} is a preset: random weights")
    return job, model, params


def run_evaluate(job: JobConfig) -> dict[str, float]:
    """Evaluates `--model` (an HF directory, e.g. a finetune's hf_model/) on `validation_file`; the task,
    labels and task options come from the model's config.json unless flags give them. Writes
    eval_results.json and predictions to its own folder (see `run_dir.command_output_dir`)."""
    task, tok = _task_and_tokenizer(job, "evaluate")
    path = split_path(task, job.validation_file, "validation")
    eval_ex = read_split(task, path, "validation", job.max_eval_samples)
    require_labels(task, eval_ex, "--validation_file", path, "evaluate")
    out = run_dir.command_output_dir("evaluate", job.model, job.output_dir, path)
    job, model, params = _model(job, task, tok)
    feats = task.featurise(eval_ex, tok, job.max_seq_length)
    cut = count_truncation(task, tok, job.max_seq_length, {"evaluation": (eval_ex, feats)})
    metrics, predictions = evaluate_task(task, model, params, eval_ex, feats, job.per_device_eval_batch_size)
    if jax.process_index() == 0:
        storage.makedirs(out)
        write_json(storage.join(out, "eval_results.json"), metrics | ({"truncated": cut} if cut else {}))
        if predictions is not None:
            task.write_predictions(predictions_path(task, out), eval_ex, predictions)
    say(f"eval: {json.dumps(metrics)}")
    say(f"wrote {storage.join(out, 'eval_results.json')}")
    return metrics


def run_predict(job: JobConfig) -> str:
    """Writes predictions of `--model` on `test_file` (labels, if any, are not needed) to its own
    folder; task, labels and task options as in `run_evaluate`. Returns the predictions file."""
    task, tok = _task_and_tokenizer(job, "predict")
    path = split_path(task, job.test_file or job.validation_file, "test")
    examples = read_split(task, path, "test", job.max_predict_samples)
    out_dir = run_dir.command_output_dir("predict", job.model, job.output_dir, path)
    job, model, params = _model(job, task, tok)
    feats = task.featurise(examples, tok, job.max_seq_length)
    count_truncation(task, tok, job.max_seq_length, {"test": (examples, feats)})
    outputs = predict_outputs(task, model, params, feats, job.per_device_eval_batch_size)
    predictions = task.postprocess(examples, feats, outputs)
    out = predictions_path(task, out_dir)
    if jax.process_index() == 0:
        storage.makedirs(out_dir)
        task.write_predictions(out, examples, predictions)
    say(f"wrote predictions for {len(examples)} examples to {out}")
    return out
