"""Ours vs HF PyTorch MobileBERT on the same weights, inputs and machine, measured in one run.

    python benchmarks/bench.py                          # the goal cells: SeqCls B=8 L=128, infer + train
    python benchmarks/bench.py --grid                   # SeqCls and PreTraining, B in {1,8,32}, L in {128,512}
    python benchmarks/bench.py --layers unroll          # our layers unrolled (scan: one scan; scan_layers: stacked)
    python benchmarks/bench.py --torch-compile --json results.json

Ours and the reference run in two separate worker processes (in one process, XLA's and torch's
thread pools spin against each other and slow both, by up to 10x on 2 cores). The coordinator
alternates them, one call at a time, for `--repeats` rounds (machine noise hits both), and reports medians: ms per call, ratio (reference / ours; > 1 means we are faster), compile seconds,
tokens/s, peak RSS growth, and the fraction of this machine's fp32 matmul peak (measured here by a
large jnp matmul) that our model FLOPs (from XLA's cost analysis) reach, and page faults per call
(ours/ref; fresh buffers being touched, see mobilebert_jax/training/host_allocator.py). `--json` also
keeps every call's time and faults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples the process RSS in a thread; `.peak - .start` is the growth during the block."""

    def __enter__(self):
        self.start = self.peak = rss_mb()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = min(_timeit(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / t


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _worker(
    conn,
    side: str,
    kind: str,
    model_name: str,
    b: int,
    t: int,
    scan: str,
    torch_compile: bool,
    allocator: str,
) -> None:
    """Builds one side of one cell, reports its setup, then times one call per "run" message."""
    try:
        from mobilebert_jax.training.host_allocator import tune_host_allocator

        tune_host_allocator(allocator)  # before this process's first JAX/torch computation
        info, fn = (_setup_ours if side == "ours" else _setup_ref)(
            kind, model_name, b, t, scan, torch_compile
        )
    except Exception as e:  # reported, not hidden
        conn.send({"error": f"{type(e).__name__}: {str(e)[:300]}"})
        return
    conn.send(info)
    while conn.recv() == "run":
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = _timeit(fn)
        conn.send((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))


_UNROLL = {"default": None, "unroll": True, "scan": False, "scan_layers": None}


def build(model_name: str, scan: str, dtype, flax: bool = True):
    """The mobilebert-uncased config; HF PyTorch weights (seed 0) and (with `flax`) the same in Flax.

    `scan`: "default" (HF's layer/{i} params, the loop `from_pretrained` picks by input size), "unroll"
    (the same params, unrolled layers), "scan" (the same params, one scan over them) or "scan_layers"
    (stacked [L, ...] params).
    """
    import torch
    import transformers

    from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
    from mobilebert_jax.checkpoints.pytorch import from_pytorch

    cfg = MobileBertConfig.from_preset("mobilebert-uncased")
    torch.manual_seed(0)
    pt = getattr(transformers, model_name)(transformers.MobileBertConfig.from_dict(cfg.to_dict()))
    if not flax:  # the reference worker runs no JAX at all
        return cfg, pt, None, None
    stacked = scan == "scan_layers"
    params = from_pytorch(pt.state_dict(), cfg, model_name, scan_layers=stacked)
    model = MODEL_CLASSES[model_name](cfg, scan_layers=stacked, unroll_layers=_UNROLL[scan], dtype=dtype)
    return cfg, pt, model, params


def _inputs(cfg, b, t):
    rs = np.random.RandomState(0)
    return dict(
        input_ids=rs.randint(1, cfg.vocab_size, (b, t)).astype(np.int32),
        attention_mask=np.ones((b, t), np.int32),
        labels=rs.randint(0, 2, (b,)).astype(np.int32),
    )


def _setup_ours(kind, model_name, b, t, scan, _torch_compile):
    from mobilebert_jax.training import optim
    from mobilebert_jax.training.objectives import loss_fn_for
    from mobilebert_jax.training.state import TrainState

    cfg, _, model, params = build(model_name, scan, jnp.float32)
    batch = {k: jnp.asarray(v) for k, v in _inputs(cfg, b, t).items()}
    with PeakRSS() as mem:
        if kind == "inference":

            def out_of(o):
                return o.logits if getattr(o, "logits", None) is not None else o.prediction_logits

            f = jax.jit(lambda p, i, m: out_of(model.apply({"params": p}, input_ids=i, attention_mask=m)))
            t0 = time.perf_counter()
            compiled = f.lower(params, batch["input_ids"], batch["attention_mask"]).compile()
            compile_s = time.perf_counter() - t0

            def fn():
                compiled(params, batch["input_ids"], batch["attention_mask"]).block_until_ready()
        else:
            loss_fn = loss_fn_for(model)

            def step(state, batch, rng):
                def f(p):
                    s, (c, _) = loss_fn(p, batch, rng, False)
                    return s / c

                loss, g = jax.value_and_grad(f)(state.params)
                return state.apply_gradients(g), loss

            holder = {"s": TrainState.create(params, optim.adamw(2e-5))}
            rng = jax.random.key(0)
            t0 = time.perf_counter()
            compiled = jax.jit(step, donate_argnums=0).lower(holder["s"], batch, rng).compile()
            compile_s = time.perf_counter() - t0

            def fn():
                holder["s"], loss = compiled(holder["s"], batch, rng)
                loss.block_until_ready()

        fn()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    if scan != "unroll":  # XLA counts one iteration of a loop: count the unrolled graph (lowered only)
        flops = _unrolled_flops(kind, model_name, cfg, batch)
    return dict(compile_s=compile_s, flops=flops, peak_rss_mb=mem.peak - mem.start), fn


def _unrolled_flops(kind, model_name, cfg, batch) -> float:
    """FLOPs of the same computation with unrolled layers, from XLA's cost analysis of the lowering."""
    from mobilebert_jax import MODEL_CLASSES
    from mobilebert_jax.training.objectives import loss_fn_for

    model = MODEL_CLASSES[model_name](cfg, unroll_layers=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, attention_mask=mask))["params"]
    if kind == "inference":
        fn = lambda p: model.apply({"params": p}, input_ids=ids, attention_mask=mask)  # noqa: E731
    else:
        loss_fn = loss_fn_for(model)
        fn = jax.grad(lambda p: loss_fn(p, batch, jax.random.key(0), False)[0])  # noqa: E731
    return float((jax.jit(fn).lower(params).cost_analysis() or {}).get("flops", float("nan")))


def _setup_ref(kind, model_name, b, t, _scan, torch_compile):
    import torch

    cfg, pt, _, _ = build(model_name, "unroll", jnp.float32, flax=False)
    tb = {k: torch.tensor(v, dtype=torch.long) for k, v in _inputs(cfg, b, t).items()}
    if torch_compile:
        pt = torch.compile(pt)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        if kind == "inference":
            pt.eval()

            def fn():
                with torch.no_grad():
                    pt(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"])
        else:
            pt.train()
            opt = torch.optim.AdamW(pt.parameters(), lr=2e-5, eps=1e-6, weight_decay=0.01)

            def fn():
                opt.zero_grad(set_to_none=True)
                pt(**tb).loss.backward()
                torch.nn.utils.clip_grad_norm_(pt.parameters(), 1.0)
                opt.step()

        fn()
    return dict(
        compile_s=time.perf_counter() - t0 if torch_compile else 0.0, peak_rss_mb=mem.peak - mem.start
    ), fn


def layers_for(kind: str, layers: str) -> str:
    """`--layers default` is each path's default: `from_pretrained`'s for inference (unrolled layers up
    to AUTO_UNROLL_MAX_TOKENS tokens, else one scan over the layer/{i} params), the fine-tuning job's (`JobConfig.unroll_layers`) for the training step."""
    if kind == "train_step" and layers == "default":
        from mobilebert_jax.jobs.config import JobConfig

        return "unroll" if JobConfig().unroll_layers else "scan"
    return layers


def allocator_for(kind: str, allocator: str) -> str:
    """`--host-allocator default` is each path's default: the system's malloc for inference (a library
    call), the `mobilebert-jax` job's (`tune_host_allocator`, "tuned") for the training step."""
    if allocator == "default":
        return "tuned" if kind == "train_step" else "system"
    return allocator


def run_cell(kind, model_name, b, t, args, peak, torch_compile=False) -> dict | None:
    import multiprocessing as mp

    layers = layers_for(kind, args.layers)
    allocators = {"ours": allocator_for(kind, args.host_allocator), "ref": args.ref_host_allocator}

    ctx = mp.get_context("spawn")
    sides = {}
    for side in ("ours", "ref"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker,
            args=(
                child,
                side,
                kind,
                model_name,
                b,
                t,
                layers,
                torch_compile and side == "ref",
                allocators[side],
            ),
            daemon=True,
        )
        proc.start()
        info = parent.recv()
        if "error" in info:
            print(f"  {side} ({'torch.compile' if torch_compile else 'eager'}) failed: {info['error']}")
            proc.kill()
            for conn, p, _ in sides.values():
                conn.send("stop")
                p.join()
            return None
        sides[side] = (parent, proc, info)
    times = {"ours": [], "ref": []}
    faults = {"ours": [], "ref": []}  # page faults (minor) per call: fresh buffers being touched
    for _ in range(args.repeats):  # one call each in turn; the idle side sleeps on its pipe
        for side, (conn, _, _) in sides.items():
            time.sleep(0.2)  # let the other side's thread pool go idle
            conn.send("run")
            seconds, n = conn.recv()
            times[side].append(seconds)
            faults[side].append(n)
    for conn, proc, _ in sides.values():
        conn.send("stop")
        proc.join()
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["ref"])
    o, r = sides["ours"][2], sides["ref"][2]
    ref_name = ("hf_pt_compile" if torch_compile else "hf_pt_eager") + (
        "" if kind == "inference" else "_adamw"
    )
    return dict(
        bench=kind,
        layers=layers,
        allocator=allocators["ours"],
        ref_allocator=allocators["ref"],
        model=model_name,
        batch=b,
        seq=t,
        reference=ref_name,
        ours_ms=ours_s * 1e3,
        ref_ms=ref_s * 1e3,
        ours_calls_ms=[round(x * 1e3, 1) for x in times["ours"]],  # every timed call, in order
        ref_calls_ms=[round(x * 1e3, 1) for x in times["ref"]],
        ours_faults_per_call=faults["ours"],
        ref_faults_per_call=faults["ref"],
        ratio=ref_s / ours_s,
        compile_s=o["compile_s"],
        ref_compile_s=r["compile_s"],
        tokens_per_s=b * t / ours_s,
        peak_rss_mb_ours=o["peak_rss_mb"],
        peak_rss_mb_ref=r["peak_rss_mb"],
        fraction_of_matmul_peak=o["flops"] / ours_s / peak,
    )


def parse_cell(text: str, ap) -> tuple[str, int, int]:
    """ "SequenceClassification:1:128" → ("MobileBertForSequenceClassification", 1, 128)."""
    from mobilebert_jax import MODEL_CLASSES

    parts = text.split(":")
    name = parts[0]
    head = (
        name
        if name.startswith("MobileBert")
        else "MobileBertModel"
        if name == "Model"
        else f"MobileBertFor{name}"
    )
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or int(parts[1]) < 1:
        ap.error(f"--cell {text!r}: expected HEAD:B:L, e.g. SequenceClassification:1:128")
    if head not in MODEL_CLASSES:
        names = sorted(n.replace("MobileBertFor", "").replace("MobileBert", "") for n in MODEL_CLASSES)
        ap.error(f"--cell {text!r}: no head {parts[0]!r} (one of {', '.join(names)})")
    return head, int(parts[1]), int(parts[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", action="store_true", help="the full inference grid (slow on CPU)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--layers",
        choices=("default", "unroll", "scan", "scan_layers"),
        default="default",
        help="how our layers run: the default (inference: from_pretrained's, unrolled up to "
        "AUTO_UNROLL_MAX_TOKENS tokens per call, else one scan over HF's layer/{i} params; training step: the "
        "fine-tuning job's, JobConfig.unroll_layers), unrolled layers (unroll_layers=True), one scan "
        "(unroll_layers=False), or stacked params (scan_layers=True); same math",
    )
    ap.add_argument(
        "--host-allocator",
        choices=("default", "tuned", "system"),
        default="default",
        help="our worker's malloc: each path's default (inference: the system's, as a library call gets; "
        "training step: the mobilebert-jax job's, tuned by tune_host_allocator), tuned, or the system's",
    )
    ap.add_argument(
        "--ref-host-allocator",
        choices=("system", "tuned"),
        default="system",
        help="the HF worker's malloc: the system's (HF as users run it) or the same tuning as ours",
    )
    ap.add_argument(
        "--cell",
        action="append",
        metavar="HEAD:B:L",
        help="time only this inference cell, e.g. SequenceClassification:1:128 or PreTraining:8:512 "
        "(repeatable; instead of --grid's or the default cell)",
    )
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--json", help="write all rows here")
    args = ap.parse_args()
    cells_asked = [parse_cell(c, ap) for c in args.cell or ()]  # bad --cell: an error before any work

    import torch

    peak = matmul_peak_flops()  # in this (coordinator) process: no torch work runs here
    print(
        f"machine: {os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    if args.cell:
        cells = cells_asked
    elif args.grid:
        cells = [
            (m, b, t)
            for m in ("MobileBertForSequenceClassification", "MobileBertForPreTraining")
            for b in (1, 8, 32)
            for t in (128, 512)
        ]
    else:
        cells = [("MobileBertForSequenceClassification", 8, 128)]
    rows = []
    jobs = [("inference", m, b, t) for m, b, t in cells]
    if not args.no_train:
        jobs.append(("train_step", "MobileBertForSequenceClassification", 8, 128))
    for kind, m, b, t in jobs:
        for compiled in (False, True) if args.torch_compile else (False,):
            row = run_cell(kind, m, b, t, args, peak, torch_compile=compiled)
            if row is not None:
                _print([row])
                rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(matmul_peak_flops=peak, rows=rows), f, indent=2)


def _print(rows) -> None:
    for r in rows:
        print(
            f"{r['bench']:10s} {r['model'][10:]:28s} B={r['batch']:3d} L={r['seq']:4d} layers={r['layers']:11s} "
            f"malloc={r['allocator']}/{r['ref_allocator']} "
            f"vs {r['reference']:18s} "
            f"ours {r['ours_ms']:9.1f} ms  ref {r['ref_ms']:9.1f} ms  ratio {r['ratio']:5.2f}x  "
            f"compile {r['compile_s']:5.1f} s  {r['tokens_per_s']:8.0f} tok/s  "
            f"mem +{r['peak_rss_mb_ours']:.0f}/+{r['peak_rss_mb_ref']:.0f} MB  "
            f"{100 * r['fraction_of_matmul_peak']:.1f}% of matmul peak  "
            f"faults/call {statistics.median(r['ours_faults_per_call']):.0f}"
            f"/{statistics.median(r['ref_faults_per_call']):.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
