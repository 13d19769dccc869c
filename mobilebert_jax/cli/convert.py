"""`mobilebert-jax convert SRC DST`: any MobileBERT checkpoint → an HF directory or an orbax checkpoint.

SRC is read by the one loader (`checkpoints/loader.py:load_model`; formats in `checkpoints/formats.py`):
an HF folder or weights file (safetensors, `pytorch_model.bin`, `tf_model.h5`), a google TF1 checkpoint,
an orbax checkpoint (`--to orbax` output, a trainer checkpoint folder or one step of it), a training
output directory, or a hub id.

Destinations: `--to hf` (default) writes `config.json` + `model.safetensors` that transformers loads;
`--to orbax` writes DST/`config.json` and DST/`params` (an orbax checkpoint of the Flax params).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from mobilebert_jax.checkpoints.hub import save_pretrained
from mobilebert_jax.checkpoints.loader import load_model
from mobilebert_jax.jobs.config import UsageError
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES

__all__ = ["add_convert_arguments", "run_convert"]


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `convert` arguments (SRC, DST and options) to `parser`."""
    parser.add_argument(
        "src",
        help="checkpoint to read: HF folder or file, tf_model.h5, TF1 prefix/folder, orbax folder, "
        "training output dir, or hub id",
    )
    parser.add_argument("dst", help="folder to write (must not exist or be empty, unless --overwrite)")
    parser.add_argument(
        "--config",
        help="config json (HF config.json or google bert_config.json); needed when none sits next to SRC",
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
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")


# --------------------------------------------------------------------------------------- writers
def _write_orbax(dst: str, params: Any, config: MobileBertConfig, overwrite: bool) -> None:
    import orbax.checkpoint as ocp

    os.makedirs(dst, exist_ok=True)
    config.save(dst)  # architectures (in config.extra) tell the reader the class
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(os.path.abspath(dst), "params"), params, force=overwrite)


def run_convert(args: argparse.Namespace) -> int:
    """Runs `convert` with parsed `args`; returns the exit status (errors raise: `error: ...`)."""
    t0 = time.perf_counter()
    if os.path.isdir(args.dst) and os.listdir(args.dst) and not args.overwrite:
        raise UsageError(f"{args.dst} exists and is not empty; pass --overwrite or choose another DST")
    print(f"reading {args.src}", flush=True)
    loaded = load_model(
        args.src,
        args.model_class,
        config_file=args.config,
        teacher=args.teacher,
        strict=args.strict,
        param_dtype="checkpoint",  # the file's precision, as read
    )
    params, config, cls = loaded.params, loaded.config, loaded.model_class.__name__
    print(f"{loaded.path} ({loaded.source})")
    print(loaded.report.summary())
    print(f"writing {args.dst} ({args.to}, {cls})", flush=True)
    if args.to == "hf":
        save_pretrained(args.dst, params, config, model_class=cls)
        tok = loaded.tokenizer  # the source's tokenizer files, else the packaged vocab where it fits
        if tok.vocab_size <= config.vocab_size:
            tok.save_pretrained(args.dst)
        else:
            print(
                f"no tokenizer files: the packaged vocab's {tok.vocab_size} ids do not fit vocab_size "
                f"{config.vocab_size}"
            )
    else:
        config = config.replace(extra={**config.extra, "architectures": [cls]})
        _write_orbax(args.dst, params, config, args.overwrite)
    print(f"done in {time.perf_counter() - t0:.2f} s")
    return 0
