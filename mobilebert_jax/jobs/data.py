"""A job's data: the task (from flags or the model's config.json), its split files, labels and batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.jobs.config import JobConfig, UsageError
from mobilebert_jax.jobs.model_io import saved_model_config
from mobilebert_jax.jobs.run_dir import say
from mobilebert_jax.tasks import DataError, Task, get_task
from mobilebert_jax.tasks.labels import generic_note

_SPLIT_FLAGS = {"train": "--train_file", "validation": "--validation_file", "test": "--test_file"}


def make_task(name: str | None, options: dict[str, Any]) -> Task:
    """`get_task` with a flag-level error for an unknown name or option."""
    if not name:
        raise UsageError("--task_name is required (e.g. --task_name sst2)")
    try:
        return get_task(name, **options)
    except (KeyError, TypeError) as e:
        raise UsageError(str(e.args[0]) if e.args else str(e)) from None


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
        say(f"warning: {job.model} was fine-tuned on {saved!r}; evaluating it as {name!r} as asked")
    options = {**((cfg.extra.get("task_options") or {}) if same else {}), **job.task_options}
    task = make_task(name, options)
    if cfg is None or task.labels is None:
        return task
    names = tuple(cfg.id2label[i] for i in range(cfg.num_labels))
    if note := generic_note(names, task.labels):
        say(f"note: {job.model}: {note}")
    try:  # by name (tasks/labels.py); names that do not match are refused
        return task.with_model_labels(names)
    except DataError as e:
        raise DataError(f"{job.model}: {e}") from None


def split_path(task: Task, path: str | None, split: str) -> str:
    """The file of a split: the flag's value, else the task's default file name (GLUE) if present."""
    flag = _SPLIT_FLAGS[split]
    if path is None:
        path = task.default_file(split)
        if path is None or not os.path.exists(path):
            raise UsageError(f"task {task.name!r} needs {flag}")
    if not storage.isfile(path):
        raise DataError(f"{flag}: no such file", path)
    return path


def read_split(task: Task, path: str | None, split: str, limit: int | None) -> list:
    examples = task.read(split_path(task, path, split))
    return examples[:limit] if limit else examples


def require_labels(task: Task, examples: list, flag: str, path: str, purpose: str) -> None:
    """Raises `DataError` before any work when `purpose` needs labels that the file lacks."""
    try:
        task.check_labelled(examples, path)
    except DataError as e:
        raise DataError(f"{flag} {path} is unlabelled and {purpose} needs labels: {e}") from None


def model_arrays(
    task: Task, features: dict[str, np.ndarray], with_labels: bool = True
) -> dict[str, np.ndarray]:
    """The features the model takes (and the labels), without the bookkeeping of `postprocess`."""
    keys = list(task.input_keys) + (list(task.label_keys) if with_labels else [])
    missing = [k for k in keys if k not in features]
    if missing:
        raise DataError(
            f"task {task.name} features lack {missing} (unlabelled data?); have {sorted(features)}"
        )
    return {k: features[k] for k in keys}


def padded_batches(
    arrays: dict[str, np.ndarray], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
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


def count_truncation(task: Task, tok: Any, max_len: int, splits: dict[str, tuple]) -> dict[str, dict]:
    """{split: what `featurise` cut} for `splits` = {name: (examples, features)}; a line for each split
    that lost anything (silent truncation changes the task)."""
    out = {}
    for name, (examples, features) in splits.items():
        cut = task.truncation(examples, features, tok, max_len) if examples is not None else None
        if cut is None:
            continue
        out[name] = cut
        if cut["examples"]:
            words = f" ({cut['words']} words past the limit score as 'O')" if cut.get("words") else ""
            say(
                f"warning: {cut['examples']} of {cut['of']} {name} examples are longer than --max_seq_length "
                f"{max_len} and cut{words}"
            )
    return out
