"""text-classification pipelines on the SST-2 dev sentences: ours (JAX; LiteRT) vs HF's, same weights.

    python benchmarks/bench_pipeline.py                           # full-size random weights, JAX vs HF
    python benchmarks/bench_pipeline.py --model runs/sst2/hf_model --batch-size 32
    python benchmarks/bench_pipeline.py --litert export/sst2-int8  # adds a LiteRT backend run

The model directory (default: a full-size `mobilebert-uncased` MobileBertForSequenceClassification,
HF's random init, written once to a temp dir with our tokenizer) is loaded by each side in its own
worker process, one after the other (in one process XLA's and torch's thread pools fight). Each
worker first warms up (ours: one batch per length bucket, which compiles every shape the run needs;
HF: one batch), then times `--repeats` passes over all sentences and reports the best examples/s.
Ratios are ours / HF (> 1: we are faster). Both sides use batch size `--batch-size`; HF pads each
batch to its longest row, ours to the smallest length bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SST2 = os.path.join(HERE, "..", "..", "shared", "data", "glue", "SST-2", "dev.tsv")


def sentences(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [r[0] for r in rows if r and r[0].strip()]


def make_model(folder: str) -> None:
    """HF's random init of the full-size model (so the [PAD] row is zero, as in any HF checkpoint)."""
    import torch
    import transformers

    from mobilebert_jax import MobileBertConfig, MobileBertTokenizer

    torch.manual_seed(0)
    cfg = MobileBertConfig.from_preset("mobilebert-uncased", num_labels=2)
    hf_cfg = transformers.MobileBertConfig.from_dict(cfg.to_dict())
    transformers.MobileBertForSequenceClassification(hf_cfg).eval().save_pretrained(folder)
    MobileBertTokenizer.default().save_pretrained(folder)


def _timed(run, texts, repeats):
    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = run(texts)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, out


def worker(
    kind: str, model: str, texts: list[str], batch_size: int, repeats: int, torch_threads: int
) -> dict:
    t0 = time.perf_counter()
    if kind == "hf":
        import torch
        import transformers

        if torch_threads:
            torch.set_num_threads(torch_threads)

        pipe = transformers.pipeline("text-classification", model=model, device="cpu", batch_size=batch_size)

        def run(x):
            with torch.inference_mode():
                return pipe(x)

        load = time.perf_counter() - t0
        t = time.perf_counter()
        run(texts[:batch_size])
        warm = time.perf_counter() - t
    else:
        import mobilebert_jax as mbj

        backend = "jax" if kind == "jax" else "litert"
        pipe = mbj.pipeline(
            "text-classification", model, backend=backend, batch_size=batch_size, progress=False
        )
        load = time.perf_counter() - t0
        # One batch per bucket the run will use: compiles every shape before the timed passes.
        lengths = [len(ids) for ids in pipe.tokenizer(texts, padding=False)["input_ids"]]
        by_bucket = {}
        for text, n in zip(texts, lengths):
            by_bucket.setdefault(next(b for b in pipe.buckets if b >= n), []).append(text)
        t = time.perf_counter()
        for group in by_bucket.values():
            pipe(group[:batch_size])
        warm = time.perf_counter() - t

        def run(x):
            return pipe(x)

    dt, out = _timed(run, texts, repeats)
    res = {
        "kind": kind,
        "examples": len(texts),
        "seconds": dt,
        "examples_per_s": len(texts) / dt,
        "load_s": load,
        "warmup_s": warm,
        "labels": [o["label"] for o in out],
    }
    if kind != "hf":
        res["compiled_shapes"] = getattr(pipe.backend, "compiled_shapes", None)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF directory (default: full-size random weights in a temp dir)")
    ap.add_argument(
        "--litert", help="export directory with model.tflite (e.g. dynamic-int8) of the same weights"
    )
    ap.add_argument("--data", default=SST2, help="SST-2 dev.tsv")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N sentences only")
    ap.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads for HF (0: torch's default)"
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", choices=("jax", "hf", "litert"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not os.path.isfile(args.data):
        raise SystemExit(f"{args.data}: SST-2 dev.tsv not found (pass --data)")
    texts = sentences(args.data)[: args.limit]
    if args.worker:
        model = args.litert if args.worker == "litert" else args.model
        print(
            json.dumps(worker(args.worker, model, texts, args.batch_size, args.repeats, args.torch_threads))
        )
        return
    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory()
        args.model = tmp.name
        print("writing a full-size random MobileBertForSequenceClassification ...", flush=True)
        make_model(args.model)
    kinds = ["jax", "hf"]
    if args.litert:
        try:
            import ai_edge_litert  # noqa: F401
        except ImportError:
            print("litert: skipped, ai-edge-litert is not installed")
        else:
            kinds.append("litert")
    else:
        print("litert: skipped, no --litert export directory given")
    results = {}
    for kind in kinds:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            kind,
            "--model",
            args.model,
            "--data",
            args.data,
            "--batch-size",
            str(args.batch_size),
            "--repeats",
            str(args.repeats),
            "--torch-threads",
            str(args.torch_threads),
        ]
        if args.litert:
            cmd += ["--litert", args.litert]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print(f"{kind}: running ...", flush=True)
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        if proc.returncode != 0:
            raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    hf = results["hf"]
    threads = args.torch_threads or "default"
    print(
        f"\n{len(texts)} SST-2 dev sentences, batch size {args.batch_size}, best of {args.repeats} passes, "
        f"torch threads {threads}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'':8} {'examples/s':>11} {'pass s':>8} {'load s':>7} {'warm-up s':>10} {'ratio vs HF':>12}")
    for kind, r in results.items():
        ratio = r["examples_per_s"] / hf["examples_per_s"]
        print(
            f"{kind:8} {r['examples_per_s']:11.1f} {r['seconds']:8.2f} {r['load_s']:7.1f} {r['warmup_s']:10.1f} "
            f"{ratio:11.2f}x"
        )
    for kind, r in results.items():
        if kind != "hf":
            agree = sum(a == b for a, b in zip(r["labels"], hf["labels"])) / len(texts)
            print(
                f"{kind}: label agreement with HF {100 * agree:.1f}%; compiled shapes {r.get('compiled_shapes')}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {k: {kk: vv for kk, vv in v.items() if kk != "labels"} for k, v in results.items()},
                f,
                indent=2,
            )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
