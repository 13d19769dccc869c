"""Fine-tuning, evaluation and prediction jobs: task data + model + sharded engine, end to end.

The command line (`mobilebert-jax finetune|evaluate|predict|pretrain`) calls `run_finetune`,
`run_evaluate`, `run_predict` with a `JobConfig` (`config.py`); Colab calls them directly.
The output dir's run identity lives in `run_dir.py`. Sections: task and model · data · evaluation ·
jobs.
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
import optax

from mobilebert_jax.checkpoints.hub import from_pretrained, resolve_model, save_pretrained
from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES, init_params
from mobilebert_jax.jobs import run_dir
from mobilebert_jax.tasks import DataError, Task, get_task
from mobilebert_jax.tasks import pretraining_data as prepared_data
from mobilebert_jax.jobs.config import JobConfig, UsageError
from mobilebert_jax.tasks.metrics import check_finite
from mobilebert_jax.text.tokenizer import MobileBertTokenizer
from mobilebert_jax.training import host_allocator, optim
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

__all__ = ["JobConfig", "UsageError", "run_evaluate", "run_finetune", "run_predict"]
log = logging.getLogger(__name__)
PACKAGE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
_PRED_EXT = {"squad": ".json", "squad_v2": ".json", "pretraining": ".json", "ner": ".txt"}


def predictions_path(task: Task, output_dir: str) -> str:
    return os.path.join(output_dir, "predictions" + _PRED_EXT.get(task.name, ".tsv"))


# ---------------------------------------------------------------------------------------------------
# Task and model
# ---------------------------------------------------------------------------------------------------
def make_task(name: str | None, options: dict[str, Any]) -> Task:
    """`get_task` with a flag-level error for an unknown name or option."""
    if not name:
        raise UsageError("--task_name is required (e.g. --task_name sst2)")
    try:
        return get_task(name, **options)
    except (KeyError, TypeError) as e:
        raise UsageError(str(e.args[0]) if e.args else str(e)) from None


def saved_model_config(model: str) -> MobileBertConfig | None:
    """The config.json of a local model directory (strictly type-checked), else None."""
    if model in PRESETS or not os.path.isfile(os.path.join(model, "config.json")):
        return None
    return MobileBertConfig.from_json_file(os.path.join(model, "config.json"))


def task_for_model(job: JobConfig) -> Task:
    """The task to evaluate `job.model` with: `--task_name` or the config's `finetuning_task`, the task
    options saved at training time (flags override them), and the model's label names (`id2label`)."""
    cfg = saved_model_config(job.model)
    saved = cfg.extra.get("finetuning_task") if cfg is not None else None
    if not job.task and not saved:
        raise UsageError(f"--task_name is required: {job.model} has no finetuning_task in a config.json")
    name = job.task or saved
    same = saved is not None and make_task(name, {}).name == saved
    if saved and not same:
        _say(f"warning: {job.model} was fine-tuned on {saved!r}; evaluating it as {name!r} as asked")
    options = {**((cfg.extra.get("task_options") or {}) if same else {}), **job.task_options}
    task = make_task(name, options)
    if cfg is None or task.labels is None:
        return task
    names = tuple(cfg.id2label[i] for i in range(cfg.num_labels))
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    if not generic and task.name == "ner":
        return dataclasses.replace(task, labels=names)
    if len(names) != task.num_labels:
        raise DataError(
            f"{job.model}: the model has {len(names)} labels {list(names)}, task {task.name!r} has "
            f"{task.num_labels} {list(task.labels)}"
        )
    return task


def load_model(job: JobConfig, task: Task, rng: jax.Array, tok: MobileBertTokenizer | None = None):
    """(config, model, params or None): a preset gives random init (params created sharded later).

    A preset's vocab_size follows the tokenizer unless `model_config` sets it (random init: the
    embedding table is sized for the ids the tokenizer makes)."""
    dtype = jnp.bfloat16 if job.bf16 else jnp.float32
    overrides = {**task.config_overrides(), **job.model_config}
    kw = dict(dtype=dtype, scan_layers=job.scan_layers, remat=job.remat, unroll_layers=job.unroll_layers)
    attn = dict(attention_implementation=job.attention_implementation)
    source = resolve_model(job.model)  # the rule from_pretrained uses: preset, local directory, hub id
    if source.kind == "preset":
        preset_vocab = PRESETS[job.model].get("vocab_size", MobileBertConfig.vocab_size)
        if tok is not None and "vocab_size" not in job.model_config and tok.vocab_size != preset_vocab:
            overrides["vocab_size"] = tok.vocab_size
            _say(f"{job.model}: vocab_size {preset_vocab} -> {tok.vocab_size} (the tokenizer's; random init)")
        try:
            config = MobileBertConfig.from_preset(job.model, **overrides)
        except (TypeError, ValueError) as e:
            raise UsageError(f"--model_config: {e}") from None
        return config, MODEL_CLASSES[task.model_class](config, **kw, **attn), None
    model, params = from_pretrained(source.folder, task.model_class, rng=rng, **kw, **overrides)
    return model.config, model.clone(**attn), params


def check_compatible(config: MobileBertConfig, tok: MobileBertTokenizer, max_seq_length: int) -> None:
    """Ids past the embedding table would be silently filled inside jit: refuse them up front."""
    if tok.vocab_size > config.vocab_size:
        raise UsageError(
            f"the tokenizer has {tok.vocab_size} ids but the model's vocab_size is {config.vocab_size}; "
            "use a matching model config (e.g. --model_config '{\"vocab_size\": 30522}')"
        )
    if max_seq_length > config.max_position_embeddings:
        raise UsageError(
            f"--max_seq_length {max_seq_length} > the model's max_position_embeddings "
            f"{config.max_position_embeddings}"
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


def load_tokenizer(job: JobConfig) -> MobileBertTokenizer:
    if (
        os.path.isdir(job.model)  # a directory wins over a preset name, as in resolve_model
        and any(os.path.exists(os.path.join(job.model, f)) for f in ("vocab.txt", "tokenizer.json"))
    ):
        return MobileBertTokenizer.from_pretrained(job.model)
    return MobileBertTokenizer.default()


def make_schedule(job: JobConfig, num_steps: int) -> optim.Schedule:
    """HF's `--lr_scheduler_type` schedules; warmup from `--warmup_steps` or `--warmup_ratio`."""
    warm = min(job.warmup_steps if job.warmup_steps > 0 else int(job.warmup_ratio * num_steps), num_steps)
    lr = job.learning_rate
    if job.lr_scheduler_type == "linear":
        return optim.warmup_linear_decay(lr, num_steps, warm)
    if job.lr_scheduler_type == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, num_steps, 0.0)
    if job.lr_scheduler_type == "constant" or warm == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
def split_path(task: Task, path: str | None, split: str) -> str:
    """The file of a split: the flag's value, else the task's default file name (GLUE) if present."""
    flag = {"train": "--train_file", "validation": "--validation_file", "test": "--test_file"}[split]
    if path is None:
        default = getattr(task, "default_file", None)
        path = default(split) if default is not None else None
        if path is None or not os.path.exists(path):
            raise UsageError(f"task {task.name!r} needs {flag}")
    if not os.path.isfile(path):
        raise DataError(f"{flag}: no such file", path)
    return path


def read_split(task: Task, path: str | None, split: str, limit: int | None) -> list:
    examples = task.read(split_path(task, path, split))
    return examples[:limit] if limit else examples


def require_labels(task: Task, examples: list, flag: str, path: str, purpose: str) -> None:
    """Raises `DataError` before any work when `purpose` needs labels that the file lacks."""
    if task.name == "pretraining":
        return  # labels are made from the text
    try:
        task.references(examples, None)
    except DataError as e:
        layout = getattr(task, "layout", None)
        hint = ""
        if layout is not None and path.lower().endswith(".tsv"):
            hint = f"; a GLUE {task.name} TSV has its label in the {layout.tsv[2]!r} column"
        raise DataError(f"{flag} {path} is unlabelled and {purpose} needs labels: {e}{hint}") from None


def model_arrays(
    task: Task, features: dict[str, np.ndarray], with_labels: bool = True
) -> dict[str, np.ndarray]:
    keys = list(task.input_keys) + (list(task.label_keys) if with_labels else [])
    missing = [k for k in keys if k not in features]
    if missing:
        raise DataError(
            f"task {task.name} features lack {missing} (unlabelled data?); have {sorted(features)}"
        )
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
        local = shd.host_rows(b) if sharding is not None else b  # no mesh: each process runs it all
        out = to_host(step(params, shd.make_global_batch(local, sharding)))
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
        sharding = shd.batch_sharding(kw.get("mesh"))
        batches = (b for b, _ in padded_batches(model_arrays(task, features), batch_size))
        if sharding is not None:  # each process feeds its rows of every batch
            batches = (shd.host_rows(b) for b in batches)
        metrics = evaluate(eval_step, params, batches, sharding)
        outputs = predictions = None
    else:
        outputs = predict_outputs(task, model, params, features, batch_size, **kw)
        predictions = task.postprocess(examples, features, outputs)
        metrics = task.metric(predictions, task.references(examples, features))
    check_finite(metrics, f"evaluation of {task.name}", outputs)  # NaN metrics are an error, not a score
    return metrics, predictions


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


def metric_names(task: Task, examples: list, features: dict) -> list[str] | None:
    """The names `task.metric` returns (scored on the references themselves); None where unknown."""
    if task.name == "pretraining":
        return None  # its evaluation reports the losses and accuracies of `finalize_eval`
    try:
        refs = task.references(examples, features)
        if isinstance(refs, list) and refs and isinstance(refs[0], tuple):  # SQuAD: (id, answers)
            preds: Any = {qid: (answers[0] if answers else "") for qid, answers in refs}
        else:
            preds = refs
        return sorted(task.metric(preds, refs))
    except Exception:
        return None


def _export(path: str, params: Any, config: MobileBertConfig, model: Any, tok: MobileBertTokenizer) -> None:
    """Writes an HF directory; `params` on the host (`to_host`, which every process must call first)."""
    save_pretrained(path, params, config, type(model).__name__)
    tok.save_pretrained(path)


QAT_STATS_ROWS = 256


def save_qat_stats(folder: str, model: Any, params: Any, arrays: dict[str, np.ndarray], step: int) -> str:
    """The int8 ranges of a `--qat` model: min/max of each quantized tensor of the trained model over
    (up to 256 of) its training rows, written beside the HF files for `export --quantize int8`."""
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
    _say(f"--qat: int8 ranges of the trained model over {n} training rows: {path}")
    return path


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def run_finetune(job: JobConfig, command: str = "finetune") -> dict[str, Any]:
    """Trains on `train_file`, evaluates on `validation_file`; writes under `output_dir`: run.json,
    orbax checkpoints, metrics.jsonl, loss.png, eval_results.json, predictions and an HF-format
    `hf_model/` (and `best_model/` with `eval_steps`). Every file, label and flag is checked, and
    the output dir's run identity compared, before anything is written.

    The report has "stopped": "done", or "preempted" (SIGTERM/SIGINT: a checkpoint at the current
    step, no final evaluation or export, "signal" names the signal).
    """
    t0 = time.perf_counter()
    do_train, do_eval, do_predict = phases(job, command)
    if not do_train:
        report: dict[str, Any] = {"stopped": "done"}
        if do_eval:
            report["eval"] = run_evaluate(job)
        if do_predict:
            report["predictions"] = run_predict(job)
        if not do_eval and not do_predict:
            raise UsageError("nothing to do: give --do_train, --do_eval or --do_predict")
        return report
    job = dataclasses.replace(job, output_dir=job.output_dir or "runs/finetune")
    job.validate(command)
    out = job.output_dir
    rng = jax.random.key(job.seed)

    # --- inputs: every file read and checked before anything is written ---------------------------
    task = make_task(job.task, job.task_options)
    tok = load_tokenizer(job)
    # a prepare-pretraining-data folder is streamed through Grain (tasks/pretraining_data.py)
    prepared = task.name == "pretraining" and prepared_data.is_prepared(job.train_file)
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
        test_path = split_path(task, job.test_file, "test")
        test_ex = read_split(task, test_path, "test", job.max_predict_samples)
    if job.eval_steps and not do_eval:
        raise UsageError("--eval_steps needs an evaluation (--do_eval and --validation_file)")
    n = f" and {len(eval_ex)} evaluation" if eval_ex is not None else ""
    n_train = prepared_data.num_instances(train_path) if prepared else len(train_ex)
    _say(f"task {task.name}: {n_train} training{n} examples")
    if job.qat:
        import importlib.util

        if importlib.util.find_spec("qwix") is None:
            raise UsageError("--qat needs qwix: pip install 'mobilebert-jax[export]'")
        if prepared:
            raise UsageError("--qat does not apply to a prepared pretraining folder")
    config, model, params = load_model(job, task, rng, tok)
    check_compatible(config, tok, job.max_seq_length)
    mesh = job_mesh(job)
    n_dev = mesh.devices.size

    # --- the output dir: same run (resume), new run, or refusal ----------------------------------
    identity = run_dir.run_identity(job, task, config, n_dev)
    mode, clean_first = run_dir.decide(job, identity, _say)

    train_arrays = None if prepared else model_arrays(task, task.featurise(train_ex, tok, job.max_seq_length))
    eval_feats = task.featurise(eval_ex, tok, job.max_seq_length) if eval_ex is not None else None
    test_feats = task.featurise(test_ex, tok, job.max_seq_length) if test_ex is not None else None
    metric, greater = best_metric(job, task)
    if job.eval_steps:
        names = metric_names(task, eval_ex, eval_feats)
        if names is not None and metric not in names:
            raise UsageError(
                f"--metric_for_best_model {metric!r} is not a metric of task {task.name}: {names}"
            )

    rules = shd.logical_rules(job.sharding_rules, mesh, config)
    batch = job.per_device_train_batch_size * n_dev * job.gradient_accumulation_steps
    n_train = n_train if prepared else len(next(iter(train_arrays.values())))
    batch = min(batch, n_train - n_train % (n_dev * job.gradient_accumulation_steps)) or batch
    if batch > n_train:
        raise DataError(
            f"--train_file {train_path}: {n_train} training features, fewer than one batch of {batch} "
            f"({n_dev} devices x --gradient_accumulation_steps {job.gradient_accumulation_steps})"
        )
    steps_per_epoch = max(n_train // batch, 1)
    num_steps = job.max_steps if job.max_steps > 0 else max(int(job.num_train_epochs * steps_per_epoch), 1)
    schedule = make_schedule(job, num_steps)
    make_tx = optim.adamw if job.optimizer == "adamw" else optim.lamb
    clip = job.max_grad_norm if job.max_grad_norm > 0 else None
    tx = make_tx(schedule, weight_decay=job.weight_decay, eps=job.adam_epsilon, clip_norm=clip)

    # --- from here on the output dir is written --------------------------------------------------
    if jax.process_index() == 0:
        if clean_first:
            gone = run_dir.clean(out)
            if gone:
                _say(f"removed the earlier run's {', '.join(gone)} from {out}")
        run_dir.write_identity(out, identity)
    if mode == "new":
        _say(f"new run in {out}")

    if prepared:
        train_data = prepared_data.prepared_iterator(train_path, batch, seed=job.seed,
            num_workers=job.dataloader_num_workers, max_seq_length=job.max_seq_length, tokenizer=tok,
            keys=task.input_keys + task.label_keys, task_options=job.task_options)  # fmt: skip
        example = train_data.example()
    else:
        train_data = ArrayIterator(train_arrays, batch, seed=job.seed)
        example = {k: v[:batch] for k, v in train_arrays.items()}
    sharded = create_train_state(model_init_fn(model, example), tx, rng, mesh, rules, params=params)
    if job.qat:
        from mobilebert_jax.export.quantize import qat_model

        _say("--qat: training with fake int8 quantization (qwix ODML rules of export --quantize int8)")
    step = make_train_step(
        loss_fn_for(qat_model(model) if job.qat else model),
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
    if host_allocator.status() is not None:
        _say(f"host allocator: {host_allocator.status()}")
    eval_bs = job.per_device_eval_batch_size * n_dev
    kw = dict(mesh=mesh, rules=rules, param_shardings=sharded.shardings.params)
    export_config = config.replace(
        extra={**config.extra, "finetuning_task": task.name, "task_options": dict(job.task_options)}
    )
    best_file, best_dir = os.path.join(out, "best.json"), os.path.join(out, "best_model")
    best = None
    if os.path.exists(best_file):
        with open(best_file, encoding="utf-8") as f:
            best = json.load(f)
    last_eval: dict[str, Any] = {}

    def eval_fn(state, s):
        nonlocal best
        metrics, predictions = evaluate_task(task, model, state.params, eval_ex, eval_feats, eval_bs, **kw)
        last_eval.update(step=s, metrics=metrics, predictions=predictions)
        value = metrics.get(metric)
        # every process decides (the metrics are global) and gathers; process 0 writes
        if value is not None and math.isfinite(value):
            if best is None or (value > best["value"] if greater else value < best["value"]):
                host_params = to_host(state.params)
                best = {"step": s, "metric": metric, "value": value}
                if jax.process_index() == 0:
                    _export(best_dir, host_params, export_config, model, tok)
                    _write_json(best_file, best)
                    _say(f"step {s}: best {metric} so far ({value:.4f}): saved {best_dir}")
        return {k: v for k, v in metrics.items() if isinstance(v, int | float)}

    result = fit(
        FitConfig(
            num_steps=num_steps,
            workdir=out,
            log_every=job.logging_steps,
            checkpoint_every=job.save_steps,
            max_to_keep=job.save_total_limit,
            eval_every=job.eval_steps,
            progress=job.progress,
            resume_from=job.resume_from_checkpoint,
            plot_metric=metric,
        ),
        sharded.state,
        step,
        train_data,
        rng,
        batch_sharding=shd.batch_sharding(mesh),
        eval_fn=eval_fn if job.eval_steps else None,
    )
    if prepared:
        train_data.close()
    report = {
        "task": task.name,
        "model": job.model,
        "steps": result.step,
        "num_steps": num_steps,
        "stopped": result.stopped,
    }
    if result.stopped == "preempted":
        report.update(signal=result.signal, checkpoint=os.path.join(out, "checkpoints", str(result.step)))
        if jax.process_index() == 0:
            _write_json(os.path.join(out, "eval_results.json"), report)
        _say(
            f"stopped ({result.signal or 'preempted'}) at step {result.step} of {num_steps}: checkpoint saved; "
            "no final evaluation or export; run the same command again to resume"
        )
        return report

    params_final, final_step = result.state.params, result.step
    if job.load_best_model_at_end and best is not None and best["step"] != result.step:
        _, best_params = from_pretrained(best_dir, task.model_class, scan_layers=job.scan_layers)
        params_final = (
            jax.device_put(best_params, sharded.shardings.params) if mesh is not None else best_params
        )
        final_step = best["step"]
        _say(f"loaded the best model ({metric} {best['value']:.4f} at step {final_step}) for the end")
    metrics = predictions = baseline = None
    if do_eval:
        if last_eval.get("step") == final_step:
            metrics, predictions = last_eval["metrics"], last_eval["predictions"]
        else:
            metrics, predictions = evaluate_task(
                task, model, params_final, eval_ex, eval_feats, eval_bs, **kw
            )
        baseline = majority_baseline(task, train_ex, eval_ex, eval_feats)
    report.update(
        eval=metrics,
        majority_class_baseline=baseline,
        model_step=final_step,
        best=best,
        train_seconds=time.perf_counter() - t0,
    )
    host_final = to_host(params_final)  # every process: gathers FSDP/tensor shards
    if jax.process_index() == 0:
        _write_json(os.path.join(out, "eval_results.json"), report)
        if predictions is not None:
            task.write_predictions(predictions_path(task, out), eval_ex, predictions)
        _export(os.path.join(out, "hf_model"), host_final, export_config, model, tok)
        if job.qat:
            save_qat_stats(os.path.join(out, "hf_model"), model, host_final, train_arrays, final_step)
    if test_ex is not None:
        outputs = predict_outputs(task, model, params_final, test_feats, eval_bs, **kw)
        test_pred = task.postprocess(test_ex, test_feats, outputs)
        if jax.process_index() == 0:
            path = os.path.join(out, "test_" + os.path.basename(predictions_path(task, out)))
            task.write_predictions(path, test_ex, test_pred)
            _say(f"wrote predictions for {len(test_ex)} test examples to {path}")
    if metrics is not None:
        _say(f"eval: {json.dumps(metrics)}")
    if baseline is not None:
        _say(f"majority-class baseline: {json.dumps(baseline)}")
    _say(
        f"wrote {out}: run.json, checkpoints/, metrics.jsonl, loss.png, eval_results.json, predictions*, hf_model/"
    )
    return report


def _model_for_eval(job: JobConfig, command: str):
    job.validate(command)
    task = task_for_model(job)
    tok = load_tokenizer(job)
    return job, task, tok


def _load_for_eval(job: JobConfig, task: Task, tok: MobileBertTokenizer):
    config, model, params = load_model(job, task, jax.random.key(job.seed), tok)
    check_compatible(config, tok, job.max_seq_length)
    if params is None:
        params = init_params(model, job.seed)
        _say(f"warning: {job.model} is a preset: random weights")
    return model, params


def run_evaluate(job: JobConfig) -> dict[str, float]:
    """Evaluates `--model` (an HF directory, e.g. a finetune's hf_model/) on `validation_file`; the task,
    labels and task options come from the model's config.json unless flags give them. Writes
    eval_results.json and predictions to its own folder (see `run_dir.command_output_dir`)."""
    job, task, tok = _model_for_eval(job, "evaluate")
    path = split_path(task, job.validation_file, "validation")
    eval_ex = read_split(task, path, "validation", job.max_eval_samples)
    require_labels(task, eval_ex, "--validation_file", path, "evaluate")
    out = run_dir.command_output_dir("evaluate", job.model, job.output_dir, path)
    model, params = _load_for_eval(job, task, tok)
    feats = task.featurise(eval_ex, tok, job.max_seq_length)
    metrics, predictions = evaluate_task(task, model, params, eval_ex, feats, job.per_device_eval_batch_size)
    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        _write_json(os.path.join(out, "eval_results.json"), metrics)
        if predictions is not None:
            task.write_predictions(predictions_path(task, out), eval_ex, predictions)
    _say(f"eval: {json.dumps(metrics)}")
    _say(f"wrote {os.path.join(out, 'eval_results.json')}")
    return metrics


def run_predict(job: JobConfig) -> str:
    """Writes predictions of `--model` on `test_file` (labels, if any, are not needed) to its own
    folder; task, labels and task options as in `run_evaluate`."""
    job, task, tok = _model_for_eval(job, "predict")
    path = split_path(task, job.test_file or job.validation_file, "test")
    examples = read_split(task, path, "test", job.max_predict_samples)
    out_dir = run_dir.command_output_dir("predict", job.model, job.output_dir, path)
    model, params = _load_for_eval(job, task, tok)
    feats = task.featurise(examples, tok, job.max_seq_length)
    outputs = predict_outputs(task, model, params, feats, job.per_device_eval_batch_size)
    predictions = task.postprocess(examples, feats, outputs)
    out = predictions_path(task, out_dir)
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        task.write_predictions(out, examples, predictions)
    _say(f"wrote predictions for {len(examples)} examples to {out}")
    return out
