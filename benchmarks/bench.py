"""Ours vs HF PyTorch MobileBERT on the same weights, inputs and machine, measured in one run.

    python benchmarks/bench.py                          # the goal cells: SeqCls B=8 L=128, infer + train
    python benchmarks/bench.py --grid                   # SeqCls and PreTraining, B in {1,8,32}, L in {128,512}
    python benchmarks/bench.py --torch-compile --json results.json

Each cell alternates ours and the reference for `--repeats` rounds (machine noise hits both) and
reports medians: ms per call, ratio (reference / ours; > 1 means we are faster), compile seconds,
tokens/s, peak RSS growth, and the fraction of this machine's fp32 matmul peak (measured here by a
large jnp matmul) that our model FLOPs (from XLA's cost analysis) reach.
"""

from __future__ import annotations

import argparse
import json
import os
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


def alternate(ours, ref, repeats: int) -> tuple[float, float]:
    o, r = [], []
    for _ in range(repeats):
        o.append(_timeit(ours))
        if ref is not None:
            r.append(_timeit(ref))
    return statistics.median(o), (statistics.median(r) if r else float("nan"))


def build(model_name: str, scan: bool, dtype):
    import torch
    import transformers

    from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
    from mobilebert_jax.convert import from_pytorch

    cfg = MobileBertConfig.from_preset("mobilebert-uncased")
    torch.manual_seed(0)
    pt = getattr(transformers, model_name)(transformers.MobileBertConfig.from_dict(cfg.to_dict()))
    params = from_pytorch(pt.state_dict(), cfg, model_name, scan_layers=scan)
    return cfg, pt, MODEL_CLASSES[model_name](cfg, scan_layers=scan, dtype=dtype), params


def bench_inference(model_name, b, t, args, peak):
    import torch

    cfg, pt, model, params = build(model_name, args.scan, jnp.float32)
    pt.eval()
    rs = np.random.RandomState(0)
    ids = rs.randint(1, cfg.vocab_size, (b, t))
    mask = np.ones((b, t), np.int64)

    def out_of(o):
        return o.logits if getattr(o, "logits", None) is not None else o.prediction_logits

    fwd = jax.jit(lambda p, i, m: out_of(model.apply({"params": p}, input_ids=i, attention_mask=m)))
    ij, mj = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    t0 = time.perf_counter()
    compiled = fwd.lower(params, ij, mj).compile()
    compile_s = time.perf_counter() - t0
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    with PeakRSS() as mem_ours:
        compiled(params, ij, mj).block_until_ready()
    it, mt = torch.tensor(ids), torch.tensor(mask)
    torch_fns = {"eager": pt}
    if args.torch_compile:
        try:
            torch_fns["compile"] = torch.compile(pt)
            with torch.no_grad():
                torch_fns["compile"](input_ids=it, attention_mask=mt)
        except Exception as e:  # report, do not hide
            print(f"  torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
            torch_fns.pop("compile")
    rows = []
    with torch.no_grad():
        with PeakRSS() as mem_ref:
            pt(input_ids=it, attention_mask=mt)
        for kind, fn in torch_fns.items():
            ours_s, ref_s = alternate(
                lambda: compiled(params, ij, mj).block_until_ready(),
                lambda fn=fn: fn(input_ids=it, attention_mask=mt),
                args.repeats,
            )
            rows.append(
                dict(
                    bench="inference",
                    model=model_name,
                    batch=b,
                    seq=t,
                    reference=f"hf_pt_{kind}",
                    ours_ms=ours_s * 1e3,
                    ref_ms=ref_s * 1e3,
                    ratio=ref_s / ours_s,
                    compile_s=compile_s,
                    tokens_per_s=b * t / ours_s,
                    peak_rss_mb_ours=mem_ours.peak - mem_ours.start,
                    peak_rss_mb_ref=mem_ref.peak - mem_ref.start,
                    fraction_of_matmul_peak=flops / ours_s / peak,
                )
            )
    return rows


def bench_train(b, t, args, peak):
    import torch

    from mobilebert_jax import optim
    from mobilebert_jax.objectives import loss_fn_for
    from mobilebert_jax.train_state import TrainState

    name = "MobileBertForSequenceClassification"
    cfg, pt, model, params = build(name, args.scan, jnp.float32)
    rs = np.random.RandomState(0)
    batch = dict(
        input_ids=rs.randint(1, cfg.vocab_size, (b, t)).astype(np.int32),
        attention_mask=np.ones((b, t), np.int32),
        labels=rs.randint(0, 2, (b,)).astype(np.int32),
    )
    tx = optim.adamw(2e-5)
    loss_fn = loss_fn_for(model)

    def step(state, batch, rng):
        def f(p):
            s, (c, _) = loss_fn(p, batch, rng, False)
            return s / c

        loss, g = jax.value_and_grad(f)(state.params)
        return state.apply_gradients(g), loss

    state = TrainState.create(params, tx)
    jstep = jax.jit(step, donate_argnums=0)
    bj = {k: jnp.asarray(v) for k, v in batch.items()}
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = jstep.lower(state, bj, rng).compile()
    compile_s = time.perf_counter() - t0
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    holder = {"s": state}

    def ours():
        holder["s"], loss = compiled(holder["s"], bj, rng)
        loss.block_until_ready()

    with PeakRSS() as mem_ours:
        ours()
    pt.train()
    opt = torch.optim.AdamW(pt.parameters(), lr=2e-5, eps=1e-6, weight_decay=0.01)
    tb = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}

    def ref():
        opt.zero_grad(set_to_none=True)
        out = pt(**tb)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(pt.parameters(), 1.0)
        opt.step()

    with PeakRSS() as mem_ref:
        ref()
    ours_s, ref_s = alternate(ours, ref, args.repeats)
    return [
        dict(
            bench="train_step",
            model=name,
            batch=b,
            seq=t,
            reference="hf_pt_eager_adamw",
            ours_ms=ours_s * 1e3,
            ref_ms=ref_s * 1e3,
            ratio=ref_s / ours_s,
            compile_s=compile_s,
            tokens_per_s=b * t / ours_s,
            peak_rss_mb_ours=mem_ours.peak - mem_ours.start,
            peak_rss_mb_ref=mem_ref.peak - mem_ref.start,
            fraction_of_matmul_peak=flops / ours_s / peak,
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", action="store_true", help="the full inference grid (slow on CPU)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--scan", action="store_true", help="scanned layers (faster compile, same math)")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--json", help="write all rows here")
    args = ap.parse_args()

    import torch

    peak = matmul_peak_flops()
    print(
        f"machine: {os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    cells = (
        [
            (m, b, t)
            for m in ("MobileBertForSequenceClassification", "MobileBertForPreTraining")
            for b in (1, 8, 32)
            for t in (128, 512)
        ]
        if args.grid
        else [("MobileBertForSequenceClassification", 8, 128)]
    )
    rows = []
    for m, b, t in cells:
        new = bench_inference(m, b, t, args, peak)
        _print(new)
        rows += new
    if not args.no_train:
        new = bench_train(8, 128, args, peak)
        _print(new)
        rows += new
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(matmul_peak_flops=peak, rows=rows), f, indent=2)


def _print(rows) -> None:
    for r in rows:
        print(
            f"{r['bench']:10s} {r['model'][10:]:28s} B={r['batch']:3d} L={r['seq']:4d} vs {r['reference']:18s} "
            f"ours {r['ours_ms']:9.1f} ms  ref {r['ref_ms']:9.1f} ms  ratio {r['ratio']:5.2f}x  "
            f"compile {r['compile_s']:5.1f} s  {r['tokens_per_s']:8.0f} tok/s  "
            f"mem +{r['peak_rss_mb_ours']:.0f}/+{r['peak_rss_mb_ref']:.0f} MB  "
            f"{100 * r['fraction_of_matmul_peak']:.1f}% of matmul peak",
            flush=True,
        )


if __name__ == "__main__":
    main()
