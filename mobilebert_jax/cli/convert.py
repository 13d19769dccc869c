"""`mobilebert-jax convert SRC DST`: any MobileBERT checkpoint → an HF directory or an orbax checkpoint.

SRC is read by the one loader (`checkpoints/loader.py:load_model`; formats in `checkpoints/formats.py`):
an HF folder or weights file (safetensors, `pytorch_model.bin`, `tf_model.h5`), a google TF1 checkpoint,
an orbax checkpoint (`--to orbax` output, a trainer checkpoint folder or one step of it), a training
output directory, or a hub id.

Destinations: `--to hf` (default) writes `config.json` + `model.safetensors` that transformers loads;
`--to orbax` writes DST/`config.json` and DST/`params` (an orbax checkpoint of the Flax params). DST may be
a gs:// URL. The job is `jobs/convert.py:run_convert`; this module turns the flags into its `ConvertConfig`.
"""

from __future__ import annotations

import argparse

from mobilebert_jax.jobs.convert import ConvertConfig
from mobilebert_jax.jobs.convert import run_convert as convert
from mobilebert_jax.model.heads import MODEL_CLASSES

__all__ = ["add_convert_arguments", "config_from_args", "run_convert"]


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `convert` arguments (SRC, DST and options) to `parser`."""
    parser.add_argument(
        "src",
        help="checkpoint to read: HF folder or file, tf_model.h5, TF1 prefix/folder, orbax folder, "
        "training output dir, or hub id",
    )
    parser.add_argument(
        "dst", help="folder to write, local or gs:// (must not exist or be empty, unless --overwrite)"
    )
    parser.add_argument(
        "--config",
        help="config json (HF config.json or google bert_config.json); needed when none sits next to SRC "
        "(a training checkpoint RUN/checkpoints/STEP takes RUN/run.json's)",
    )
    parser.add_argument(
        "--model-class",
        choices=sorted(MODEL_CLASSES),
        help="target class (default: the config's architectures, else inferred from the checkpoint's heads)",
    )
    parser.add_argument(
        "--teacher", action="store_true", help="TF1 distillation checkpoint: take the teacher/ model"
    )
    parser.add_argument("--to", choices=("hf", "orbax"), default="hf", help="output format (default: hf)")
    parser.add_argument(
        "--strict", action="store_true", help="fail instead of initialising or dropping head params"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty DST (put in place whole once written)"
    )


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    """The convert job's `ConvertConfig` from the parsed flags."""
    return ConvertConfig(
        src=args.src,
        dst=args.dst,
        config_file=args.config,
        model_class=args.model_class,
        teacher=args.teacher,
        to=args.to,
        strict=args.strict,
        overwrite=args.overwrite,
    )


def run_convert(args: argparse.Namespace) -> int:
    """Runs `convert` with parsed `args`; returns the exit status (errors raise: `error: ...`)."""
    convert(config_from_args(args))
    return 0
