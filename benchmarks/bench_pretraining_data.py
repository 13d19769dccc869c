"""Pretraining data at corpus scale: peak memory and throughput of `prepare-pretraining-data`, and the
Grain loader's rate against the training step's consumption.

    python benchmarks/bench_pretraining_data.py --sizes 10 50 200 --workers 1 2 --tmp /tmp/mbj_corpus

The corpus is real text from ../shared/data (SQuAD v1.1 dev paragraphs, QNLI/MRPC/CoLA/SST-2
sentences, CoNLL-2003 sentences; about 6 MB of documents), repeated with the document order shuffled
and each document's sentences rotated, to N MB under --tmp (never in the repository). Each
preparation runs in its own process under `/usr/bin/time -v` (peak RSS of the largest single process:
the main one or one worker) while a sampler sums the RSS of the whole process tree.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import random
import re
import subprocess
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "..", "shared", "data")


def base_documents() -> list[list[str]]:
    docs: list[list[str]] = []
    split = re.compile(r"(?<=[.!?])\s+")
    with open(os.path.join(DATA, "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        for art in json.load(f)["data"]:
            for p in art["paragraphs"]:
                docs.append([s for s in split.split(p["context"].strip()) if s])

    def grouped(sents, n=8):
        sents = [s.strip() for s in sents if s and s.strip()]
        return [sents[i : i + n] for i in range(0, len(sents), n)]

    def tsv(path, cols, skip=1):
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[skip:]
        return [r[c] for r in rows for c in cols if len(r) > c]

    g = os.path.join(DATA, "glue")
    docs += grouped(tsv(os.path.join(g, "QNLI", "dev.tsv"), [1, 2]))
    for name in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"):
        p = os.path.join(g, "MRPC", name)
        if os.path.exists(p):
            docs += grouped(tsv(p, [3, 4]))
    docs += grouped(tsv(os.path.join(g, "CoLA", "dev.tsv"), [3], skip=0))
    docs += grouped(tsv(os.path.join(g, "SST-2", "dev.tsv"), [0]))
    for path in glob.glob(os.path.join(DATA, "conll2003", "*.txt")):
        doc, sent = [], []
        for line in open(path, encoding="utf-8"):
            tok = line.split()
            if not tok:
                if sent:
                    doc.append(" ".join(sent))
                    sent = []
            elif tok[0] == "-DOCSTART-":
                if doc:
                    docs.append(doc)
                doc = []
            else:
                sent.append(tok[0])
        if doc:
            docs.append(doc)
    return [d for d in docs if d]


def write_corpus(path: str, mb: float, docs: list[list[str]]) -> int:
    """Writes about `mb` MB: repetitions of `docs`, each shuffled and with sentences rotated."""
    target, size, rep = int(mb * 2**20), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            r = random.Random(rep)
            order = list(range(len(docs)))
            r.shuffle(order)
            for i in order:
                d = docs[i]
                k = rep % len(d)
                text = "\n".join(d[k:] + d[:k]) + "\n\n"
                f.write(text)
                size += len(text.encode("utf-8"))
                if size >= target:
                    break
            rep += 1
    return size


def run_measured(cmd: list[str], env: dict) -> dict:
    """Runs `cmd` under /usr/bin/time -v; returns wall, peak RSS (largest process) and peak tree RSS."""
    import psutil

    proc = subprocess.Popen(
        ["/usr/bin/time", "-v", *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = [0]

    def sample():
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [p, *p.children(recursive=True)]
                peak[0] = max(peak[0], sum(c.memory_info().rss for c in tree if c.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out}\n{err[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    # CPU seconds of the whole tree (the main process and its waited-for workers): load-independent
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", err).group(1)) for k in ("User", "System"))
    summary = json.loads(out.strip().splitlines()[-1].split(": ", 2)[2])
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": rss_kb / 1024,
        "peak_tree_rss_mb": peak[0] / 2**20,
        "load_avg_1min_after": os.getloadavg()[0],
        **summary,
    }


def prepare_cmd(text: str, out: str, workers: int, shard_mb: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mobilebert_jax.cli.main",
        "prepare-pretraining-data",
        text,
        "--output-dir",
        out,
        "--num-workers",
        str(workers),
        "--shard-size-mb",
        str(shard_mb),
        "--no-progress",
    ]


def loader_rate(folder: str, batch: int, workers: int, seconds: float = 10.0) -> float:
    from mobilebert_jax.training.grain_data import prepared_iterator

    it = prepared_iterator(folder, batch, seed=0, num_workers=workers, process_index=0, process_count=1)
    next(it)  # start-up (worker processes) not counted
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += batch
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate


def step_rate(preset: str, batch: int, max_len: int, overrides: dict, steps: int = 3) -> float:
    """Examples/s of the jitted MLM+NSP train step (LAMB) on this machine."""
    import jax
    import numpy as np

    from mobilebert_jax import MobileBertConfig, MobileBertForPreTraining
    from mobilebert_jax.training import objectives, optim, trainer
    from mobilebert_jax.training import state as ts

    cfg = MobileBertConfig.from_preset(preset, **overrides)
    model = MobileBertForPreTraining(cfg, scan_layers=True)  # one layer to compile
    r = np.random.default_rng(0)
    b = {
        "input_ids": r.integers(5, 30000, (batch, max_len)).astype(np.int32),
        "token_type_ids": np.zeros((batch, max_len), np.int32),
        "attention_mask": np.ones((batch, max_len), np.int32),
        "labels": np.where(r.random((batch, max_len)) < 0.15, 7, -100).astype(np.int32),
        "next_sentence_label": np.zeros(batch, np.int32),
    }
    st = ts.create_train_state(ts.model_init_fn(model, b), optim.lamb(1e-3), jax.random.key(0))
    step = trainer.make_train_step(objectives.loss_fn_for(model), learning_rate=1e-3)
    state, rng = st.state, jax.random.key(1)
    state, m = step(state, b, rng)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, b, rng)
    jax.block_until_ready(m)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--sizes", type=float, nargs="*", default=[10, 50, 200], help="corpus sizes (MB) for memory"
    )
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts for throughput")
    ap.add_argument(
        "--workers-size", type=float, default=50, help="corpus size (MB) of the worker comparison"
    )
    ap.add_argument("--shard-size-mb", type=float, default=8.0)
    ap.add_argument("--tmp", default="/tmp/mbj_corpus")
    ap.add_argument("--skip-prepare", action="store_true")
    ap.add_argument("--skip-step", action="store_true", help="skip the training step's rate (long compiles)")
    args = ap.parse_args()
    os.makedirs(args.tmp, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    print(f"machine: {os.cpu_count()} CPUs visible; load average {os.getloadavg()}", flush=True)
    docs = base_documents()
    print(f"base corpus: {len(docs)} documents, {sum(len(d) for d in docs)} sentences", flush=True)
    rows = []

    def prepare(mb: float, w: int) -> None:
        text = os.path.join(args.tmp, f"corpus_{mb:g}mb.txt")
        if not os.path.exists(text):
            write_corpus(text, mb, docs)
        out = os.path.join(args.tmp, f"prep_{mb:g}mb_w{w}")
        subprocess.run(["rm", "-rf", out], check=True)
        res = run_measured(prepare_cmd(text, out, w, args.shard_size_mb), env)
        res.update(corpus_mb=os.path.getsize(text) / 2**20, workers=w, shard_size_mb=args.shard_size_mb)
        rows.append(res)
        print(json.dumps(res), flush=True)

    if not args.skip_prepare:
        for mb in args.sizes:
            prepare(mb, 1)
        for w in args.workers:
            if not (w == 1 and args.workers_size in args.sizes):
                prepare(args.workers_size, w)
    folder = os.path.join(args.tmp, f"prep_{args.workers_size:g}mb_w1")
    if os.path.exists(os.path.join(folder, "dataset.json")):
        for w in (0, 2):
            print(
                json.dumps({"loader_examples_per_s": loader_rate(folder, 256, w), "workers": w}), flush=True
            )
    for preset, ov in (
        ()
        if args.skip_step
        else (("mobilebert-uncased", {}), ("mobilebert-uncased", {"num_hidden_layers": 2}))
    ):
        rate = step_rate(preset, 32, 128, ov)
        print(
            json.dumps({"train_step_examples_per_s": rate, "preset": preset, **ov, "batch": 32}), flush=True
        )


if __name__ == "__main__":
    main()
