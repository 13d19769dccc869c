"""int8 study: does the quantized export compute what the fp32 JAX model computes, on real sentences?

For a fine-tuned SequenceClassification run (a `finetune` output dir) and a held-out GLUE .tsv, exports
(or reuses, in --work) LiteRT fp32 / dynamic-int8 / int8 and onnxruntime fp32 / dynamic-int8 with the
`mobilebert-jax export` command, runs every artifact in its runtime on every held-out sentence, and
prints per variant: the relative logit error vs the fp32 JAX forward (max|a-b| / max|b| over all rows,
and the median of the per-row errors), the argmax agreement with fp32 JAX, and the accuracy on the
labels. `litert-int8-full-float-softmax` is int8-full exported with `--float-ops SOFTMAX`. A `--qat-run` (a run fine-tuned with `finetune --qat` from --run) adds its int8 export (int8-full
for a `--qat int8-full` run: `litert-int8-full-qat`), compared with that run's own fp32 JAX forward, and
(`...-vs-float-run`) with --run's, the float model it started from (the teacher of
`--qat_distillation`).

    python benchmarks/int8_agreement.py --run runs/sst2 --heldout dev_heldout.tsv \\
        --calibration-file train.tsv --work runs/int8_exports [--qat-run runs/sst2_qat] [--json out.json]

The calibration text must not overlap the held-out sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

KEEP_FOLDING = False  # set by --keep-constant-folding
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = (  # static int8 last: the slowest export
    ("litert", "none"),
    ("litert", "dynamic-int8"),
    ("onnx", "none"),
    ("onnx", "dynamic-int8"),
    ("litert", "int8"),
    ("litert", "int8-full"),
    ("litert", "int8-full-float-softmax"),  # int8-full with --float-ops SOFTMAX
)
FLOAT_SOFTMAX = "-float-softmax"


def variant_name(fmt: str, quantize: str) -> str:
    return f"{fmt}-{'fp32' if quantize == 'none' else quantize}"


def ensure_export(
    run: str, out: str, fmt: str, quantize: str, length: int, calibration: str | None
) -> float | None:
    """Runs `mobilebert-jax export` unless OUT already holds an export.json; returns its seconds (None:
    the export failed, its error is on stderr)."""
    if os.path.exists(os.path.join(out, "export.json")):
        return 0.0
    cmd = [sys.executable, "-m", "mobilebert_jax.cli.main", "export", run, out, "--format", fmt]
    if quantize.endswith(FLOAT_SOFTMAX):
        quantize = quantize.removesuffix(FLOAT_SOFTMAX)
        cmd += ["--float-ops", "SOFTMAX"]
    cmd += ["--quantize", quantize, "--seq-lengths", str(length), "--overwrite"]
    if calibration and quantize != "none":
        cmd += ["--calibration-file", calibration]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if quantize.startswith("int8") and not KEEP_FOLDING:
        # qwix's calibration jits the forward with the weights as closure constants; XLA's constant
        # folding then evaluates every weight's fake-quant reductions in its interpreter (minutes per
        # layer on 2 cores). Numerically it changes nothing to compute them at run time instead.
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_disable_hlo_passes=constant_folding").strip()
    p = subprocess.run(cmd, env=env)
    if p.returncode != 0:
        print(f"export {out} failed (exit {p.returncode})", file=sys.stderr, flush=True)
        return None
    return time.perf_counter() - t0


def qat_mode(run: str) -> str:
    """The `--quantize` mode a `finetune --qat` run trained for: int8-full where its hf_model/ records
    so (`full_integer.save_full_integer_qat_record`), else int8."""
    from mobilebert_jax.export.full_integer import full_integer_qat_info

    folder = os.path.join(run, "hf_model") if os.path.isdir(os.path.join(run, "hf_model")) else run
    return "int8-full" if full_integer_qat_info(folder) is not None else "int8"


def _qat_ranges(run: str) -> str:
    """The activation ranges `finetune --qat int8-full` trained `run` with (run.json): static or batch."""
    path = os.path.join(run, "run.json")
    if not os.path.exists(path):
        return "batch"
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("qat_ranges", "batch")


def calibration_rows(path: str, tok, length: int) -> dict[str, np.ndarray]:
    """The rows `export --calibration-file` calibrates on (its default --calibration-samples)."""
    from mobilebert_jax import export as ex

    return ex.calibration_batch(ex.read_calibration_file(path), tok, length, limit=128)


def read_heldout(path: str) -> tuple[list[str], np.ndarray]:
    with open(path, encoding="utf-8") as f:
        rows = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    header, rows = rows[0], rows[1:]
    if "sentence" not in header or "label" not in header:
        raise SystemExit(f"{path}: expected a header with 'sentence' and 'label', got {header}")
    s, lab = header.index("sentence"), header.index("label")
    return [r[s] for r in rows], np.asarray([int(r[lab]) for r in rows])


def jax_logits(
    run: str,
    enc: dict[str, np.ndarray],
    batch: int = 16,
    fake_quant: bool = False,
    calibration: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The run's fp32 JAX logits; `fake_quant`: those of the forward `finetune --qat int8-full` trains
    (the export's graph rounded to int8: on each batch's own ranges, or, given `calibration` rows, on
    static ranges calibrated on them as `--qat_ranges static` does)."""
    import jax

    from mobilebert_jax.checkpoints.loader import load_model
    from mobilebert_jax.export.common import make_forward

    model, params = load_model(run).build()
    if fake_quant:
        from mobilebert_jax.export.api import flat_layers
        from mobilebert_jax.export.full_integer import full_integer_qat_model, with_full_integer_fake_quant

        model, params = flat_layers(model.clone(pad_invariant=True), params)
        qat = full_integer_qat_model(model)
        ranges = None
        if calibration is not None:
            from mobilebert_jax.export.full_integer import calibrate_full_integer_ranges

            rows = len(calibration["input_ids"])
            parts = [{k: v[s : s + batch] for k, v in calibration.items()} for s in range(0, rows, batch)]
            ranges = calibrate_full_integer_ranges(lambda p, **b: make_forward(qat, p)(**b), params, parts)
        # params an argument, not constants: XLA would fold every weight's rounding at compile time
        step = jax.jit(lambda p, b: with_full_integer_fake_quant(make_forward(qat, p), ranges)(**b))
        fwd = lambda **b: step(params, b)  # noqa: E731
    else:
        fwd = jax.jit(make_forward(model, params))
    n = len(enc["input_ids"])
    out = []
    for s in range(0, n, batch):
        b = {k: v[s : s + batch] for k, v in enc.items()}
        pad = batch - len(b["input_ids"])
        if pad:  # one compiled shape
            b = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in b.items()}
        out.append(np.asarray(fwd(**b)["logits"])[: batch - pad])
    return np.concatenate(out).astype(np.float64)


def runtime_logits(out_dir: str, enc: dict[str, np.ndarray], threads: int) -> tuple[np.ndarray, float]:
    from mobilebert_jax.export import load_runtime

    rt = load_runtime(out_dir, num_threads=threads)
    bs = 32  # LiteRT runs its fixed-batch signature over the chunk; onnxruntime takes it whole
    n = len(enc["input_ids"])
    out = []
    t0 = time.perf_counter()
    for s in range(0, n, bs):
        out.append(np.asarray(rt(**{k: v[s : s + bs] for k, v in enc.items()})["logits"]))
    return np.concatenate(out).astype(np.float64), time.perf_counter() - t0


def stats(got: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict:
    scale = np.abs(ref).max()
    per_row = np.abs(got - ref).max(-1) / np.maximum(np.abs(ref).max(-1), 1e-30)
    return {
        "rel_logit_error": float(np.abs(got - ref).max() / max(scale, 1e-30)),
        "median_row_rel_error": float(np.median(per_row)),
        "argmax_agreement": float(np.mean(got.argmax(-1) == ref.argmax(-1))),
        "accuracy": float(np.mean(got.argmax(-1) == labels)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="fine-tuned SequenceClassification run (or HF dir)")
    ap.add_argument("--heldout", required=True, help="labelled GLUE .tsv (sentence, label) to evaluate on")
    ap.add_argument("--calibration-file", required=True, help="text for --quantize int8 (not the held-out)")
    ap.add_argument("--work", required=True, help="export folders go here (reused when present)")
    ap.add_argument("--qat-run", help="the same model fine-tuned with `finetune --qat [int8-full]`")
    ap.add_argument("--length", type=int, default=128, help="export and tokenization length (default 128)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument(
        "--keep-constant-folding",
        action="store_true",
        help="do not disable XLA constant folding for the int8 export (see ensure_export)",
    )
    args = ap.parse_args()
    global KEEP_FOLDING
    KEEP_FOLDING = args.keep_constant_folding

    from mobilebert_jax import export as ex
    from mobilebert_jax.checkpoints.loader import load_model

    texts, labels = read_heldout(args.heldout)
    print(f"{len(texts)} held-out sentences from {args.heldout}", flush=True)
    tok = load_model(args.run).tokenizer
    enc = ex.calibration_batch(texts, tok, args.length, limit=len(texts))
    truncated = int(np.sum(enc["attention_mask"][:, -1] == 1))
    ref = jax_logits(args.run, enc)
    top2 = np.sort(ref, -1)[:, -2:]
    margin = float(np.median(top2[:, 1] - top2[:, 0]))
    print(
        f"fp32 JAX: median top-2 logit margin {margin:.3g}, max |logit| {np.abs(ref).max():.3g}", flush=True
    )
    rows = [{"variant": "jax-fp32", **stats(ref, ref, labels), "size_mb": None}]
    plan = [(args.run, fmt, q, variant_name(fmt, q)) for fmt, q in VARIANTS]
    if args.qat_run:
        q = qat_mode(args.qat_run)
        plan.append((args.qat_run, "litert", q, f"litert-{q}-qat"))
        if q == "int8-full":
            plan.append((args.qat_run, "litert", q + FLOAT_SOFTMAX, f"litert-{q}{FLOAT_SOFTMAX}-qat"))
    refs = {args.run: ref}
    fake_quant: dict[str, np.ndarray] = {}  # the QAT run's fp32 ("fp32") and fake-quantized logits
    failed: list[str] = []
    for run, fmt, q, name in plan:
        if args.only and name not in args.only:
            continue
        out = os.path.join(args.work, name)
        secs = ensure_export(run, out, fmt, q, args.length, args.calibration_file)
        if secs is None:
            failed.append(name)
            continue
        if run not in refs:
            refs[run] = jax_logits(run, enc)
        got, run_s = runtime_logits(out, enc, args.threads)
        with open(os.path.join(out, "export.json")) as f:
            size = json.load(f)["size_bytes"] / 1e6
        row = {"variant": name, **stats(got, refs[run], labels), "size_mb": size}
        row["export_seconds"] = round(secs, 1)
        row["runtime_seconds"] = round(run_s, 1)
        rows.append(row)
        print(f"{name}: {json.dumps(row)}", flush=True)
        if args.qat_run and run == args.qat_run:
            # the float model the QAT run started from (its teacher under --qat_distillation): what a
            # user quantizes, and so what the int8 file should answer as
            rows.append({"variant": f"{name}-vs-float-run", **stats(got, ref, labels), "size_mb": size})
            if refs[run] is not fake_quant.get("fp32"):  # once per run: its fp32 and fake-quant rows
                fake_quant["fp32"] = refs[run]
                rows.append(
                    {"variant": "jax-fp32-qat", **stats(refs[run], refs[run], labels), "size_mb": None}
                )
                if q.startswith("int8-full"):  # the model QAT trained (fake quant) vs its fp32
                    static = _qat_ranges(run) == "static"  # ranges calibrated as the export does
                    cal = calibration_rows(args.calibration_file, tok, args.length) if static else None
                    fake_quant["logits"] = fq = jax_logits(run, enc, fake_quant=True, calibration=cal)
                    rows.append(
                        {"variant": "jax-fakequant-qat", **stats(fq, refs[run], labels), "size_mb": None}
                    )
            if "logits" in fake_quant:  # the file vs the model QAT trained
                rows.append(
                    {
                        "variant": f"{name}-vs-fakequant",
                        **stats(got, fake_quant["logits"], labels),
                        "size_mb": size,
                    }
                )

    print(
        f"\n{len(texts)} held-out sentences ({args.heldout}), length {args.length} ({truncated} truncated), "
        f"{args.threads} threads; errors and agreement vs the fp32 JAX forward of the same run; fp32 median "
        f"top-2 logit margin {margin:.3g} (max |logit| {np.abs(ref).max():.3g})"
    )
    print(
        f"{'variant':48s} {'rel err':>9s} {'median row':>11s} {'agree':>7s} {'accuracy':>9s} {'size MB':>8s}"
    )
    for r in rows:
        size = f"{r['size_mb']:.1f}" if r["size_mb"] else "-"
        print(
            f"{r['variant']:48s} {r['rel_logit_error']:9.1e} {r['median_row_rel_error']:11.1e} "
            f"{100 * r['argmax_agreement']:6.1f}% {100 * r['accuracy']:8.1f}% {size:>8s}"
        )
    for name in failed:
        print(f"{name:48s} export failed (see above)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "sentences": len(texts),
                    "length": args.length,
                    "median_margin": margin,
                    "rows": rows,
                    "failed": failed,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
