"""`mobilebert-jax distill`: IB-BERT teacher → MobileBERT student (progressive transfer + distillation).

    mobilebert-jax distill --config paper --teacher runs/ibbert/hf_model --train-file corpus.txt \\
        --output-dir runs/distill --mesh-fsdp 8
    mobilebert-jax distill --config tiny --train-file corpus.txt --output-dir runs/tiny   # CPU, minutes
    mobilebert-jax distill --config paper --compile-only --mesh-fsdp 8    # memory per device, no data

`--config paper` is the paper's recipe (24 stages x 10k steps of layer-wise transfer, then 500k
steps of pre-training distillation, batch 2048 x 512, LAMB lr 1.5e-3); `--config tiny` is a 4-layer
pair that runs on a CPU and, without `--teacher`, first pre-trains its own small teacher on the
training text. Flags override the preset. Rerunning the same command resumes where it stopped.

`--teacher` takes an HF-format folder (ours or transformers'), a folder written by
`mobilebert-jax pretrain|distill` (its `hf_model/` or `final_model/`), an orbax checkpoint, or a
google TF1 checkpoint (a distillation checkpoint's `teacher/` variables when it has them).
The job is `jobs/distill.py:run_distill`; this module turns the flags into its `DistillJobConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

__all__ = ["add_distill_arguments", "config_from_args", "run_distill"]


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `distill` flags to `parser`."""
    a = parser.add_argument
    a(
        "--config",
        required=True,
        help="recipe: a preset (paper, tiny) or a JSON recipe file such as train/configs/distillation.json",
    )
    a(
        "--teacher",
        help="teacher checkpoint (HF folder, run folder, orbax, TF1); tiny pre-trains one if absent",
    )
    a("--teacher-config", help="config json or preset name for a teacher checkpoint without config.json")
    a("--student-config", help="student config json or preset name (default: the preset's student)")
    a("--student", help="initial student checkpoint (HF folder); default: random init")
    a(
        "--train-file",
        help="plain text (one sentence per line, a blank line between documents) or a "
        "prepare-pretraining-data folder (read through Grain)",
    )
    a("--dataloader-num-workers", type=int, default=0, help="reading processes for a prepared folder")
    a("--validation-file", help="plain text for a held-out MLM/NSP evaluation at the end")
    a("--output-dir", required=True, help="stage checkpoints, metrics, final_model/, distill_results.json")
    a("--tokenizer", help="tokenizer folder or hub id (default: the packaged uncased vocab)")
    for name, typ, what in (
        ("steps-per-stage", int, "layer-wise transfer steps per layer (0: skip the phase)"),
        ("distill-steps", int, "pre-training distillation steps (0: skip the phase)"),
        ("learning-rate", float, "peak lr of the distillation phase"),
        ("transfer-learning-rate", float, "base lr of the transfer phase (x3 and the per-stage warmup)"),
        ("warmup-steps", int, "linear warmup of the distillation phase"),
        ("batch-size", int, "global batch size"),
        ("max-seq-length", int, "tokens per example"),
        ("max-predictions-per-seq", int, "masked positions per example"),
        ("num-micro-batches", int, "gradient accumulation inside a step"),
        ("ground-truth-ratio", float, "weight of the one-hot MLM target (1 - teacher's)"),
        ("temperature", float, "teacher softmax temperature"),
        ("checkpoint-every", int, "steps between checkpoints"),
        ("log-every", int, "steps between logged metrics"),
        ("seed", int, "init, data order and dropout seed"),
    ):
        a("--" + name, type=typ, default=None, help=what)
    for name in ("hidden", "attention", "beta", "gamma"):
        a(f"--{name}-distill-factor", type=float, default=None, help=f"weight of the {name} transfer loss")
    a(
        "--teacher-pretrain-steps",
        type=int,
        default=None,
        help="steps to pre-train a teacher when --teacher is absent",
    )
    a("--dupe-factor", type=int, default=5, help="masked copies of each document (BERT's dupe_factor)")
    a(
        "--teacher-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="teacher compute/storage dtype",
    )
    a("--mesh-data", type=int, default=-1, help="data-parallel mesh axis (-1: the remaining devices)")
    a("--mesh-fsdp", type=int, default=1, help="FSDP mesh axis (params and optimizer state sharded)")
    a("--mesh-tensor", type=int, default=1, help="tensor-parallel mesh axis")
    a(
        "--sharding-rules",
        choices=("dp", "fsdp", "tensor", "fsdp_tensor"),
        default=None,
        help="logical-axis rules (default: the preset's)",
    )
    a("--stop-at-step", type=int, default=None, help="stop at this global step (rerun to continue)")
    a(
        "--compile-only",
        action="store_true",
        help="compile the steps on abstract inputs, print memory per device",
    )
    a("--no-progress", action="store_true", help="no progress bars")
    from mobilebert_jax.cli.distributed import add_distributed_arguments

    add_distributed_arguments(parser)


def config_from_args(args: argparse.Namespace) -> Any:
    """The distillation job's `DistillJobConfig` from the parsed flags."""
    from mobilebert_jax.distill.run import DistillConfig
    from mobilebert_jax.jobs.distill import DistillJobConfig

    # the flags that change the recipe: DistillConfig's fields and the transfer loss factors
    names = [f.name for f in dataclasses.fields(DistillConfig)]
    names += [f"{k}_distill_factor" for k in ("hidden", "attention", "beta", "gamma")]
    return DistillJobConfig(
        recipe=args.config,
        output_dir=args.output_dir,
        teacher=args.teacher,
        teacher_config=args.teacher_config,
        student_config=args.student_config,
        student=args.student,
        train_file=args.train_file,
        dataloader_num_workers=args.dataloader_num_workers,
        validation_file=args.validation_file,
        tokenizer=args.tokenizer,
        recipe_overrides={k: getattr(args, k) for k in names if getattr(args, k, None) is not None},
        teacher_pretrain_steps=args.teacher_pretrain_steps,
        dupe_factor=args.dupe_factor,
        teacher_dtype=args.teacher_dtype,
        mesh_data=args.mesh_data,
        mesh_fsdp=args.mesh_fsdp,
        mesh_tensor=args.mesh_tensor,
        sharding_rules=args.sharding_rules,
        stop_at_step=args.stop_at_step,
        compile_only=args.compile_only,
        progress=not args.no_progress,
    )


def run_distill(args: argparse.Namespace) -> int:
    """Runs `distill` with parsed `args`; returns the exit status (errors raise: `error: ...`)."""
    from mobilebert_jax.cli.distributed import initialize_distributed
    from mobilebert_jax.jobs.distill import run_distill as distill

    initialize_distributed(args)
    distill(config_from_args(args))
    return 0
