"""A fine-tune's output directory: its run identity (`run.json`), where evaluate/predict write, and
how a job writes its files and messages.

`run.json` records what defines a run: the task and its label set, the model source and config, the
hyperparameters that change the result, and the training file's size and SHA-256. A rerun with the
same identity resumes; a different one is refused before anything is written, with the differences
listed, unless `--overwrite_output_dir` (start clean) or `--resume_from_checkpoint PATH`.

A job holds `.lock` in the dir for its life (`locked`); folders it exports are put in place whole
(`storage.replace_dir`), JSON files written whole (`storage.write_json`). The dir may be local or a
gs:// URL: every file operation goes through `mobilebert_jax.storage`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import jax

from mobilebert_jax import storage
from mobilebert_jax.jobs.config import UsageError
from mobilebert_jax.model.config import PRESETS
from mobilebert_jax.training.state import stored_checkpoints

RUN_FILE = "run.json"
# What a fine-tune writes into its output dir (removed by --overwrite_output_dir).
ARTEFACTS = (
    "checkpoints",
    "tensorboard",
    "hf_model",
    "best_model",
    "metrics.jsonl",
    "loss.png",
    "eval_results.json",
    "best.json",
    RUN_FILE,
)
# (not the evaluate_*/predict_* folders: those are other commands' results, kept by --overwrite_output_dir)
ARTEFACT_GLOBS = ("predictions*", "test_predictions*", storage.TMP_PREFIX + "*")
LOCK_FILE = ".lock"
# Hyperparameters that change what training computes (logging/saving intervals do not).
RESULT_FIELDS = (
    "max_seq_length",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "warmup_ratio",
    "warmup_steps",
    "lr_scheduler_type",
    "weight_decay",
    "optimizer",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "bf16",
    "scan_layers",
    "max_train_samples",
)


def say(msg: str) -> None:
    """A job's progress line (process 0 prints it)."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def predictions_path(task: Any, output_dir: str) -> str:
    """`predictions` plus the task's suffix (.tsv, .json, .txt) in `output_dir`."""
    return storage.join(output_dir, "predictions" + task.predictions_suffix)


def file_fingerprint(path: str) -> dict[str, Any]:
    """{"path", "bytes", "sha256"} of a file (the path is informative; size and hash identify it).

    A prepared pretraining folder (`prepare-pretraining-data`) is identified by its `dataset.json`, which
    records the inputs, options, vocabulary hash, shard plan and counts."""
    manifest = storage.join(path, "dataset.json")
    if storage.isfile(manifest):
        return {**file_fingerprint(manifest), "path": storage.abspath(path)}
    h = hashlib.sha256()
    with storage.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": storage.abspath(path), "bytes": storage.getsize(path), "sha256": h.hexdigest()}


def model_fingerprint(model: str) -> dict[str, Any]:
    """A preset or hub id by name; a local directory by its config and weight files' sizes and hashes."""
    if (model in PRESETS or not storage.is_url(model)) and not os.path.isdir(model):
        return {"name": model, "random_init": True} if model in PRESETS else {"name": model}
    files = {}
    for name in storage.listdir(model):
        if name == "config.json" or name.endswith((".safetensors", ".bin", ".h5", ".index.json")):
            fp = file_fingerprint(storage.join(model, name))
            files[name] = {"bytes": fp["bytes"], "sha256": fp["sha256"]}
    return {"name": storage.abspath(model), "files": files}


def run_identity(job: Any, task: Any, config: Any, num_devices: int) -> dict[str, Any]:
    """What defines a fine-tuning run (JSON-able); see the module docstring."""
    return {
        "task": task.name,
        "task_options": dict(sorted(job.task_options.items())),
        "labels": list(task.labels) if task.labels else None,
        "model": model_fingerprint(job.model),
        "config": config.to_dict(),
        # qat only when on and pad_invariant only when off, so that the identity of the runs before
        # they existed is unchanged
        "hyperparameters": {k: getattr(job, k) for k in RESULT_FIELDS}
        | ({"qat": True if job.qat == "int8" else job.qat} if getattr(job, "qat", "") else {})
        | ({} if getattr(job, "pad_invariant", True) else {"pad_invariant": False}),
        "num_devices": num_devices,  # the global batch is per-device batch x devices x accumulation
        "train_file": file_fingerprint(job.train_file) if job.train_file else None,
    } | _distillation_identity(job)


def _distillation_identity(job: Any) -> dict[str, Any]:
    """`--qat_ranges static`, `--qat_distillation` and its file, where set (absent otherwise: earlier runs
    keep their identity)."""
    out: dict[str, Any] = {}
    if getattr(job, "qat", "") == "int8-full" and getattr(job, "qat_ranges", "batch") == "static":
        out["qat_ranges"] = "static"
    if getattr(job, "qat_distillation", 0):
        out["qat_distillation"] = job.qat_distillation
    if getattr(job, "qat_distillation_file", None):
        out["qat_distillation_file"] = file_fingerprint(job.qat_distillation_file)
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every differing leaf (paths are informative only: a moved file is the same)."""
    a, b = _flat(old), _flat(new)
    files = lambda d: {k: v for k, v in d.items() if k.startswith("model.files.")}  # noqa: E731
    same_files = bool(files(a)) and files(a) == files(b)
    out = []
    order = (
        "task",
        "labels",
        "model",
        "train_file",
        "qat_ranges",
        "qat_distillation",
        "qat_distillation_file",
    )
    order += ("hyperparameters", "num_devices", "config")
    rank = lambda k: (order.index(k.split(".")[0]) if k.split(".")[0] in order else len(order), k)  # noqa: E731
    for k in sorted(set(a) | set(b), key=rank):
        if k.endswith(".path") or (k == "model.name" and same_files):
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            show = lambda v: (repr(v)[:40] + "...") if len(repr(v)) > 43 else repr(v)  # noqa: E731
            out.append(f"{k}: {show(a.get(k, '<absent>'))} -> {show(b.get(k, '<absent>'))}")
    return out


def has_checkpoints(output_dir: str) -> bool:
    """The dir holds checkpoint data (steps set aside as unreadable count: never a new run over them)."""
    return bool(stored_checkpoints(storage.join(output_dir, "checkpoints")))


def holds_run(output_dir: str) -> bool:
    """A fine-tune wrote here (its identity file, checkpoints, or exported model)."""
    return any(storage.exists(storage.join(output_dir, n)) for n in (RUN_FILE, "checkpoints", "hf_model"))


def clean(output_dir: str) -> list[str]:
    """Removes what a fine-tune writes (never anything else); returns the names removed."""
    present = storage.listdir(output_dir) if storage.isdir(output_dir) else []
    names = [n for n in ARTEFACTS if n in present]
    names += [n for n in present if n not in names and any(fnmatch.fnmatch(n, g) for g in ARTEFACT_GLOBS)]
    for name in names:
        storage.rmtree(storage.join(output_dir, name))
    return names


def decide(job: Any, identity: dict[str, Any], say: Any) -> tuple[str, bool]:
    """What a fine-tune does with `job.output_dir`; reads only (call it before writing anything).

    Returns (mode, clean_first): mode "new" (nothing to resume), "resume" (same identity, checkpoints
    present) or "explicit" (`--resume_from_checkpoint`); clean_first: remove the old run's files
    (`--overwrite_output_dir`, or an explicit checkpoint from elsewhere into a dir of another run;
    the job removes them only once that checkpoint has been restored).
    Raises `UsageError` listing the differences when the dir holds another run.
    """
    out = job.output_dir
    path = storage.join(out, RUN_FILE)
    old = None
    if storage.exists(path):
        try:
            old = json.loads(storage.read_text(path))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {"unreadable": path}
    started = has_checkpoints(out) or storage.isdir(storage.join(out, "hf_model"))
    if job.overwrite_output_dir:
        return "new", storage.isdir(out)
    if job.resume_from_checkpoint:
        diff = differences(old, identity) if old is not None else []
        if diff:
            say(f"warning: --resume_from_checkpoint: {out} held a run with other settings: {'; '.join(diff)}")
        src, mine = storage.abspath(job.resume_from_checkpoint), storage.abspath(out)
        inside = src == mine or src.startswith(mine + "/") or src.startswith(mine + os.sep)
        return "explicit", started and not inside and (bool(diff) or old is None)
    if not started:
        return "new", False  # run.json without checkpoints: nothing to lose, the new identity replaces it
    if old is None:
        raise UsageError(
            f"{out} holds checkpoints or a model of a run with no {RUN_FILE} (an earlier version, or another "
            "program): pass --overwrite_output_dir to start a new run there, --resume_from_checkpoint PATH to "
            "continue from one of its checkpoints, or another --output_dir"
        )
    diff = differences(old, identity)
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise UsageError(
            f"{out} holds another run ({len(diff)} difference{'s' if len(diff) > 1 else ''}: {shown}): pass "
            "--overwrite_output_dir to start a new run there, --resume_from_checkpoint PATH to continue from "
            "a checkpoint anyway, or another --output_dir"
        )
    return ("resume" if has_checkpoints(out) else "new"), False


@contextlib.contextmanager
def locked(output_dir: str) -> Iterator[None]:
    """Holds `output_dir/.lock` (pid, host, start time; created exclusively) for the block: a second
    job on the dir is refused with the holder named. A lock of a dead process on this host is stale
    and taken over. A dir created here and left empty is removed again. Process 0 locks. On a bucket
    the lock object is created only if absent (`storage.create_new`)."""
    if jax.process_index() != 0:
        yield
        return
    created = not storage.isdir(output_dir)
    storage.makedirs(output_dir)
    path = storage.join(output_dir, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for attempt in (0, 1):
        if storage.create_new(path, json.dumps(me)):
            break
        holder = _lock_holder(path)
        if attempt or not _stale(holder):
            raise UsageError(
                f"{output_dir} is in use by another job (pid {holder.get('pid')} on {holder.get('host')} "
                f"since {holder.get('started')}): wait for it, or remove {path} if that job is gone"
            ) from None
        storage.remove(path)
    try:
        yield
    finally:
        storage.remove(path)
        if created and not storage.is_url(output_dir):
            with contextlib.suppress(OSError):
                os.rmdir(output_dir)  # only when empty


def _lock_holder(path: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return {}  # being written, or unreadable: not stale (its process may be starting)


def _stale(holder: dict[str, Any]) -> bool:
    """The lock's process is gone (only decidable on the host that holds it)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def write_identity(output_dir: str, identity: dict[str, Any]) -> None:
    """Records the run identity (a file that already holds it is left as it is)."""
    storage.makedirs(output_dir)
    path = storage.join(output_dir, RUN_FILE)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(storage.read_text(path)) == json.loads(json.dumps(identity)):
            return
    storage.write_json(path, identity, sort_keys=True)


def command_output_dir(command: str, model: str, output_dir: str | None, data_file: str) -> str:
    """Where `evaluate`/`predict` write: never into files another command wrote.

    The folder is `<command>_<data file stem>` inside `--output_dir` when that holds a fine-tune (or
    when `--output_dir` is not given: beside the fine-tune whose `hf_model/` or `best_model/` is
    evaluated, else under `runs/<model name>/`); an `--output_dir` that holds no run is used as it is.
    """
    stem = os.path.splitext(storage.basename(data_file))[0] or "data"
    sub = f"{command}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in stem)}"
    if output_dir is not None:
        return storage.join(output_dir, sub) if holds_run(output_dir) else output_dir
    model = model.rstrip("/")
    if storage.is_url(model) or os.path.isdir(model):
        parent = storage.dirname(model)
        if storage.basename(model) in ("hf_model", "best_model") and holds_run(parent):
            return storage.join(parent, sub)
    return os.path.join("runs", os.path.basename(model) or "model", sub)
