"""Fine-tuning, evaluation and prediction jobs: task data + model + sharded engine, end to end.

The command line (`mobilebert-jax finetune|evaluate|predict|pretrain`) calls `run_finetune`,
`run_evaluate`, `run_predict` with a `JobConfig`; Colab calls them directly. Sections: config ·
model · data · evaluation · jobs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.checkpoints.hub import from_pretrained, save_pretrained
from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES, init_params
from mobilebert_jax.tasks import Task, get_task
from mobilebert_jax.text.tokenizer import MobileBertTokenizer
from mobilebert_jax.training import optim
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.objectives import loss_fn_for
from mobilebert_jax.training.state import create_train_state, model_init_fn
from mobilebert_jax.training.trainer import (
    ArrayIterator,
    FitConfig,
    evaluate,
    fit,
    make_eval_step,
    make_predict_step,
    make_train_step,
    to_host,
)

log = logging.getLogger(__name__)
PACKAGE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
_PRED_EXT = {"squad": ".json", "squad_v2": ".json", "pretraining": ".json", "ner": ".txt"}


def predictions_path(task: Task, output_dir: str) -> str:
    return os.path.join(output_dir, "predictions" + _PRED_EXT.get(task.name, ".tsv"))


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class JobConfig:
    """One fine-tuning/evaluation job. Field names follow HF's `run_glue.py` / `TrainingArguments`."""

    task: str = "qnli"  # a name from mobilebert_jax.tasks.TASK_NAMES
    model: str = "mobilebert-uncased"  # a preset (random init), an HF directory, or a hub id
    model_config: dict = dataclasses.field(default_factory=dict)  # config overrides (e.g. num_hidden_layers)
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None  # for `predict`
    output_dir: str = "runs/finetune"
    max_seq_length: int = 128
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # adamw (fine-tuning) | lamb (pretraining, MobileBERT's recipe)
    adam_epsilon: float = 1e-6
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool = False  # bf16 compute, float32 params/optimizer/loss
    scan_layers: bool = False
    remat: bool = False
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    sharding_rules: str = "dp"  # dp | fsdp | tensor | fsdp_tensor
    logging_steps: int = 10
    eval_steps: int | None = None  # evaluate every N steps (and at the end)
    save_steps: int = 500
    save_total_limit: int = 2
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    task_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"doc_stride": 64}
    progress: bool = True

    @classmethod
    def from_file(cls, path: str, **overrides: Any) -> JobConfig:
        """A JSON file of these fields (unknown keys are an error naming them)."""
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return cls.from_dict({**d, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown job config field(s) {bad}; known: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------
def load_model(job: JobConfig, task: Task, rng: jax.Array):
    """(config, model, params or None): a preset gives random init (params created sharded later)."""
    dtype = jnp.bfloat16 if job.bf16 else jnp.float32
    overrides = {**task.config_overrides(), **job.model_config}
    kw = dict(dtype=dtype, scan_layers=job.scan_layers, remat=job.remat)
    if job.model in PRESETS:
        config = MobileBertConfig.from_preset(job.model, **overrides)
        return config, MODEL_CLASSES[task.model_class](config, **kw), None
    model, params = from_pretrained(job.model, task.model_class, rng=rng, **kw, **overrides)
    return model.config, model, params


def check_compatible(config: MobileBertConfig, tok: MobileBertTokenizer, max_seq_length: int) -> None:
    """Ids past the embedding table would be silently filled inside jit: refuse them up front."""
    if tok.vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} ids but the model's vocab_size is {config.vocab_size}; "
            "use a matching model config (e.g. --model-config '{\"vocab_size\": 30522}')"
        )
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(
            f"--max-seq-length {max_seq_length} > max_position_embeddings {config.max_position_embeddings}"
        )


def job_mesh(job: JobConfig):
    """The job's mesh; fixed sizes (no -1) smaller than the device count use the first devices."""
    sizes = (job.mesh_data, job.mesh_fsdp, job.mesh_tensor)
    devices = jax.devices()
    if -1 not in sizes:
        devices = devices[: math.prod(sizes)]
    return shd.make_mesh(*sizes, devices=devices)


def load_tokenizer(job: JobConfig) -> MobileBertTokenizer:
    if (
        job.model not in PRESETS
        and os.path.isdir(job.model)
        and any(os.path.exists(os.path.join(job.model, f)) for f in ("vocab.txt", "tokenizer.json"))
    ):
        return MobileBertTokenizer.from_pretrained(job.model)
    return MobileBertTokenizer.default()


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
def read_split(task: Task, path: str | None, split: str, limit: int | None) -> list:
    if path is None:
        default = getattr(task, "default_file", None)
        path = default(split) if default is not None else None
        if path is None or not os.path.exists(path):
            raise FileNotFoundError(f"task {task.name!r} needs --{split}-file (no default file for it)")
    examples = task.read(path)
    return examples[:limit] if limit else examples


def model_arrays(
    task: Task, features: dict[str, np.ndarray], with_labels: bool = True
) -> dict[str, np.ndarray]:
    keys = list(task.input_keys) + (list(task.label_keys) if with_labels else [])
    missing = [k for k in keys if k not in features]
    if missing:
        raise KeyError(f"features lack {missing}; have {sorted(features)}")
    return {k: features[k] for k in keys}


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int):
    """Fixed-size batches (one compile); the last is padded and marked by `example_mask` = 0."""
    n = len(next(iter(arrays.values())))
    for i in range(0, n, batch_size):
        b = {k: v[i : i + batch_size] for k, v in arrays.items()}
        m = len(next(iter(b.values())))
        mask = np.zeros(batch_size, np.int32)
        mask[:m] = 1
        if m < batch_size:
            b = {
                k: np.concatenate([v, np.zeros((batch_size - m, *v.shape[1:]), v.dtype)])
                for k, v in b.items()
            }
        b["example_mask"] = mask
        yield b, m


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------
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
        out = to_host(step(params, shd.make_global_batch(b, sharding)))
        for k in task.output_keys:
            chunks[k].append(np.asarray(out[k])[:m])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def evaluate_task(task, model, params, examples, features, batch_size, **kw) -> tuple[dict, Any]:
    """(metrics, predictions). Pretraining reports loss and MLM/NSP accuracy (its logits are [N, T, V])."""
    if task.name == "pretraining":
        eval_step = make_eval_step(
            loss_fn_for(model),
            param_shardings=kw.get("param_shardings"),
            mesh=kw.get("mesh"),
            rules=kw.get("rules"),
        )
        batches = (b for b, _ in padded_batches(model_arrays(task, features), batch_size))
        return evaluate(eval_step, params, batches, shd.batch_sharding(kw.get("mesh"))), None
    outputs = predict_outputs(task, model, params, features, batch_size, **kw)
    predictions = task.postprocess(examples, features, outputs)
    return task.metric(predictions, task.references(examples, features)), predictions


def majority_baseline(task: Task, train_examples, eval_examples, eval_features) -> dict[str, float] | None:
    """The metric of always predicting the most frequent training label (classification tasks)."""
    if not task.labels or task.name in ("ner", "swag", "squad", "squad_v2", "pretraining"):
        return None
    labels = [getattr(e, "label", None) for e in train_examples]
    labels = [x for x in labels if x is not None]
    if not labels:
        return None
    top = Counter(labels).most_common(1)[0][0]
    idx = task.labels.index(top) if isinstance(top, str) else int(top)
    preds = np.full(len(eval_examples), idx)
    return task.metric(preds, task.references(eval_examples, eval_features))


# ---------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def run_finetune(job: JobConfig) -> dict[str, Any]:
    """Trains on `train_file`, evaluates on `validation_file`; writes under `output_dir`: orbax
    checkpoints, metrics.jsonl, loss.png, eval_results.json, predictions and an HF-format `hf_model/`."""
    t0 = time.perf_counter()
    os.makedirs(job.output_dir, exist_ok=True)
    rng = jax.random.key(job.seed)
    task = get_task(job.task, **job.task_options)
    tok = load_tokenizer(job)
    train_ex = read_split(task, job.train_file, "train", job.max_train_samples)
    eval_ex = read_split(task, job.validation_file, "validation", job.max_eval_samples)
    task = task.adapt(train_ex)
    _say(f"task {task.name}: {len(train_ex)} training and {len(eval_ex)} evaluation examples")
    config, model, params = load_model(job, task, rng)
    check_compatible(config, tok, job.max_seq_length)
    train_feats = task.featurise(train_ex, tok, job.max_seq_length)
    eval_feats = task.featurise(eval_ex, tok, job.max_seq_length)

    mesh = job_mesh(job)
    rules = shd.logical_rules(job.sharding_rules, mesh, config)
    n_dev = mesh.devices.size
    batch = job.per_device_train_batch_size * n_dev * job.gradient_accumulation_steps
    n_train = len(next(iter(train_feats.values())))
    batch = min(batch, n_train - n_train % (n_dev * job.gradient_accumulation_steps)) or batch
    steps_per_epoch = max(n_train // batch, 1)
    num_steps = job.max_steps if job.max_steps > 0 else max(int(job.num_train_epochs * steps_per_epoch), 1)
    schedule = optim.warmup_linear_decay(job.learning_rate, num_steps, int(job.warmup_ratio * num_steps))
    if job.optimizer not in ("adamw", "lamb"):
        raise ValueError(f"--optimizer must be adamw or lamb, got {job.optimizer!r}")
    make_tx = optim.adamw if job.optimizer == "adamw" else optim.lamb
    tx = make_tx(schedule, weight_decay=job.weight_decay, eps=job.adam_epsilon, clip_norm=job.max_grad_norm)
    train_arrays = model_arrays(task, train_feats)
    example = {k: v[:batch] for k, v in train_arrays.items()}
    sharded = create_train_state(model_init_fn(model, example), tx, rng, mesh, rules, params=params)
    step = make_train_step(
        loss_fn_for(model),
        state_shardings=sharded.shardings,
        mesh=mesh,
        rules=rules,
        num_micro_batches=job.gradient_accumulation_steps,
        learning_rate=schedule,
    )
    _say(
        f"model {type(model).__name__} ({job.model}): "
        f"{sum(x.size for x in jax.tree.leaves(sharded.state.params)):,} params; mesh {dict(mesh.shape)}; "
        f"{num_steps} steps of {batch} examples ({num_steps / steps_per_epoch:.2f} epochs)"
    )
    eval_bs = job.per_device_eval_batch_size * n_dev
    kw = dict(mesh=mesh, rules=rules, param_shardings=sharded.shardings.params)

    def eval_fn(state, s):
        metrics, _ = evaluate_task(task, model, state.params, eval_ex, eval_feats, eval_bs, **kw)
        return metrics

    result = fit(
        FitConfig(
            num_steps=num_steps,
            workdir=job.output_dir,
            log_every=job.logging_steps,
            checkpoint_every=job.save_steps,
            max_to_keep=job.save_total_limit,
            eval_every=job.eval_steps,
            progress=job.progress,
        ),
        sharded.state,
        step,
        ArrayIterator(train_arrays, batch, seed=job.seed),
        rng,
        batch_sharding=shd.batch_sharding(mesh),
        eval_fn=eval_fn if job.eval_steps else None,
    )
    metrics, predictions = evaluate_task(task, model, result.state.params, eval_ex, eval_feats, eval_bs, **kw)
    baseline = majority_baseline(task, train_ex, eval_ex, eval_feats)
    report = {
        "task": task.name,
        "model": job.model,
        "steps": result.step,
        "stopped": result.stopped,
        "eval": metrics,
        "majority_class_baseline": baseline,
        "train_seconds": time.perf_counter() - t0,
    }
    if jax.process_index() == 0:
        with open(os.path.join(job.output_dir, "eval_results.json"), "w") as f:
            json.dump(report, f, indent=2)
        if predictions is not None:
            task.write_predictions(predictions_path(task, job.output_dir), eval_ex, predictions)
        hf_dir = os.path.join(job.output_dir, "hf_model")
        save_pretrained(hf_dir, jax.device_get(result.state.params), config, type(model).__name__)
        tok.save_pretrained(hf_dir)
    _say(f"eval: {json.dumps(metrics)}")
    if baseline is not None:
        _say(f"majority-class baseline: {json.dumps(baseline)}")
    _say(
        f"wrote {job.output_dir}: checkpoints/, metrics.jsonl, loss.png, eval_results.json, predictions*, hf_model/"
    )
    return report


def run_evaluate(job: JobConfig) -> dict[str, float]:
    """Evaluates `--model` (an HF directory, e.g. a finetune's hf_model/) on `validation_file`."""
    task = get_task(job.task, **job.task_options)
    tok = load_tokenizer(job)
    eval_ex = read_split(task, job.validation_file, "validation", job.max_eval_samples)
    config, model, params = load_model(job, task, jax.random.key(job.seed))
    check_compatible(config, tok, job.max_seq_length)
    if params is None:
        params = init_params(model, job.seed)
        _say(f"warning: {job.model} is a preset: evaluating random weights")
    feats = task.featurise(eval_ex, tok, job.max_seq_length)
    metrics, predictions = evaluate_task(task, model, params, eval_ex, feats, job.per_device_eval_batch_size)
    os.makedirs(job.output_dir, exist_ok=True)
    with open(os.path.join(job.output_dir, "eval_results.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    _say(f"eval: {json.dumps(metrics)}")
    return metrics


def run_predict(job: JobConfig) -> str:
    """Writes predictions of `--model` on `test_file` (labels, if any, are not needed)."""
    task = get_task(job.task, **job.task_options)
    tok = load_tokenizer(job)
    path = job.test_file or job.validation_file
    if path is None:
        raise FileNotFoundError("predict needs --test-file")
    examples = task.read(path)
    config, model, params = load_model(job, task, jax.random.key(job.seed))
    check_compatible(config, tok, job.max_seq_length)
    if params is None:
        params = init_params(model, job.seed)
    feats = task.featurise(examples, tok, job.max_seq_length)
    outputs = predict_outputs(task, model, params, feats, job.per_device_eval_batch_size)
    predictions = task.postprocess(examples, feats, outputs)
    os.makedirs(job.output_dir, exist_ok=True)
    out = predictions_path(task, job.output_dir)
    task.write_predictions(out, examples, predictions)
    _say(f"wrote predictions for {len(examples)} examples to {out}")
    return out
