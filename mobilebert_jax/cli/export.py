"""`mobilebert-jax export MODEL OUT_DIR --format {stablehlo,litert,onnx}`: a deployable, verified model.

MODEL: an HF directory (class from config.json's `architectures` unless `--model-class`), one of our
checkpoints (`convert --to orbax` output, a trainer checkpoint folder, TF2 h5 or TF1), or a training
output directory (its `hf_model/`). OUT_DIR gets `model.tflite` / `model.onnx` / `model.stablehlo`,
`config.json`, the tokenizer files and `export.json` (signatures, runtime versions, measured error, size).
The job is `jobs/export.py:run_export`; this module turns the flags into its `ExportConfig`.

    mobilebert-jax export runs/sst2 out/sst2-litert --format litert --seq-lengths 128,384
    mobilebert-jax export runs/sst2 out/sst2-int8 --format litert --quantize int8 \\
        --calibration-file glue/SST-2/dev.tsv
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Any

from mobilebert_jax.model.heads import MODEL_CLASSES


def _int_list(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 128,384, got {s!r}"
        ) from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one length")
    return out


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `export` arguments to `parser`."""
    parser.add_argument(
        "model", help="HF directory, our checkpoint, or a training output dir (its hf_model/)"
    )
    parser.add_argument("out_dir", help="folder to write (must be empty unless --overwrite)")
    parser.add_argument(
        "--format",
        required=True,
        choices=("stablehlo", "litert", "onnx"),
        help="litert: model.tflite (one signature per length; Android/iOS/edge); onnx: model.onnx "
        "(+ model.onnx.data; onnxruntime); stablehlo: model.stablehlo (a serialized jax.export)",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=("none", "dynamic-int8", "int8", "int8-full"),
        help="none: float32; dynamic-int8: int8 weights, float activations (no data needed); int8: "
        "weights and activations, calibrated on --calibration-file; int8-full (litert): a full-integer "
        "graph, int8 weights per channel and int8 activations everywhere (residual stream, NoNorm, "
        "softmax, embeddings), calibrated on --calibration-file (docs/deploy.md) (default: none)",
    )
    parser.add_argument(
        "--seq-lengths",
        type=_int_list,
        default=[128],
        help="comma-separated lengths: one LiteRT signature seq_L each; ONNX has dynamic batch and length "
        "axes (verified at these lengths); stablehlo is verified at each (default 128)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="LiteRT's fixed batch size (default 1)")
    parser.add_argument(
        "--calibration-file",
        help="real text for --quantize int8 (and an error report on text for dynamic-int8): "
        "a .txt (one example a line) or a GLUE .tsv (sentence columns)",
    )
    parser.add_argument(
        "--calibration-samples", type=int, default=128, help="rows of it to use (default 128)"
    )
    parser.add_argument(
        "--model-class", choices=sorted(MODEL_CLASSES), help="class to export (default: config)"
    )
    parser.add_argument("--config", help="config json when none sits next to MODEL")
    parser.add_argument("--num-threads", type=int, default=None, help="runtime threads for the check")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    parser.add_argument(
        "--float-ops",
        nargs="+",
        choices=("SOFTMAX", "TANH"),
        metavar="OP",
        help="with --quantize int8-full: op types (SOFTMAX, TANH) computed in float between their int8 "
        "input and output (DEQUANTIZE, the op, QUANTIZE). SOFTMAX: XNNPACK then runs the whole graph on "
        "the CPU (TFLite's int8 SOFTMAX splits it; docs/deploy.md); the file is no longer full-integer",
    )
    parser.add_argument(
        "--keep-tensor-names",
        action="store_true",
        help="LiteRT: keep every tensor's name (debug information; by default only the signatures' "
        "inputs and outputs keep theirs)",
    )
    parser.add_argument(
        "--device-ready",
        action="store_true",
        help="write the .tflite that MediaPipe Tasks (TextClassifier) and the TFLite Task Library "
        "(BertNLClassifier; BertQuestionAnswerer at --seq-lengths 384) load as is: TFLite Metadata with the "
        "vocab and labels, a sequence classifier's output as probabilities (softmax; sigmoid for "
        "multi-label); needs --format litert, one --seq-lengths, --batch-size 1 and an uncased tokenizer",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The export job's `ExportConfig` from the parsed flags."""
    from mobilebert_jax.jobs.export import ExportConfig

    return ExportConfig(
        model=args.model,
        out_dir=args.out_dir,
        format=args.format,
        quantize=args.quantize,
        seq_lengths=tuple(args.seq_lengths),
        batch_size=args.batch_size,
        calibration_file=args.calibration_file,
        calibration_samples=args.calibration_samples,
        model_class=args.model_class,
        config_file=args.config,
        num_threads=args.num_threads,
        overwrite=args.overwrite,
        keep_tensor_names=args.keep_tensor_names,
        device_ready=args.device_ready,
        float_ops=tuple(args.float_ops or ()),
    )


def run_export(args: argparse.Namespace) -> int:
    """Runs `export` with parsed `args`; prints what was written. A failed export raises (`error: ...`,
    exit status 1); the converters' and runtimes' own logs show only with --verbose."""
    from mobilebert_jax.cli.logs import quiet_stderr
    from mobilebert_jax.jobs.export import run_export as export

    config = config_from_args(args)
    with quiet_stderr(args.verbose or args.debug):
        m = export(config)
    v = m["verification"]
    # a quantized export's error on random token ids says little: show the real-text check beside it
    text = [c for c in v["checks"] if c.get("data") == "calibration text"]
    on_text = (
        f", {text[0]['max_rel_error']:.2e} on {text[0]['rows']} rows of the calibration text" if text else ""
    )
    audit = m.get("graph_audit")
    if audit is not None:  # the full-integer graph: what still computes in float
        inside = Counter(op.split(" ")[0] for op in audit["encoder_float_ops"])
        asked = audit.get("float_ops_requested")
        on_text += (
            f"; float ops {audit['float_ops'] or 'none'}, {inside.total()} inside the encoder"
            f"{' ' + str(dict(inside)) if inside else ''}"
            f"{' (--float-ops ' + ' '.join(asked) + ': not full-integer)' if asked else ''}"
        )
        cpu = audit.get("cpu_delegate")
        if cpu:
            on_text += f"; on CPU, ops XNNPACK does not take: {cpu['not_taken'] or 'none'}"
    extra = [f for f in m.get("files", []) if f != m["file"]]  # ONNX's external data (model.onnx.data)
    print(
        f"wrote {os.path.join(config.out_dir, m['file'])}{' + ' + ', '.join(extra) if extra else ''} "
        f"({m['size_bytes'] / 1e6:.1f} MB), signatures "
        f"{[s['name'] for s in m['signatures']]}; max relative error vs JAX {v['max_rel_error']:.2e} "
        f"({v['how']}){on_text}; export.json, config.json, tokenizer files"
    )
    return 0
