"""`mobilebert-jax`: finetune, evaluate, predict, pretrain, convert, distill, export, pipeline,
prepare-pretraining-data.

    mobilebert-jax finetune --task sst2 --model path/to/mobilebert-uncased \\
        --train-file glue/SST-2/train.tsv --validation-file glue/SST-2/dev.tsv --output-dir runs/sst2
    mobilebert-jax finetune --config-file job.json --learning-rate 3e-5   # flags override the file
    mobilebert-jax demo                                                  # the README's main job

Job flags are the fields of `mobilebert_jax.jobs.config.JobConfig`, spelled with dashes (HF's names).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any

from mobilebert_jax.cli.common import add_common_flags, json_object

_JOBS = ("finetune", "evaluate", "predict", "pretrain")


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, `error: ...`, exit status 2 (subcommand parsers are this class too).
    No prefix matching: `--learning_rat` is an unknown flag, not `--learning_rate`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse API
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _str2bool(v: str) -> bool:
    low = v.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _names(name: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """HF's `--learning_rate` and our `--learning-rate` (and HF aliases such as `--task_name`)."""
    out: list[str] = []
    for n in (name, *aliases):
        for flag in ("--" + n, "--" + n.replace("_", "-")):
            if flag not in out:
                out.append(flag)
    return out


def _add_job_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The `JobConfig` fields that `command` uses, each under its HF `_` name and the `-` spelling."""
    from mobilebert_jax.jobs.config import TASK_OPTION_FLAGS, JobConfig, field_default

    hints = typing.get_type_hints(JobConfig)
    p.add_argument(
        "--config_file", "--config-file", help="JSON file of job fields; flags given here override it"
    )
    if command != "evaluate" and command != "predict":
        from mobilebert_jax.cli.distributed import add_distributed_arguments

        add_distributed_arguments(p)
    else:
        p.set_defaults(distributed=False, coordinator_address=None, num_processes=None, process_id=None)
    for f in dataclasses.fields(JobConfig):
        if command not in f.metadata["cmds"]:
            continue
        flags = _names(f.name, f.metadata.get("aliases", ()))
        t = hints[f.name]
        default = field_default(f)
        help_ = f"{f.metadata['help']} (default: {default if default not in ({}, None) else 'none'})"
        if command in ("evaluate", "predict") and f.name == "output_dir":
            help_ = f.metadata["help"]
        base = next((a for a in typing.get_args(t) if a is not type(None)), t) if typing.get_args(t) else t
        if base is bool:
            p.add_argument(
                *flags,
                dest=f.name,
                nargs="?",
                const=True,
                type=_str2bool,
                default=None,
                metavar="BOOL",
                help=help_,
            )
            p.add_argument(
                *("--no-" + x[2:] for x in flags[:2]),
                dest=f.name,
                action="store_false",
                help=argparse.SUPPRESS,
            )
        elif base is dict:
            p.add_argument(*flags, dest=f.name, type=json_object, default=None, metavar="JSON", help=help_)
        else:
            # a field with a `const` takes its flag bare too (`--qat` is `--qat int8`)
            bare = {"nargs": "?", "const": f.metadata["const"]} if "const" in f.metadata else {}
            p.add_argument(
                *flags,
                dest=f.name,
                type=base,
                default=None,
                metavar=f.metadata.get("metavar"),
                help=help_,
                **bare,
            )
    g = p.add_argument_group("task options (HF run_qa names; the same as --task_options)")
    for name, (typ, help_) in TASK_OPTION_FLAGS.items():
        kw: dict[str, Any] = (
            dict(nargs="?", const=True, type=_str2bool, metavar="BOOL")
            if typ is bool
            else dict(type=typ, metavar="N" if typ is int else "X")
        )
        g.add_argument(*_names(name), dest="opt_" + name, default=None, help=help_, **kw)


def _job_from_args(args: argparse.Namespace, **defaults: Any):
    from mobilebert_jax.jobs.config import TASK_OPTION_FLAGS, JobConfig, read_job_file

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(JobConfig)
        if getattr(args, f.name, None) is not None
    }
    opts = {
        k: getattr(args, "opt_" + k) for k in TASK_OPTION_FLAGS if getattr(args, "opt_" + k, None) is not None
    }
    base = dict(defaults)
    source = "flags"
    if args.config_file:
        base.update(read_job_file(args.config_file))
        source = args.config_file
    job = JobConfig.from_dict({**base, **given}, source=source)
    if opts:
        job.task_options = {**job.task_options, **opts}
    return job


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="mobilebert-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_flags(ap)
    sub = ap.add_subparsers(
        dest="command", required=True, help="the command (`COMMAND --help` for its flags)"
    )
    helps = {
        "finetune": "fine-tune and evaluate a task (GLUE, SQuAD, NER, SWAG)",
        "evaluate": "evaluate a model directory on a validation file",
        "predict": "write predictions of a model directory for a file",
        "pretrain": "MLM + NSP pretraining on plain-text documents (LAMB)",
    }
    for name in _JOBS:
        _add_job_flags(sub.add_parser(name, help=helps[name], description=helps[name]), name)
    demo = sub.add_parser("demo", help="the README's main job: QNLI fine-tuning from random init, on CPU")
    _add_job_flags(demo, "demo")
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
    from mobilebert_jax.cli.pipeline import add_pipeline_arguments

    add_pipeline_arguments(
        sub.add_parser("pipeline", help="raw text through a pipeline (fill-mask, QA, ...) to JSONL")
    )
    from mobilebert_jax.cli.prepare import add_prepare_arguments

    add_prepare_arguments(
        sub.add_parser("prepare-pretraining-data", help="text -> ArrayRecord shards of MLM/NSP instances")
    )
    from mobilebert_jax.cli.export import add_export_arguments

    add_export_arguments(sub.add_parser("export", help="export to LiteRT / ONNX / StableHLO, verified"))
    for p in sub.choices.values():
        add_common_flags(p)
    return ap


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(msg.split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """The command line. Exit status: 0 done; 2 a usage error (a flag, flag value or output-dir
    conflict); 1 a data, model or runtime error; 143 / 130 stopped by SIGTERM / SIGINT (checkpoint
    saved). Errors print one line `error: ...`; `--debug` shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MOBILEBERT_JAX_DEBUG") == "1"
    from mobilebert_jax.cli import logs

    logs.configure(verbose=debug or "--verbose" in argv, debug=debug)
    try:
        return _run(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as e:
        if debug:
            raise
        from mobilebert_jax.jobs.config import UsageError

        sys.stderr.write(f"error: {_one_line(e)} (--debug shows the traceback)\n")
        return 2 if isinstance(e, UsageError) else 1


def _say_if_random_init(model: str) -> None:
    """The first line of a job on a preset: its weights are random, whatever its name suggests."""
    from mobilebert_jax.checkpoints.loader import resolve_model

    if resolve_model(model).kind == "preset":
        print(
            f"random init: --model {model} is a preset (an architecture with random weights), not a "
            "pretrained checkpoint; for pretrained weights pass an HF folder or a hub id such as "
            "google/mobilebert-uncased",
            flush=True,
        )


def _run_job(args: argparse.Namespace) -> int:
    """finetune, evaluate, predict, pretrain, demo: flags -> `JobConfig` -> the job; the exit status."""
    from mobilebert_jax.cli.distributed import initialize_distributed
    from mobilebert_jax.jobs.config import command_defaults
    from mobilebert_jax.jobs.evaluate import run_evaluate, run_predict
    from mobilebert_jax.jobs.finetune import run_finetune

    initialize_distributed(args)
    job = _job_from_args(args, **command_defaults(args.command, smoke=getattr(args, "smoke", False)))
    _say_if_random_init(job.model)
    if args.command == "evaluate":
        run_evaluate(job)
        return 0
    if args.command == "predict":
        run_predict(job)
        return 0
    report = run_finetune(job, args.command)
    if report.get("stopped") == "preempted":
        return 130 if report.get("signal") == "SIGINT" else 143
    if args.command == "demo" and not args.skip_export:
        from mobilebert_jax.jobs.export import deploy_check

        deploy_check(job.output_dir, job.validation_file, job.max_seq_length, limit=job.max_eval_samples)
    return 0


def _run(args: argparse.Namespace) -> int:
    from mobilebert_jax.jobs.config import UsageError
    from mobilebert_jax.training.host_allocator import tune_host_allocator

    try:  # before JAX starts its CPU threads: see training/host_allocator.py
        tune_host_allocator()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.command in (*_JOBS, "demo"):
        return _run_job(args)
    if args.command == "convert":
        from mobilebert_jax.cli.convert import run_convert

        return int(run_convert(args) or 0)
    if args.command == "distill":
        from mobilebert_jax.cli.distill import run_distill

        return int(run_distill(args) or 0)
    if args.command == "pipeline":
        from mobilebert_jax.cli.pipeline import run_pipeline

        return run_pipeline(args)
    if args.command == "prepare-pretraining-data":
        from mobilebert_jax.cli.prepare import run_prepare

        return run_prepare(args)
    if args.command == "export":
        from mobilebert_jax.cli.export import run_export

        return int(run_export(args) or 0)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
