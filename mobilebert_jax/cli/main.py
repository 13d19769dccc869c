"""`mobilebert-jax`: finetune, evaluate, predict, pretrain, convert, distill, export.

    mobilebert-jax finetune --task sst2 --model path/to/mobilebert-uncased \\
        --train-file glue/SST-2/train.tsv --validation-file glue/SST-2/dev.tsv --output-dir runs/sst2
    mobilebert-jax finetune --config-file job.json --learning-rate 3e-5   # flags override the file
    mobilebert-jax demo                                                  # the README's main job

Job flags are the fields of `mobilebert_jax.tasks.finetune.JobConfig`, spelled with dashes (HF's names).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from typing import Any

_JOBS = ("finetune", "evaluate", "predict", "pretrain")


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    from mobilebert_jax.tasks.finetune import JobConfig

    hints = typing.get_type_hints(JobConfig)
    p.add_argument("--config-file", help="JSON file of job fields; flags given here override it")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (multi-host TPU/GPU; also via MOBILEBERT_JAX_DISTRIBUTED=1)",
    )
    for f in dataclasses.fields(JobConfig):
        flag = "--" + f.name.replace("_", "-")
        t = hints[f.name]
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif t is dict:
            p.add_argument(flag, type=json.loads, default=None, metavar="JSON")
        else:
            base = (
                next((a for a in typing.get_args(t) if a is not type(None)), t) if typing.get_args(t) else t
            )
            p.add_argument(flag, type=base, default=None)


def _job_from_args(args: argparse.Namespace, **defaults: Any):
    from mobilebert_jax.tasks.finetune import JobConfig

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(JobConfig)
        if getattr(args, f.name) is not None
    }
    base = dict(defaults)
    if args.config_file:
        with open(args.config_file, encoding="utf-8") as fh:
            base.update(json.load(fh))
    return JobConfig.from_dict({**base, **given})


def _demo_job(smoke: bool) -> dict[str, Any]:
    """The main job: QNLI-derived data shipped in the package, a small model from random init."""
    from mobilebert_jax.tasks.finetune import PACKAGE_DATA

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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mobilebert-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    helps = {
        "finetune": "fine-tune and evaluate a task (GLUE, SQuAD, NER, SWAG)",
        "evaluate": "evaluate a model directory on a validation file",
        "predict": "write predictions of a model directory for a file",
        "pretrain": "MLM + NSP pretraining on plain-text documents (LAMB)",
    }
    for name in _JOBS:
        _add_job_flags(sub.add_parser(name, help=helps[name]))
    demo = sub.add_parser("demo", help="the README's main job: QNLI fine-tuning from random init, on CPU")
    _add_job_flags(demo)
    demo.add_argument("--smoke", action="store_true", help="a few steps on a tiny config (CI)")
    demo.add_argument("--skip-export", action="store_true", help="skip the closing LiteRT export and check")
    try:
        from mobilebert_jax.cli.convert import add_convert_arguments
    except ImportError:
        add_convert_arguments = None
    if add_convert_arguments is not None:
        add_convert_arguments(sub.add_parser("convert", help="convert checkpoints: HF PT/TF2 h5/TF1/orbax"))
    try:
        from mobilebert_jax.cli.distill import add_distill_arguments
    except ImportError:
        add_distill_arguments = None
    if add_distill_arguments is not None:
        add_distill_arguments(
            sub.add_parser("distill", help="IB-BERT teacher → MobileBERT knowledge transfer")
        )
    try:
        from mobilebert_jax.cli.export import add_export_arguments
    except ImportError:
        add_export_arguments = None
    if add_export_arguments is not None:
        add_export_arguments(sub.add_parser("export", help="export to LiteRT / ONNX / StableHLO, verified"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (*_JOBS, "demo"):
        from mobilebert_jax.tasks import finetune
        from mobilebert_jax.training.sharding import maybe_initialize_distributed

        maybe_initialize_distributed(True if args.distributed else None)
        if args.command == "demo":
            job = _job_from_args(args, **_demo_job(args.smoke))
        elif args.command == "pretrain":
            job = _job_from_args(args, task="pretraining", optimizer="lamb", learning_rate=1e-3)
        else:
            job = _job_from_args(args)
        run = {
            "finetune": finetune.run_finetune,
            "demo": finetune.run_finetune,
            "pretrain": finetune.run_finetune,
            "evaluate": finetune.run_evaluate,
            "predict": finetune.run_predict,
        }[args.command]
        run(job)
        if args.command == "demo" and not args.skip_export:
            from mobilebert_jax.cli.export import deploy_check

            deploy_check(job.output_dir, job.validation_file, job.max_seq_length, limit=job.max_eval_samples)
        return 0
    if args.command == "convert":
        from mobilebert_jax.cli.convert import run_convert

        return int(run_convert(args) or 0)
    if args.command == "distill":
        from mobilebert_jax.cli.distill import run_distill

        return int(run_distill(args) or 0)
    if args.command == "export":
        from mobilebert_jax.cli.export import run_export

        return int(run_export(args) or 0)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
