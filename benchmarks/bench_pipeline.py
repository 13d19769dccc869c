"""text-classification on the SST-2 dev sentences: our pipeline (JAX; LiteRT dynamic-int8), MediaPipe's
TextClassifier on our int8 device-ready file, and HF's pipeline, all on the same weights.

    python benchmarks/bench_pipeline.py                                # full-size random weights
    python benchmarks/bench_pipeline.py --model runs/sst2/hf_model     # a fine-tuned classifier
    python benchmarks/bench_pipeline.py --work /tmp/bp --rounds 3      # keep (and reuse) the exports

Rows (each in its own worker process; in one process XLA's, torch's and LiteRT's thread pools fight):
  jax        `mbj.pipeline("text-classification", MODEL)`, batch `--batch-size`, padded to length buckets
  litert     the same pipeline on `export MODEL --format litert --quantize dynamic-int8
             --seq-lengths 8,16,...,64 --batch-size 8` (8 rows a call, each batch padded to the
             smallest signature that holds it; signatures share the weights, each adds ~0.15 MB)
  mediapipe  MediaPipe Tasks' `TextClassifier` on `export MODEL --format litert --quantize dynamic-int8
             --device-ready --seq-lengths 64` (one text at a time; it tokenizes on its own and pads to 64,
             which holds every SST-2 dev sentence: 55 tokens at most)
  hf         `transformers.pipeline("text-classification", MODEL)`, batch `--batch-size` (each batch
             padded to its longest row)
The model directory (default: a full-size `mobilebert-uncased` MobileBertForSequenceClassification,
HF's random init, written to the work dir with our tokenizer) and the exports are made once, before
any timing. Each worker warms up (ours: one batch per length bucket, which compiles every shape the
run needs; HF and MediaPipe: one batch / a few texts), then times `--repeats` passes over all
sentences and reports its best. Rounds run every worker once, in alternating order; the table gives
each row's median examples/s over the rounds and the ratio to HF's median (> 1: faster than HF), and
each row's label agreement with HF's labels. Goals (issue 34): jax >= 1.5x, litert (int8) >= 3x.
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


def _mediapipe(path: str, texts: list[str]):
    from mediapipe.tasks.python import BaseOptions, text

    opts = text.TextClassifierOptions(base_options=BaseOptions(model_asset_path=path), max_results=1)
    clf = text.TextClassifier.create_from_options(opts)

    def run(x):
        return [{"label": clf.classify(t).classifications[0].categories[0].category_name} for t in x]

    return run


def worker(
    kind: str, model: str, texts: list[str], batch_size: int, repeats: int, torch_threads: int
) -> dict:
    t0 = time.perf_counter()
    if kind == "mediapipe":
        run = _mediapipe(os.path.join(model, "model.tflite"), texts)
        load = time.perf_counter() - t0
        t = time.perf_counter()
        run(texts[:batch_size])
        warm = time.perf_counter() - t
    elif kind == "hf":
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
        # every row at its full length, as HF's pipeline runs it (a fine-tune's saved max_seq_length
        # would cap our pipeline at the training length)
        pipe = mbj.pipeline(
            "text-classification",
            model,
            backend=backend,
            batch_size=batch_size,
            progress=False,
            config_overrides={"max_seq_length": 128},
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
    if kind in ("jax", "litert"):
        res["compiled_shapes"] = getattr(pipe.backend, "compiled_shapes", None)
    return res


EXPORTS = {  # row -> extra `mobilebert-jax export` flags (all: --format litert --quantize dynamic-int8)
    "litert": ["--seq-lengths", "8,16,24,32,40,48,56,64", "--batch-size", "8"],
    "mediapipe": ["--seq-lengths", "64", "--device-ready"],
}


def _made_with(out: str, flags: list[str]) -> bool:
    """Whether the export in OUT has the lengths, batch size and device-readiness of `flags`."""
    with open(os.path.join(out, "export.json")) as f:
        m = json.load(f)
    lengths = [int(n) for n in flags[flags.index("--seq-lengths") + 1].split(",")]
    batch = int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else 1
    ready = "--device-ready" in flags
    return m["seq_lengths"] == lengths and m["batch_size"] == batch and bool(m.get("device_ready")) == ready


def export_for(kind: str, model: str, work: str) -> str:
    """The export directory the row `kind` runs (made with the CLI unless WORK already holds it, made
    with the same flags)."""
    out = os.path.join(work, f"{kind}-dynamic-int8")
    if os.path.exists(os.path.join(out, "export.json")) and _made_with(out, EXPORTS[kind]):
        return out
    cmd = [sys.executable, "-m", "mobilebert_jax.cli.main", "export", model, out, "--format", "litert"]
    cmd += ["--quantize", "dynamic-int8", "--overwrite", *EXPORTS[kind]]
    print("$ mobilebert-jax " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise SystemExit(f"export for the {kind} row failed (its error is above)")
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def available(kind: str) -> str | None:
    """Why the row cannot run here (None: it can)."""
    mods = {"litert": ("ai_edge_litert", "the export extra"), "mediapipe": ("mediapipe", "the test extra")}
    if kind not in mods:
        return None
    import importlib.util

    mod, extra = mods[kind]
    if importlib.util.find_spec(mod) is None or importlib.util.find_spec("litert_converter") is None:
        return f"needs {mod} and litert-converter ({extra}; scripts/setup.sh installs both)"
    return None


def run_worker(kind: str, model: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--model", model, "--data", args.data]
    cmd += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    cmd += ["--torch-threads", str(args.torch_threads)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: dict[str, list[dict]], n: int, args: argparse.Namespace) -> dict:
    import statistics

    med = {k: statistics.median(r["examples_per_s"] for r in rs) for k, rs in results.items()}
    threads = args.torch_threads or "default"
    print(
        f"\n{n} SST-2 dev sentences, batch size {args.batch_size}, best of {args.repeats} pass(es) per "
        f"round, {args.rounds} round(s), torch threads {threads}, {os.cpu_count()} CPUs, "
        f"load average now {os.getloadavg()[0]:.1f}"
    )
    print(f"{'':10} {'examples/s':>11} {'per round':>24} {'ratio vs HF':>12} {'labels = HF':>12}")
    hf_labels = results["hf"][0]["labels"]
    summary = {}
    for kind, rs in results.items():
        agree = sum(a == b for a, b in zip(rs[0]["labels"], hf_labels)) / n
        per_round = " ".join(f"{r['examples_per_s']:.1f}" for r in rs)
        ratio = med[kind] / med["hf"]
        print(f"{kind:10} {med[kind]:11.1f} {per_round:>24} {ratio:11.2f}x {100 * agree:11.1f}%")
        summary[kind] = {"examples_per_s": med[kind], "ratio_vs_hf": ratio, "label_agreement_with_hf": agree}
        summary[kind]["rounds"] = [{k: v for k, v in r.items() if k != "labels"} for r in rs]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF directory (default: full-size random weights in the work dir)")
    ap.add_argument("--work", help="folder for the model and the exports (kept; default: a temp dir)")
    ap.add_argument("--data", default=SST2, help="SST-2 dev.tsv")
    ap.add_argument("--rows", default="jax,litert,mediapipe,hf", help="comma-separated rows to run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per worker (its best counts)")
    ap.add_argument("--rounds", type=int, default=2, help="every worker once per round, alternating order")
    ap.add_argument("--limit", type=int, default=None, help="first N sentences only")
    ap.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads for HF (0: torch's default)"
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", choices=("jax", "hf", "litert", "mediapipe"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not os.path.isfile(args.data):
        raise SystemExit(f"{args.data}: SST-2 dev.tsv not found (pass --data)")
    texts = sentences(args.data)[: args.limit]
    if args.worker:
        res = worker(args.worker, args.model, texts, args.batch_size, args.repeats, args.torch_threads)
        print(json.dumps(res))
        return
    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or tmp.name
    os.makedirs(work, exist_ok=True)
    if args.model is None:
        args.model = os.path.join(work, "hf_model")
        if not os.path.exists(os.path.join(args.model, "config.json")):
            print("writing a full-size random MobileBertForSequenceClassification ...", flush=True)
            make_model(args.model)
    kinds = [k.strip() for k in args.rows.split(",") if k.strip()]
    if "hf" not in kinds:
        kinds.append("hf")  # the reference of every ratio
    dirs = {}
    for kind in list(kinds):
        why = available(kind)
        if why:
            print(f"{kind}: skipped, {why}")
            kinds.remove(kind)
        else:
            dirs[kind] = export_for(kind, args.model, work) if kind in EXPORTS else args.model
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            print(f"round {r + 1}: {kind} ...", flush=True)
            results[kind].append(run_worker(kind, dirs[kind], args))
    summary = report(results, len(texts), args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
