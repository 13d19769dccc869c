"""Deployed-model latency: full mobilebert-uncased (SequenceClassification), B=1, L=128 (the paper's
setting), each runtime in its own process, rounds alternating the order, the same inputs everywhere.

    python benchmarks/bench_export.py                       # random init (speed does not depend on weights)
    python benchmarks/bench_export.py --model runs/sst2/hf_model --rounds 3 --threads 2

Rows: JAX jit, LiteRT fp32 / dynamic-int8 / int8 (static, calibrated on SST-2 dev sentences) / int8-full (the
full-integer graph, same calibration) / int8-full-float-softmax (`--float-ops SOFTMAX`), onnxruntime
fp32 / dynamic-int8, HF PyTorch eager (the reference). Prints ms (median of the rounds' medians), the
speed-up over HF PT eager (its ms / ours), the file size, and each artifact's error vs JAX fp32 on the
benchmark input, with the load average before and after and this host's fp32 matmul peak (bench.py's).
Exports are written once into --work and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SST2_DEV = os.path.join(ROOT, "..", "shared", "data", "glue", "SST-2", "dev.tsv")
RUNTIMES = (
    "jax",
    "litert-fp32",
    "litert-dynamic-int8",
    "litert-int8",
    "litert-int8-full",
    "litert-int8-full-float-softmax",
    "onnx-fp32",
    "onnx-dynamic-int8",
    "hf-pt",
)


def _time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def worker(name: str, work: str, threads: int, warmup: int, iters: int, hf_attention: str = "sdpa") -> dict:
    with np.load(os.path.join(work, "inputs.npz")) as z:
        batch = {k: z[k] for k in z.files}
    hf_dir = os.path.join(work, "hf_model")
    if name == "hf-pt":
        import torch
        import transformers

        torch.set_num_threads(threads)
        m = transformers.MobileBertForSequenceClassification.from_pretrained(
            hf_dir, attn_implementation=hf_attention
        )
        m.eval()
        tb = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}

        def fn():
            with torch.no_grad():
                return m(**tb).logits.numpy()

    elif name == "jax":
        import jax

        from mobilebert_jax import from_pretrained
        from mobilebert_jax.export.common import make_forward

        model, params = from_pretrained(hf_dir)
        f = jax.jit(make_forward(model, params))

        def fn():
            return np.asarray(f(**batch)["logits"])

    else:
        from mobilebert_jax.export import load_runtime

        rt = load_runtime(os.path.join(work, name), num_threads=threads)

        def fn():
            return rt(**batch)["logits"]

    ms = _time(fn, warmup, iters)
    return {"name": name, "ms": ms, "logits": np.asarray(fn()).tolist()}


def prepare(work: str, model_dir: str | None, calibration_rows: int, only: list[str]) -> None:
    from mobilebert_jax import (
        MobileBertConfig,
        MobileBertForSequenceClassification,
        export,
        from_pretrained,
        init_params,
        save_pretrained,
    )
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    os.makedirs(work, exist_ok=True)
    hf_dir = os.path.join(work, "hf_model")
    if model_dir:
        model, params = from_pretrained(model_dir, "MobileBertForSequenceClassification")
    else:
        model = MobileBertForSequenceClassification(
            MobileBertConfig.from_preset("mobilebert-uncased", num_labels=2)
        )
        params = init_params(model, 0)
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        save_pretrained(hf_dir, params, model.config, "MobileBertForSequenceClassification")
    tok = MobileBertTokenizer.default()
    if not os.path.exists(SST2_DEV):
        raise SystemExit(f"{SST2_DEV} not found: the int8 calibration needs real SST-2 sentences")
    texts = export.read_calibration_file(SST2_DEV)
    # benchmark input: one real sentence padded to 128; calibration: other sentences
    enc = export.calibration_batch(texts[:1], tok, 128)
    np.savez(os.path.join(work, "inputs.npz"), **enc)
    calib = export.calibration_batch(texts[1 : 1 + calibration_rows], tok, 128)
    for fmt, q, float_ops in (
        ("litert", "none", ()),
        ("litert", "dynamic-int8", ()),
        ("litert", "int8", ()),
        ("litert", "int8-full", ()),
        ("litert", "int8-full", ("SOFTMAX",)),
        ("onnx", "none", ()),
        ("onnx", "dynamic-int8", ()),
    ):
        name = f"{fmt}-{'fp32' if q == 'none' else q}{'-float-softmax' if float_ops else ''}"
        out = os.path.join(work, name)
        if name not in only:
            continue
        if os.path.exists(os.path.join(out, "export.json")):  # reused: say from when (--work keeps it)
            written = time.strftime(
                "%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(os.path.join(out, "export.json")))
            )
            print(f"reusing {out} (written {written}; delete it to export again)", flush=True)
            continue
        t0 = time.perf_counter()
        print(f"exporting {name} ...", flush=True)
        export.export(
            model,
            params,
            out,
            format=fmt,
            quantize=q,
            seq_lengths=(128,),
            tokenizer=tok,
            calibration=calib,
            overwrite=True,
            float_ops=float_ops,
        )
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF directory to export (default: random-init mobilebert-uncased)")
    ap.add_argument("--work", default="/tmp/mobilebert_bench_export")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration-rows", type=int, default=128)
    ap.add_argument("--only", nargs="*", default=list(RUNTIMES), choices=RUNTIMES)
    ap.add_argument(
        "--hf-attention",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="HF PT's attention implementation (default sdpa: what from_pretrained picks)",
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker, args.work, args.threads, args.warmup, args.iters, args.hf_attention)
        print("RESULT " + json.dumps(res))
        return 0
    prepare(args.work, args.model, args.calibration_rows, args.only)
    from bench import matmul_peak_flops  # benchmarks/bench.py: one jitted 2048^3 fp32 matmul, best of 5

    peak = matmul_peak_flops() / 1e9
    load_before = os.getloadavg()
    print(
        f"host fp32 matmul peak {peak:.0f} GFLOP/s (JAX, all cores); load average {load_before}", flush=True
    )
    times: dict[str, list[float]] = {n: [] for n in args.only}
    logits: dict[str, np.ndarray] = {}
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=true"
    for r in range(args.rounds):
        order = args.only if r % 2 == 0 else args.only[::-1]
        for name in order:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--work",
                args.work,
                "--threads",
                str(args.threads),
            ]
            cmd += [
                "--iters",
                str(args.iters),
                "--warmup",
                str(args.warmup),
                "--hf-attention",
                args.hf_attention,
            ]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                raise SystemExit(f"{name} failed: {(p.stderr or p.stdout).strip().splitlines()[-3:]}")
            res = json.loads(line[0][7:])
            times[name].append(res["ms"])
            logits[name] = np.asarray(res["logits"])
            print(f"round {r + 1} {name}: {res['ms']:.1f} ms", flush=True)
    ref_ms = statistics.median(times["hf-pt"]) if "hf-pt" in times else None
    jax_logits = logits.get("jax")
    rows = []
    print(
        f"\nload average before {load_before}, after {os.getloadavg()}; host fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    print(
        f"B=1, L=128, {args.threads} threads, {args.rounds} rounds x {args.iters} iterations (median of medians);"
        f" HF PT eager with {args.hf_attention} attention"
    )
    print(f"{'runtime':22s} {'ms':>8s} {'vs HF PT eager':>15s} {'size MB':>8s} {'rel err vs JAX':>15s}")
    for name in args.only:
        ms = statistics.median(times[name])
        size = None
        if name not in ("jax", "hf-pt"):
            with open(os.path.join(args.work, name, "export.json")) as f:
                size = json.load(f)["size_bytes"] / 1e6
        err = None
        if jax_logits is not None:
            err = float(np.abs(logits[name] - jax_logits).max() / max(np.abs(jax_logits).max(), 1e-30))
        speed = ref_ms / ms if ref_ms else None
        rows.append(
            {
                "runtime": name,
                "ms": ms,
                "speedup_vs_hf_pt_eager": speed,
                "size_mb": size,
                "rel_err_vs_jax": err,
            }
        )
        print(
            f"{name:22s} {ms:8.1f} {(f'{speed:.2f}x') if speed else '-':>15s} "
            f"{(f'{size:.1f}') if size else '-':>8s} {(f'{err:.1e}') if err is not None else '-':>15s}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "rows": rows,
                    "matmul_peak_gflops": peak,
                    "load_before": load_before,
                    "load_after": os.getloadavg(),
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
