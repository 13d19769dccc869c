"""`mobilebert-jax convert SRC DST`: any MobileBERT checkpoint → an HF directory or an orbax checkpoint.

Sources, detected from what SRC holds:

| SRC | format |
|---|---|
| folder with `model.safetensors`, its index, or `pytorch_model.bin` (+ `config.json`) | HF PyTorch |
| folder with `tf_model.h5`, or the `.h5` file | HF TensorFlow (h5py, no TensorFlow) |
| TF1 prefix (`.../model.ckpt`), its `.index`/`.data-*` file, or a folder holding one | google TF1 bundle |
| folder written by `--to orbax`, a trainer checkpoint folder (or one step of it), or an orbax params tree | orbax |

Destinations: `--to hf` (default) writes `config.json` + `model.safetensors` that transformers loads;
`--to orbax` writes DST/`config.json` and DST/`params` (an orbax checkpoint of the Flax params).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from mobilebert_jax.checkpoints.hub import save_pretrained
from mobilebert_jax.checkpoints.pytorch import ConversionError, from_pytorch, scan_to_loop, to_pytorch
from mobilebert_jax.checkpoints.state_dict import (
    SAFE_INDEX,
    SAFE_WEIGHTS,
    TF_WEIGHTS,
    CheckpointError,
    load_state_dict,
)
from mobilebert_jax.checkpoints.tensorflow import (
    TFConversionReport,
    load_config,
    load_tf1_checkpoint,
    load_tf_h5,
    map_tf1_names,
)
from mobilebert_jax.checkpoints.tf_bundle import BundleError, BundleReader, resolve_checkpoint_prefix
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES

__all__ = ["add_convert_arguments", "detect_source", "infer_model_class", "run_convert"]

_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `convert` arguments (SRC, DST and options) to `parser`."""
    parser.add_argument(
        "src", help="checkpoint to read: HF folder, tf_model.h5, TF1 prefix/folder, or orbax folder"
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


# --------------------------------------------------------------------------------------- detection
def _is_orbax_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS)


def detect_source(src: str) -> str:
    """'hf' | 'h5' | 'tf1' | 'orbax' for what `src` holds; ValueError naming what was looked for."""
    if os.path.isdir(src):
        names = set(os.listdir(src))
        if names & {SAFE_WEIGHTS, SAFE_INDEX, "pytorch_model.bin"}:
            return "hf"
        if TF_WEIGHTS in names:
            return "h5"
        if any(n.endswith(".index") for n in names):
            return "tf1"
        if _is_orbax_dir(src) or _is_orbax_dir(os.path.join(src, "params")) or _orbax_steps(src):
            return "orbax"
        if _is_orbax_dir(os.path.join(src, "state")):
            return "orbax"
        raise ValueError(
            f"{src}: cannot tell the checkpoint format: no {SAFE_WEIGHTS}, {SAFE_INDEX}, pytorch_model.bin, "
            f"{TF_WEIGHTS}, *.index (TF1) or orbax checkpoint inside"
        )
    if src.endswith(".h5") and os.path.isfile(src):
        return "h5"
    if os.path.exists(resolve_checkpoint_prefix(src) + ".index"):
        return "tf1"
    if src.endswith((".safetensors", ".bin")) and os.path.isfile(src):
        return "hf"
    raise ValueError(f"{src}: no such checkpoint (not a folder, .h5 file, or TF1 prefix with a .index file)")


def _orbax_steps(path: str) -> list[int]:
    if not os.path.isdir(path):
        return []
    return sorted(int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n)))


def infer_model_class(keys: Any, config: MobileBertConfig | None = None) -> str:
    """The class a state dict (PT keys) or Flax param tree (top-level keys) was saved from.

    Fine-tune heads win over pretraining heads (a SQuAD TF1 checkpoint may still hold `cls/...`);
    `classifier` is read as sequence classification unless the config's architectures say otherwise.
    """
    arch = (config.extra.get("architectures") or [None])[0] if config is not None else None
    if arch in MODEL_CLASSES:
        return arch
    keys = set(keys)
    has = lambda p: any(k == p or k.startswith(p + ".") for k in keys)  # noqa: E731
    if has("qa_outputs"):
        return "MobileBertForQuestionAnswering"
    if has("classifier"):
        return "MobileBertForSequenceClassification"
    mlm, nsp = has("cls.predictions"), has("cls.seq_relationship")
    if mlm and nsp:
        return "MobileBertForPreTraining"
    if mlm:
        return "MobileBertForMaskedLM"
    if nsp:
        return "MobileBertForNextSentencePrediction"
    return "MobileBertModel"


def _flax_head_keys(params: Mapping) -> list[str]:
    keys = []
    for k, v in params.items():
        if k == "cls" and isinstance(v, Mapping):
            keys += [f"cls.{sub}" for sub in v]
        else:
            keys.append(k)
    return keys


# --------------------------------------------------------------------------------------- readers
def _config_for(args: argparse.Namespace, *candidates: str) -> MobileBertConfig:
    if args.config:
        return load_config(args.config)
    for c in candidates:
        if c and os.path.exists(c):
            return load_config(c)
    raise ValueError(f"no config found (looked for {', '.join(c for c in candidates if c)}); pass --config")


def _read_hf(args: argparse.Namespace) -> tuple[dict, MobileBertConfig, str, Any]:
    src = args.src
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    config = _config_for(args, os.path.join(folder, "config.json"))
    if os.path.isdir(src):
        state = load_state_dict(src)
    elif src.endswith(".bin"):
        from mobilebert_jax.checkpoints.state_dict import load_pytorch_bin

        state = load_pytorch_bin(src)
    else:
        from mobilebert_jax.checkpoints.state_dict import load_safetensors

        state = load_safetensors(src)
    cls = args.model_class or infer_model_class(state, config)
    params, load = from_pytorch(state, config, cls, strict=args.strict, return_report=True)
    report = TFConversionReport(source=src, mapped={k: k for k in state}, load=load, config=config)
    return params, config, cls, report


def _read_h5(args: argparse.Namespace) -> tuple[dict, MobileBertConfig, str, Any]:
    path = os.path.join(args.src, TF_WEIGHTS) if os.path.isdir(args.src) else args.src
    config = _config_for(args, os.path.join(os.path.dirname(os.path.abspath(path)), "config.json"))
    cls = args.model_class or (config.extra.get("architectures") or [None])[0]
    if cls not in MODEL_CLASSES:
        from mobilebert_jax.checkpoints.tensorflow import h5_to_pytorch_names

        cls = infer_model_class(h5_to_pytorch_names(path), config)
    params, report = load_tf_h5(path, config, cls, strict=args.strict)
    return params, config, cls, report


def _read_tf1(args: argparse.Namespace) -> tuple[dict, MobileBertConfig, str, Any]:
    reader = BundleReader(args.src)  # reads and checks the index only
    folder = os.path.dirname(os.path.abspath(reader.prefix))
    names = ("teacher_config.json",) if args.teacher else ("config.json", "bert_config.json")
    config = _config_for(args, *(os.path.join(folder, n) for n in names))
    cls = args.model_class
    if cls is None:
        mapped, _ = map_tf1_names(reader.keys(), teacher=args.teacher)
        cls = infer_model_class([key for key, _ in mapped.values()], config)
    params, report = load_tf1_checkpoint(reader.prefix, config, cls, teacher=args.teacher, strict=args.strict)
    return params, config, cls, report


def _orbax_params_dir(src: str) -> tuple[str, str | None]:
    """(orbax item folder, config.json candidate) for the layouts we read."""
    if _is_orbax_dir(os.path.join(src, "params")):  # written by --to orbax
        return os.path.join(src, "params"), os.path.join(src, "config.json")
    steps = _orbax_steps(src)
    if steps:  # a trainer CheckpointManager root: latest step, item "state"
        src = os.path.join(src, str(steps[-1]))
    if _is_orbax_dir(os.path.join(src, "state")):
        return os.path.join(src, "state"), None
    return src, None


def _read_orbax(args: argparse.Namespace) -> tuple[dict, MobileBertConfig, str, Any]:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    item, cfg_path = _orbax_params_dir(os.path.abspath(args.src))
    up = [
        os.path.join(os.path.dirname(item), "config.json"),
        os.path.join(os.path.dirname(item), "..", "config.json"),
    ]
    config = _config_for(args, *([cfg_path] if cfg_path else []), *up)
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(item)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    # host numpy arrays: restores on any device topology, whatever the saved sharding
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    tree = ckptr.restore(item, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    params = tree.get("params", tree) if isinstance(tree, Mapping) else None
    if not isinstance(params, Mapping):
        raise ValueError(f"{item}: the orbax tree has no 'params' mapping")
    params = scan_to_loop(dict(params))
    cls = args.model_class or infer_model_class(_flax_head_keys(params), config)
    # Round trip through the checked converter: shapes and names must fit the model exactly.
    sd = to_pytorch(params, config, include_tied=False, include_dead=False)
    params, load = from_pytorch(sd, config, cls, strict=args.strict, return_report=True)
    report = TFConversionReport(source=item, mapped={k: k for k in sd}, load=load, config=config)
    return params, config, cls, report


_READERS = {"hf": _read_hf, "h5": _read_h5, "tf1": _read_tf1, "orbax": _read_orbax}


# --------------------------------------------------------------------------------------- writers
def _write_orbax(dst: str, params: Any, config: MobileBertConfig, overwrite: bool) -> None:
    import orbax.checkpoint as ocp

    os.makedirs(dst, exist_ok=True)
    config.save(dst)  # architectures (in config.extra) tell the reader the class
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(os.path.abspath(dst), "params"), params, force=overwrite)


def run_convert(args: argparse.Namespace) -> int:
    """Runs `convert` with parsed `args`; returns the exit status (errors exit with a message)."""
    t0 = time.perf_counter()
    try:
        fmt = detect_source(args.src)
        if args.teacher and fmt != "tf1":
            raise ValueError("--teacher applies to TF1 distillation checkpoints only")
        if os.path.isdir(args.dst) and os.listdir(args.dst) and not args.overwrite:
            raise ValueError(f"{args.dst} exists and is not empty; pass --overwrite or choose another DST")
        print(f"reading {args.src} ({fmt})", flush=True)
        params, config, cls, report = _READERS[fmt](args)
        print(report.summary())
        print(f"writing {args.dst} ({args.to}, {cls})", flush=True)
        if args.to == "hf":
            save_pretrained(args.dst, params, config, model_class=cls)
        else:
            config = config.replace(extra={**config.extra, "architectures": [cls]})
            _write_orbax(args.dst, params, config, args.overwrite)
    except (ValueError, FileNotFoundError, BundleError, ConversionError, CheckpointError, ImportError) as e:
        sys.exit(f"convert: {str(e).strip() or type(e).__name__}")
    print(f"done in {time.perf_counter() - t0:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m mobilebert_jax.cli.convert SRC DST`)."""
    parser = argparse.ArgumentParser(prog="mobilebert-jax convert", description=__doc__.split("\n")[0])
    add_convert_arguments(parser)
    return run_convert(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
