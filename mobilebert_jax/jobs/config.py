"""`JobConfig`: the fields of a fine-tuning/evaluation job, their help, their checks.

Field names are HF's (`run_glue.py`, `run_qa.py`, `run_ner.py`, `TrainingArguments`), so the command
line accepts HF's flags (`--learning_rate`, also spelled `--learning-rate`) and a JSON job file uses
the same keys. `validate(command)` checks every value before any work starts; `UsageError` is the
error of a wrong flag or flag combination (the CLI exits 2 on it, 1 on data errors).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from typing import Any

from mobilebert_jax import storage

TRAIN_COMMANDS = ("finetune", "pretrain", "demo")
ALL_COMMANDS = (*TRAIN_COMMANDS, "evaluate", "predict")
LR_SCHEDULES = ("linear", "constant", "constant_with_warmup", "cosine")
OPTIMIZERS = ("adamw", "lamb")
SHARDING_RULES = ("dp", "fsdp", "tensor", "fsdp_tensor")
QAT_TARGETS = ("int8", "int8-full")  # the `export --quantize` modes `--qat` trains for
QAT_RANGES = ("auto", "static", "batch")  # --qat int8-full's activation ranges
QAT_RANGE_ROWS = 128  # training rows --qat_ranges static calibrates on (export's --calibration-samples)
# Task options that HF's scripts take as top-level flags; they go into `task_options`.
TASK_OPTION_FLAGS: dict[str, tuple[type, str]] = {
    "doc_stride": (int, "SQuAD: tokens of overlap between the windows of a long context"),
    "max_query_length": (int, "SQuAD: questions are cut to this many tokens"),
    "n_best_size": (int, "SQuAD: start/end candidates kept when decoding an answer"),
    "max_answer_length": (int, "SQuAD: the longest answer (tokens) decoding may return"),
    "null_score_diff_threshold": (float, "SQuAD v2: predict no-answer when null score - best > this"),
    "version_2_with_negative": (bool, "SQuAD: the file has unanswerable questions (as task squad_v2)"),
}
ALIASES = {"task_name": "task", "model_name_or_path": "model"}  # HF names of our fields
# The data shipped in the package (the demo job's QNLI-derived files).
PACKAGE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


class UsageError(ValueError):
    """A flag, flag value or flag combination that cannot run (the CLI exits with status 2)."""


def _f(default: Any, help: str, cmds: tuple[str, ...] = ALL_COMMANDS, **kw: Any) -> Any:
    meta = {"help": help, "cmds": cmds, **kw}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_T = TRAIN_COMMANDS
_EVAL = (*TRAIN_COMMANDS, "evaluate")
_PRED = (*TRAIN_COMMANDS, "predict")


def _need(ok: bool, flag: str, expected: str, value: Any) -> None:
    if not ok:
        raise UsageError(f"--{flag} must be {expected}, got {value!r}")


@dataclasses.dataclass
class JobConfig:
    """One fine-tuning/evaluation job. Field names follow HF's `run_glue.py` / `TrainingArguments`."""

    task: str | None = _f(
        None,
        "task name (GLUE, squad, squad_v2, ner, swag, pretraining); evaluate/predict default to "
        "the model's config.json finetuning_task",
        aliases=("task_name",),
        metavar="NAME",
    )
    model: str = _f(
        "mobilebert-uncased",
        "an HF model directory, a hub id (google/mobilebert-uncased: the pretrained "
        "weights) or a preset: an architecture with RANDOM weights (mobilebert-uncased, mobilebert-tiny, "
        "mobilebert-test; the default is one)",
        aliases=("model_name_or_path",),
        metavar="NAME_OR_PATH",
    )
    model_config: dict = _f({}, "model config overrides as JSON, e.g. '{\"num_hidden_layers\": 4}'")
    train_file: str | None = _f(
        None, "training data (GLUE .tsv/.csv/.jsonl, SQuAD .json, CoNLL)", _T, metavar="PATH"
    )
    validation_file: str | None = _f(None, "evaluation data (labelled)", _EVAL, metavar="PATH")
    test_file: str | None = _f(None, "data to predict on (labels not needed)", _PRED, metavar="PATH")
    output_dir: str | None = _f(
        None,
        "where results go (finetune: runs/finetune; evaluate/predict: a subfolder named after the "
        "command and data file, beside the model's run)",
        metavar="DIR",
    )
    overwrite_output_dir: bool = _f(False, "start a new run in an output dir that holds another one", _T)
    resume_from_checkpoint: str | None = _f(
        None,
        "continue from this checkpoint (run/checkpoints/N, a checkpoints/ dir or a run dir) even "
        "if its settings differ",
        _T,
        metavar="PATH",
    )
    do_train: bool | None = _f(None, "train (default when no --do_* flag is given)", ("finetune",))
    do_eval: bool | None = _f(None, "evaluate on --validation_file after training", ("finetune",))
    do_predict: bool | None = _f(None, "write predictions for --test_file after training", ("finetune",))
    max_seq_length: int | None = _f(
        None,
        "tokens per example, longer inputs truncated (default: the fine-tune's, saved in the model's "
        "config.json, else 128 or the model's max_position_embeddings if fewer)",
        metavar="N",
    )
    per_device_train_batch_size: int = _f(32, "training examples per device per micro-batch", _T, metavar="N")
    per_device_eval_batch_size: int = _f(64, "evaluation examples per device", metavar="N")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer update", _T, metavar="N")
    learning_rate: float = _f(5e-5, "peak learning rate", _T, metavar="LR")
    num_train_epochs: float = _f(3.0, "epochs (ignored when --max_steps > 0)", _T, metavar="X")
    max_steps: int = _f(-1, "optimizer updates; > 0 overrides --num_train_epochs", _T, metavar="N")
    warmup_ratio: float = _f(0.1, "fraction of the steps with linear warmup", _T, metavar="X")
    warmup_steps: int = _f(0, "warmup steps; > 0 overrides --warmup_ratio", _T, metavar="N")
    lr_scheduler_type: str = _f(
        "linear", f"learning-rate schedule after warmup: {', '.join(LR_SCHEDULES)}", _T, metavar="NAME"
    )
    weight_decay: float = _f(0.01, "decoupled weight decay (not on biases and norms)", _T, metavar="X")
    optimizer: str = _f(
        "adamw", "adamw (fine-tuning) or lamb (pretraining, MobileBERT's recipe)", _T, metavar="NAME"
    )
    adam_epsilon: float = _f(1e-6, "Adam epsilon", _T, metavar="X")
    max_grad_norm: float = _f(1.0, "global gradient-norm clip (0: no clipping)", _T, metavar="X")
    seed: int = _f(42, "seed of init, dropout and shuffling", metavar="N")
    bf16: bool = _f(False, "bf16 compute (params, optimizer state and losses stay float32)")
    scan_layers: bool = _f(False, "scan over layers (fast compile; changes the checkpoint layout)")
    remat: bool = _f(False, "recompute activations in the backward pass (less memory)", _T)
    qat: str = _f(
        "",
        "quantization-aware training for an `export --quantize` mode: int8 (bare --qat: qwix's fake "
        "int8 of that mode's rules; hf_model/ gets the int8 ranges, quant_stats.msgpack, that export "
        "then uses) or int8-full (fake int8 of every tensor of the full-integer graph; export "
        "calibrates on text)",
        ("finetune",),
        metavar="MODE",
        const="int8",
    )
    qat_ranges: str = _f(
        "auto",
        "--qat int8-full's activation ranges: static (min/max of each quantized tensor over the first "
        f"{QAT_RANGE_ROWS} training rows through the starting model, fixed for the run: the file's calibrated "
        "ranges), batch (each batch's own min/max), auto (static from a trained --model, batch from a "
        "random init)",
        ("finetune",),
        metavar="MODE",
    )
    qat_distillation: float = _f(
        0.0,
        "with --qat: weight of self-distillation, the KL divergence from the starting float model's "
        "predictions (the teacher: --model, frozen) to the fake-quantized model's; the labels' loss "
        "gets 1 - WEIGHT (0: labels only; single-label sequence classification, token classification, QA)",
        ("finetune",),
        metavar="WEIGHT",
    )
    qat_distillation_file: str | None = _f(
        None,
        "more text for --qat_distillation, in the task's format with labels optional (as --test_file): "
        "its rows join the training rows with the teacher's predictions as their only target",
        ("finetune",),
        metavar="FILE",
    )
    # Unrolled layers trained faster per step on CPU than a scan over them (docs/benchmarks.md); inference outside a
    # job (`from_pretrained` + `jit(apply)`) picks by input size (AUTO_UNROLL_MAX_TOKENS). Same params and numbers either way.
    unroll_layers: bool = _f(True, "run the layers unrolled (--no-unroll-layers: one lax.scan over them)")
    attention_implementation: str = _f(
        "auto",
        "attention kernel: auto (cuDNN flash attention on GPU in bf16 "
        "when attention dropout is off), default, cudnn or xla",
        metavar="NAME",
    )
    # On by default: a model's answers (and, in training, its gradients) must not depend on how its batch
    # was padded (MobileBERT's trigram embedding lets the [PAD] row leak in, HF #9860). Off: HF's padded math.
    pad_invariant: bool = _f(
        True,
        "zero the word embeddings at padded positions: padding changes no "
        "output (--no-pad-invariant: HF's padded math; docs/training.md)",
    )
    mesh_data: int = _f(-1, "data-parallel mesh axis size (-1: all remaining devices)", metavar="N")
    mesh_fsdp: int = _f(1, "FSDP mesh axis size (-1: all remaining devices)", metavar="N")
    mesh_tensor: int = _f(1, "tensor-parallel mesh axis size (-1: all remaining devices)", metavar="N")
    sharding_rules: str = _f("dp", f"parameter sharding: {', '.join(SHARDING_RULES)}", metavar="NAME")
    logging_steps: int = _f(10, "log training metrics every N steps", _T, metavar="N")
    eval_steps: int | None = _f(
        None, "evaluate every N steps during training (and at the end)", _T, metavar="N"
    )
    save_steps: int = _f(
        500, "save a checkpoint every N steps (the last step is always saved)", _T, metavar="N"
    )
    save_total_limit: int | None = _f(2, "checkpoints kept on disk", _T, metavar="N")
    metric_for_best_model: str | None = _f(
        None,
        "eval metric (or loss, eval_loss) that picks the best checkpoint with --eval_steps "
        "(default: the task's main metric)",
        _T,
        metavar="NAME",
    )
    greater_is_better: bool | None = _f(
        None, "higher --metric_for_best_model is better (default: true, false for a loss)", _T
    )
    load_best_model_at_end: bool = _f(False, "evaluate and export the best model (needs --eval_steps)", _T)
    max_train_samples: int | None = _f(None, "use the first N training examples", _T, metavar="N")
    max_eval_samples: int | None = _f(None, "use the first N evaluation examples", _EVAL, metavar="N")
    max_predict_samples: int | None = _f(None, "use the first N prediction examples", _PRED, metavar="N")
    task_options: dict = _f({}, "task options as JSON, e.g. '{\"doc_stride\": 64}'")
    progress: bool = _f(True, "show a progress bar")
    dataloader_num_workers: int = _f(
        0, "reading processes for a prepared (prepare-pretraining-data) train folder", _T, metavar="N"
    )

    @classmethod
    def from_file(cls, path: str, **overrides: Any) -> JobConfig:
        """A JSON file of these fields (unknown keys are an error naming them)."""
        return cls.from_dict({**read_job_file(path), **overrides}, source=path)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "job config") -> JobConfig:
        """Fields by name (HF aliases and top-level task options accepted); types checked strictly."""
        d = {ALIASES.get(k, k): v for k, v in d.items()}
        opts = {k: d.pop(k) for k in list(d) if k in TASK_OPTION_FLAGS}
        if opts:
            d["task_options"] = {**opts, **(d.get("task_options") or {})}
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise UsageError(f"unknown job config field(s) {bad}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            check_type(k, v, hints[k], source)
        return cls(**d)

    def validate(self, command: str) -> None:
        """Raises `UsageError` naming the flag for a value or combination that cannot run."""
        self._validate_values()
        if command in TRAIN_COMMANDS:
            self._validate_training()
            self._validate_combinations()

    def _validate_values(self) -> None:
        """The fields every command reads."""
        need = _need
        need(
            self.per_device_eval_batch_size >= 1,
            "per_device_eval_batch_size",
            ">= 1",
            self.per_device_eval_batch_size,
        )
        L = self.max_seq_length
        need(L is None or L >= 8, "max_seq_length", ">= 8", L)
        for name in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
            v = getattr(self, name)
            need(v == -1 or v >= 1, name, "-1 or >= 1", v)
        need(
            self.sharding_rules in SHARDING_RULES,
            "sharding_rules",
            f"one of {SHARDING_RULES}",
            self.sharding_rules,
        )
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            v = getattr(self, name)
            need(v is None or v >= 1, name, ">= 1", v)

    def _validate_training(self) -> None:
        """The fields of a training run."""
        need = _need
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "save_steps",
        ):
            v = getattr(self, name)
            need(v >= 1, name, ">= 1", v)
        need(
            math.isfinite(self.learning_rate) and self.learning_rate >= 0,
            "learning_rate",
            "a finite number >= 0",
            self.learning_rate,
        )
        need(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            "-1 (use epochs) or >= 1",
            self.max_steps,
        )
        need(
            self.max_steps > 0 or (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0),
            "num_train_epochs",
            "> 0",
            self.num_train_epochs,
        )
        need(0.0 <= self.warmup_ratio <= 1.0, "warmup_ratio", "in [0, 1]", self.warmup_ratio)
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        need(self.dataloader_num_workers >= 0, "dataloader_num_workers", ">= 0", self.dataloader_num_workers)
        need(
            self.lr_scheduler_type in LR_SCHEDULES,
            "lr_scheduler_type",
            f"one of {LR_SCHEDULES}",
            self.lr_scheduler_type,
        )
        need(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        need(self.adam_epsilon > 0, "adam_epsilon", "> 0", self.adam_epsilon)
        need(self.max_grad_norm >= 0, "max_grad_norm", ">= 0 (0: no clipping)", self.max_grad_norm)
        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", self.optimizer)
        need(self.eval_steps is None or self.eval_steps >= 1, "eval_steps", ">= 1", self.eval_steps)
        need(
            self.save_total_limit is None or self.save_total_limit >= 1,
            "save_total_limit",
            ">= 1",
            self.save_total_limit,
        )

    def _validate_combinations(self) -> None:
        """Flags that exclude each other in a training run."""
        if self.load_best_model_at_end and not self.eval_steps:
            raise UsageError(
                "--load_best_model_at_end needs --eval_steps N (the best model is chosen by "
                "evaluations during training)"
            )
        if self.qat:
            _need(self.qat in QAT_TARGETS, "qat", f"one of {QAT_TARGETS}", self.qat)
            for bad, flag in (
                (self.scan_layers, "--scan_layers"),
                (not self.unroll_layers, "--no-unroll-layers"),
                (self.bf16, "--bf16"),
            ):
                if bad:
                    raise UsageError(
                        f"--qat cannot be combined with {flag} (the fake quantization follows "
                        "each unrolled float32 layer by its module path)"
                    )
        _need(self.qat_ranges in QAT_RANGES, "qat_ranges", f"one of {QAT_RANGES}", self.qat_ranges)
        if self.qat_ranges != "auto" and self.qat != "int8-full":
            raise UsageError("--qat_ranges applies to --qat int8-full")
        if self.qat_distillation:
            _need(0.0 <= self.qat_distillation <= 1.0, "qat_distillation", "in [0, 1]", self.qat_distillation)
            if not self.qat:
                raise UsageError(
                    "--qat_distillation needs --qat (it distils the float model into its QAT run)"
                )
        if self.qat_distillation_file and not self.qat_distillation:
            raise UsageError("--qat_distillation_file needs --qat_distillation WEIGHT > 0")
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise UsageError("--overwrite_output_dir and --resume_from_checkpoint exclude each other")


def read_job_file(path: str) -> dict[str, Any]:
    """The JSON object of a `--config_file` (errors name the file)."""
    try:
        d = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise UsageError(f"--config_file {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--config_file {path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UsageError(f"--config_file {path}: expected a JSON object of job fields")
    return d


def _type_name(t: Any) -> str:
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a JSON object",
    }[t]


def check_type(name: str, value: Any, hint: Any, source: str) -> None:
    """Strict JSON types: "false" is not a bool, "0.1" not a number, true not an integer."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None and optional:
        return
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[base]
    if not ok:
        got = f"{value!r} ({'a string' if isinstance(value, str) else type(value).__name__})"
        raise UsageError(
            f"{source}: field {name!r} must be {_type_name(base)}{' or null' if optional else ''}, got {got}"
        )


def field_default(f: dataclasses.Field) -> Any:
    return {} if f.default_factory is not dataclasses.MISSING else f.default


def command_defaults(command: str, smoke: bool = False) -> dict[str, Any]:
    """The job fields a command starts from (flags and a --config_file override them).

    `pretrain` is MLM + NSP with LAMB; `demo` is the README's main job: QNLI-derived data shipped in
    the package, a small model from random init (`smoke`: a few steps on a tiny config, for CI)."""
    if command == "pretrain":
        return dict(task="pretraining", optimizer="lamb", learning_rate=1e-3)
    if command != "demo":
        return {}
    data = os.path.join(PACKAGE_DATA, "qnli_demo")
    job = dict(
        task="qnli",
        model="mobilebert-uncased",
        # 2 layers of the real MobileBERT block (vocab, widths, trigram, bottlenecks, 4 FFNs).
        model_config=dict(num_hidden_layers=2, attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1),
        train_file=os.path.join(data, "train.tsv"),
        validation_file=os.path.join(data, "dev.tsv"),
        output_dir="runs/main",
        max_seq_length=96,  # covers 96% of the pairs whole
        per_device_train_batch_size=32,
        learning_rate=5e-4,
        num_train_epochs=3.0,
        warmup_ratio=0.1,
        logging_steps=10,
        save_steps=100,
        scan_layers=True,
        mesh_data=-1,
    )
    if smoke:
        job.update(
            model="mobilebert-test",
            model_config=dict(vocab_size=30522),
            max_seq_length=64,
            max_train_samples=256,
            max_eval_samples=64,
            max_steps=8,
            per_device_train_batch_size=16,
            logging_steps=2,
            save_steps=4,
            output_dir="runs/smoke",
            progress=False,
        )
    return job
