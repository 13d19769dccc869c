"""`mobilebert-jax export MODEL OUT_DIR --format {stablehlo,litert,onnx}`: a deployable, verified model.

MODEL: an HF directory (class from config.json's `architectures` unless `--model-class`), one of our
checkpoints (`convert --to orbax` output, a trainer checkpoint folder, TF2 h5 or TF1), or a training
output directory (its `hf_model/`). OUT_DIR gets `model.tflite` / `model.onnx` / `model.stablehlo`,
`config.json`, the tokenizer files and `export.json` (signatures, runtime versions, measured error, size).

    mobilebert-jax export runs/sst2 out/sst2-litert --format litert --seq-lengths 128,384
    mobilebert-jax export runs/sst2 out/sst2-int8 --format litert --quantize int8 \\
        --calibration-file glue/SST-2/dev.tsv
"""

from __future__ import annotations

import argparse
import os
import sys
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
    parser.add_argument("--format", required=True, choices=("stablehlo", "litert", "onnx"))
    parser.add_argument("--quantize", default="none", choices=("none", "dynamic-int8", "int8"))
    parser.add_argument(
        "--seq-lengths",
        type=_int_list,
        default=[128],
        help="comma-separated lengths: one LiteRT signature seq_L each; ONNX uses the largest; "
        "stablehlo is verified at each (default 128)",
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
        "--keep-tensor-names",
        action="store_true",
        help="LiteRT: keep every tensor's name (debug information; by default only the signatures' "
        "inputs and outputs keep theirs)",
    )


def model_path(path: str) -> str:
    """MODEL as given, or a finetune output dir's `hf_model/`."""
    if os.path.isdir(os.path.join(path, "hf_model")) and not os.path.exists(
        os.path.join(path, "config.json")
    ):
        return os.path.join(path, "hf_model")
    return path


def load_model(path: str, model_class: str | None = None, config: str | None = None) -> tuple[Any, Any, Any]:
    """(model, params, tokenizer) from an HF dir, our checkpoint or a training output dir."""
    from mobilebert_jax.cli.convert import _READERS, detect_source
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    path = model_path(path)
    kind = detect_source(path)
    ns = argparse.Namespace(src=path, config=config, model_class=model_class, teacher=False, strict=False)
    params, cfg, cls, _ = _READERS[kind](ns)
    model = MODEL_CLASSES[cls](cfg)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if any(os.path.exists(os.path.join(folder, f)) for f in ("vocab.txt", "tokenizer.json")):
        tok = MobileBertTokenizer.from_pretrained(folder)
    else:
        tok = MobileBertTokenizer.default()
        print(f"export: no tokenizer files in {folder}; writing the packaged uncased vocab", file=sys.stderr)
    if tok.vocab_size != cfg.vocab_size:
        print(
            f"export: the tokenizer has {tok.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}",
            file=sys.stderr,
        )
    return model, params, tok


def run_export(args: argparse.Namespace) -> int:
    from mobilebert_jax import export as ex

    model, params, tok = load_model(args.model, args.model_class, args.config)
    stats = None
    if args.quantize == "int8" and args.format == "litert":
        from mobilebert_jax.export.quantize import load_quant_stats

        folder = model_path(args.model)
        try:
            found = load_quant_stats(folder if os.path.isdir(folder) else os.path.dirname(folder))
        except ex.ExportError as e:
            print(f"export failed: {e}", file=sys.stderr)
            return 1
        if found is not None:
            stats = found[0]
            print("export: int8 ranges from the QAT run (quant_stats.msgpack), not recalibrated", flush=True)
    calibration = None
    if args.calibration_file:
        texts = ex.read_calibration_file(args.calibration_file)
        calibration = ex.calibration_batch(texts, tok, max(args.seq_lengths), limit=args.calibration_samples)
    elif args.quantize == "int8" and stats is None:
        raise SystemExit("export: --quantize int8 needs --calibration-file (real text to calibrate on)")
    print(
        f"export: {type(model).__name__} → {args.format} ({args.quantize}), lengths {args.seq_lengths}, "
        f"batch {args.batch_size}",
        flush=True,
    )
    try:
        m = ex.export(
            model,
            params,
            args.out_dir,
            format=args.format,
            quantize=args.quantize,
            seq_lengths=args.seq_lengths,
            batch_size=args.batch_size,
            tokenizer=tok,
            calibration=calibration,
            quant_stats=stats,
            num_threads=args.num_threads,
            overwrite=args.overwrite,
            keep_tensor_names=args.keep_tensor_names,
        )
    except ex.ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    v = m["verification"]
    # a quantized export's error on random token ids says little: show the real-text check beside it
    text = [c for c in v["checks"] if c.get("data") == "calibration text"]
    on_text = (
        f", {text[0]['max_rel_error']:.2e} on {text[0]['rows']} rows of the calibration text" if text else ""
    )
    extra = [f for f in m.get("files", []) if f != m["file"]]  # ONNX's external data (model.onnx.data)
    print(
        f"wrote {os.path.join(args.out_dir, m['file'])}{' + ' + ', '.join(extra) if extra else ''} "
        f"({m['size_bytes'] / 1e6:.1f} MB), signatures "
        f"{[s['name'] for s in m['signatures']]}; max relative error vs JAX {v['max_rel_error']:.2e} "
        f"({v['how']}){on_text}; export.json, config.json, tokenizer files"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mobilebert-jax export", description=__doc__)
    add_export_arguments(p)
    return run_export(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


def _read_pairs(path: str, limit: int | None) -> tuple[list, list[str]]:
    """(texts or (a, b) pairs, labels) from a GLUE-style TSV with a header."""
    with open(path, encoding="utf-8") as f:
        rows = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    header, rows = rows[0], rows[1 : limit + 1 if limit else None]
    for a, b in (("question", "sentence"), ("sentence1", "sentence2"), ("sentence", None)):
        if a in header and (b is None or b in header):
            ia, ib = header.index(a), (header.index(b) if b else None)
            texts = [(r[ia], r[ib]) if ib is not None else r[ia] for r in rows]
            return texts, [r[header.index("label")] if "label" in header else "" for r in rows]
    raise ValueError(f"{path}: no question/sentence, sentence1/sentence2 or sentence columns in {header}")


def deploy_check(
    output_dir: str, eval_file: str, max_seq_length: int, limit: int | None = None, latency_rows: int = 100
) -> dict[str, Any] | None:
    """The user's last step: OUT/hf_model → LiteRT fp32 and dynamic-int8 (OUT/litert-*), run in LiteRT on
    the held-out pairs at batch 1; prints argmax agreement with JAX, logit error and latency beside JAX."""
    import importlib.util
    import json
    import statistics
    import time

    import numpy as np

    missing = [
        m
        for m in ("litert_converter", "ai_edge_litert", "litert_quantizer")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(
            f"deploy: skipped, the export extra is not installed (missing {missing}); "
            "pip install 'mobilebert-jax[export]' (scripts/setup.sh does)",
            flush=True,
        )
        return None
    import jax

    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import make_forward, rel_err

    model, params, tok = load_model(os.path.join(output_dir, "hf_model"))
    texts, _ = _read_pairs(eval_file, limit)
    batch = ex.calibration_batch(texts, tok, max_seq_length, limit=len(texts))  # the same tokenization
    n = len(batch["input_ids"])
    fwd = jax.jit(make_forward(model, params))

    def rows(fn) -> tuple[np.ndarray, float]:
        out, ts = [], []
        for i in range(n):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            t0 = time.perf_counter()
            out.append(np.asarray(fn(one)["logits"]))
            if i < latency_rows:
                ts.append(time.perf_counter() - t0)
        return np.concatenate(out), statistics.median(ts[1:] or ts) * 1e3

    jax_logits, jax_ms = rows(lambda b: fwd(**b))
    results: dict[str, Any] = {"pairs": n, "max_seq_length": max_seq_length, "jax": {"ms": jax_ms}}
    print(
        f"deploy: exporting {output_dir}/hf_model to LiteRT (fp32, dynamic-int8), {n} held-out pairs",
        flush=True,
    )
    for q in ("none", "dynamic-int8"):
        name = "litert-" + ("fp32" if q == "none" else q)
        out_dir = os.path.join(output_dir, name)
        m = ex.to_litert(
            model, params, out_dir, seq_lengths=(max_seq_length,), quantize=q, tokenizer=tok, overwrite=True
        )
        rt = ex.load_runtime(out_dir, num_threads=os.cpu_count())
        logits, ms = rows(lambda b, rt=rt: rt(**b))
        results[name] = {
            "ms": ms,
            "agreement_with_jax": float(np.mean(logits.argmax(-1) == jax_logits.argmax(-1))),
            "rel_logit_error": rel_err(logits, jax_logits),
            "size_mb": m["size_bytes"] / 1e6,
        }
    print(f"{'':22s} {'ms (B=1)':>9s} {'agrees w/ JAX':>14s} {'logit err':>10s} {'size MB':>8s}")
    print(f"{'JAX jit':22s} {jax_ms:9.2f} {'-':>14s} {'-':>10s} {'-':>8s}")
    for name in ("litert-fp32", "litert-dynamic-int8"):
        r = results[name]
        print(
            f"{name:22s} {r['ms']:9.2f} {100 * r['agreement_with_jax']:13.1f}% {r['rel_logit_error']:10.1e} "
            f"{r['size_mb']:8.1f}"
        )
    with open(os.path.join(output_dir, "deploy_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results
