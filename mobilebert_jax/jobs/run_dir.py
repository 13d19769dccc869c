"""A fine-tune's output directory: its run identity (`run.json`), where evaluate/predict write, and
how a job writes its files and messages.

`run.json` records what defines a run: the task and its label set, the model source and config, the
hyperparameters that change the result, and the training file's size and SHA-256. A rerun with the
same identity resumes; a different one is refused before anything is written, with the differences
listed, unless `--overwrite_output_dir` (start clean) or `--resume_from_checkpoint PATH`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from typing import Any

import jax

from mobilebert_jax.jobs.config import UsageError
from mobilebert_jax.model.config import PRESETS

RUN_FILE = "run.json"
# What a fine-tune writes into its output dir (removed by --overwrite_output_dir).
ARTEFACTS = ("checkpoints", "tensorboard", "hf_model", "best_model", "metrics.jsonl", "loss.png",
             "eval_results.json", "best.json", RUN_FILE)  # fmt: skip
# (not the evaluate_*/predict_* folders: those are other commands' results, kept by --overwrite_output_dir)
ARTEFACT_GLOBS = ("predictions*", "test_predictions*")
# Hyperparameters that change what training computes (logging/saving intervals do not).
RESULT_FIELDS = ("max_seq_length", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                 "num_train_epochs", "max_steps", "warmup_ratio", "warmup_steps", "lr_scheduler_type",
                 "weight_decay", "optimizer", "adam_epsilon", "max_grad_norm", "seed", "bf16", "scan_layers",
                 "max_train_samples")  # fmt: skip


def say(msg: str) -> None:
    """A job's progress line (process 0 prints it)."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def predictions_path(task: Any, output_dir: str) -> str:
    """`predictions` plus the task's suffix (.tsv, .json, .txt) in `output_dir`."""
    return os.path.join(output_dir, "predictions" + task.predictions_suffix)


def file_fingerprint(path: str) -> dict[str, Any]:
    """{"path", "bytes", "sha256"} of a file (the path is informative; size and hash identify it).

    A prepared pretraining folder (`prepare-pretraining-data`) is identified by its `dataset.json`, which
    records the inputs, options, vocabulary hash, shard plan and counts."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset.json")):
        return {**file_fingerprint(os.path.join(path, "dataset.json")), "path": os.path.abspath(path)}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def model_fingerprint(model: str) -> dict[str, Any]:
    """A preset or hub id by name; a local directory by its config and weight files' sizes and hashes."""
    if not os.path.isdir(model):
        return {"name": model, "random_init": True} if model in PRESETS else {"name": model}
    files = {}
    for name in sorted(os.listdir(model)):
        if name == "config.json" or name.endswith((".safetensors", ".bin", ".h5", ".index.json")):
            fp = file_fingerprint(os.path.join(model, name))
            files[name] = {"bytes": fp["bytes"], "sha256": fp["sha256"]}
    return {"name": os.path.abspath(model), "files": files}


def run_identity(job: Any, task: Any, config: Any, num_devices: int) -> dict[str, Any]:
    """What defines a fine-tuning run (JSON-able); see the module docstring."""
    return {
        "task": task.name,
        "task_options": dict(sorted(job.task_options.items())),
        "labels": list(task.labels) if task.labels else None,
        "model": model_fingerprint(job.model),
        "config": config.to_dict(),
        # qat only when on, so that the identity of the runs before it existed is unchanged
        "hyperparameters": {k: getattr(job, k) for k in RESULT_FIELDS}
        | ({"qat": True} if getattr(job, "qat", False) else {}),
        "num_devices": num_devices,  # the global batch is per-device batch x devices x accumulation
        "train_file": file_fingerprint(job.train_file) if job.train_file else None,
    }


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
    order = ("task", "labels", "model", "train_file", "hyperparameters", "num_devices", "config")
    rank = lambda k: (order.index(k.split(".")[0]) if k.split(".")[0] in order else len(order), k)  # noqa: E731
    for k in sorted(set(a) | set(b), key=rank):
        if k.endswith(".path") or (k == "model.name" and same_files):
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            show = lambda v: (repr(v)[:40] + "...") if len(repr(v)) > 43 else repr(v)  # noqa: E731
            out.append(f"{k}: {show(a.get(k, '<absent>'))} -> {show(b.get(k, '<absent>'))}")
    return out


def has_checkpoints(output_dir: str) -> bool:
    d = os.path.join(output_dir, "checkpoints")
    return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def holds_run(output_dir: str) -> bool:
    """A fine-tune wrote here (its identity file, checkpoints, or exported model)."""
    return any(os.path.exists(os.path.join(output_dir, n)) for n in (RUN_FILE, "checkpoints", "hf_model"))


def clean(output_dir: str) -> list[str]:
    """Removes what a fine-tune writes (never anything else); returns the names removed."""
    gone = []
    names = [n for n in ARTEFACTS if os.path.lexists(os.path.join(output_dir, n))]
    for pattern in ARTEFACT_GLOBS:
        names += sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, pattern)))
    for name in names:
        p = os.path.join(output_dir, name)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
        gone.append(name)
    return gone


def decide(job: Any, identity: dict[str, Any], say: Any) -> tuple[str, bool]:
    """What a fine-tune does with `job.output_dir`; reads only (call it before writing anything).

    Returns (mode, clean_first): mode "new" (nothing to resume), "resume" (same identity, checkpoints
    present) or "explicit" (`--resume_from_checkpoint`); clean_first: remove the old run's files
    (`--overwrite_output_dir`, or an explicit checkpoint from elsewhere into a dir of another run).
    Raises `UsageError` listing the differences when the dir holds another run.
    """
    out = job.output_dir
    path = os.path.join(out, RUN_FILE)
    old = None
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {"unreadable": path}
    started = has_checkpoints(out) or os.path.isdir(os.path.join(out, "hf_model"))
    if job.overwrite_output_dir:
        return "new", os.path.isdir(out)
    if job.resume_from_checkpoint:
        diff = differences(old, identity) if old is not None else []
        if diff:
            say(f"warning: --resume_from_checkpoint: {out} held a run with other settings: {'; '.join(diff)}")
        src = os.path.abspath(job.resume_from_checkpoint)
        inside = src.startswith(os.path.abspath(out) + os.sep)
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


def write_identity(output_dir: str, identity: dict[str, Any]) -> None:
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, RUN_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(identity, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(output_dir, RUN_FILE))


def command_output_dir(command: str, model: str, output_dir: str | None, data_file: str) -> str:
    """Where `evaluate`/`predict` write: never into files another command wrote.

    The folder is `<command>_<data file stem>` inside `--output_dir` when that holds a fine-tune (or
    when `--output_dir` is not given: beside the fine-tune whose `hf_model/` or `best_model/` is
    evaluated, else under `runs/<model name>/`); an `--output_dir` that holds no run is used as it is.
    """
    stem = os.path.splitext(os.path.basename(data_file.rstrip("/")))[0] or "data"
    sub = f"{command}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in stem)}"
    if output_dir is not None:
        return os.path.join(output_dir, sub) if holds_run(output_dir) else output_dir
    model = model.rstrip("/")
    if os.path.isdir(model):
        parent = os.path.dirname(os.path.abspath(model))
        if os.path.basename(model) in ("hf_model", "best_model") and holds_run(parent):
            return os.path.join(parent, sub)
    return os.path.join("runs", os.path.basename(model) or "model", sub)
