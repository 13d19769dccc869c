"""The convert job: any MobileBERT checkpoint → an HF directory or an orbax checkpoint.

    report = run_convert(ConvertConfig(src="google/mobilebert-uncased", dst="gs://bucket/models/mb"))

SRC is read by the one loader (`checkpoints.loader.load_model`; formats in `checkpoints/formats.py`):
an HF folder or weights file (safetensors, `pytorch_model.bin`, `tf_model.h5`), a google TF1 checkpoint,
an orbax checkpoint, a training output directory, or a hub id. DST (a local folder or a gs:// URL) is
written whole (`storage.replace_dir`): a reader sees the old folder or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from mobilebert_jax import storage
from mobilebert_jax.checkpoints.hub import save_orbax, save_pretrained
from mobilebert_jax.checkpoints.loader import load_model
from mobilebert_jax.jobs.config import UsageError


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """What `run_convert` does (the `mobilebert-jax convert` flags)."""

    # checkpoint to read: anything `load_model` reads
    src: str
    # folder to write, local or gs:// (must not exist or be empty, unless overwrite)
    dst: str
    # config json (HF config.json or google bert_config.json) when none sits next to src
    config_file: str | None = None
    # target class name (default: the config's architectures, else inferred from the checkpoint's heads)
    model_class: str | None = None
    # TF1 distillation checkpoint: take its teacher/ model
    teacher: bool = False
    # "hf" (config.json + model.safetensors + tokenizer files) | "orbax" (config.json + params/)
    to: str = "hf"
    # fail instead of initialising or dropping head params
    strict: bool = False
    # replace a non-empty dst
    overwrite: bool = False


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_convert(config: ConvertConfig) -> dict[str, Any]:
    """Converts `config.src` into `config.dst`; returns what was read and written.

    Raises:
        UsageError: dst holds files and `overwrite` is off.
        CheckpointError: src resolves to nothing or cannot be read.
    """
    t0 = time.perf_counter()
    dst = config.dst
    if storage.isdir(dst) and storage.listdir(dst) and not config.overwrite:
        raise UsageError(f"{dst} exists and is not empty; pass --overwrite or choose another DST")
    _say(f"reading {config.src}")
    loaded = load_model(
        config.src,
        config.model_class,
        config_file=config.config_file,
        teacher=config.teacher,
        strict=config.strict,
        param_dtype="checkpoint",  # the file's precision, as read
    )
    params, model_config, cls = loaded.params, loaded.config, loaded.model_class.__name__
    _say(f"{loaded.path} ({loaded.source})")
    _say(loaded.report.summary())
    _say(f"writing {dst} ({config.to}, {cls})")
    tok = loaded.tokenizer  # the source's tokenizer files, else the packaged vocab where it fits
    with_tokenizer = config.to == "hf" and tok.vocab_size <= model_config.vocab_size
    if config.to == "hf" and not with_tokenizer:
        _say(
            f"no tokenizer files: the packaged vocab's {tok.vocab_size} ids do not fit vocab_size "
            f"{model_config.vocab_size}"
        )

    def write(folder: str) -> None:
        if config.to == "hf":
            save_pretrained(folder, params, model_config, model_class=cls)
            if with_tokenizer:
                tok.save_pretrained(folder)
        else:
            save_orbax(
                folder, params, model_config.replace(extra={**model_config.extra, "architectures": [cls]})
            )

    storage.replace_dir(dst, write)
    seconds = time.perf_counter() - t0
    _say(f"done in {seconds:.2f} s")
    return {
        "src": loaded.path,
        "source": loaded.source,
        "model_class": cls,
        "dst": dst,
        "to": config.to,
        "seconds": seconds,
    }


__all__ = ["ConvertConfig", "run_convert"]
