"""Inference speed: our jitted forward vs HF PyTorch eager, same weights, inputs and machine, one run.

    python benchmarks/bench_forward.py                       # SeqCls, B=8, L=128, fp32
    python benchmarks/bench_forward.py --model MobileBertForPreTraining --batch 1 32 --seq 128 512

Timings alternate ours and the reference (so machine noise hits both), take the median of
`--repeats` rounds, and print the ratio (reference time / ours: > 1 means we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="MobileBertForSequenceClassification")
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--seq", type=int, nargs="+", default=[128])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--scan", action="store_true", help="scan over layers (faster compile)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch
    import transformers

    from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
    from mobilebert_jax.convert import from_pytorch

    torch.set_grad_enabled(False)
    cfg = MobileBertConfig.from_preset("mobilebert-uncased")
    hf_cfg = transformers.MobileBertConfig.from_dict(cfg.to_dict())
    pt = getattr(transformers, args.model)(hf_cfg).eval()
    params = from_pytorch(pt.state_dict(), cfg, args.model, scan_layers=args.scan)
    model = MODEL_CLASSES[args.model](cfg, scan_layers=args.scan)

    @jax.jit
    def fwd(p, ids, mask):
        out = model.apply({"params": p}, input_ids=ids, attention_mask=mask)
        return out.logits if hasattr(out, "logits") and out.logits is not None else out.prediction_logits

    print(f"machine: {os.cpu_count()} cpus; torch threads {torch.get_num_threads()}; jax {jax.__version__} "
          f"on {jax.devices()[0].platform}; model {args.model} (mobilebert-uncased config), fp32")
    rows = []
    for b in args.batch:
        for t in args.seq:
            rs = np.random.RandomState(0)
            ids = rs.randint(1, cfg.vocab_size, (b, t)).astype(np.int32)
            mask = np.ones((b, t), np.int32)
            ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
            t0 = time.perf_counter()
            fwd.lower(params, ids_j, mask_j).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(fwd(params, ids_j, mask_j))
            ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
            pt(input_ids=ids_t, attention_mask=mask_t)  # warm-up
            ours_ts, ref_ts = [], []
            for _ in range(args.repeats):  # alternate so noise hits both
                ours_ts.append(_median_time(lambda: jax.block_until_ready(fwd(params, ids_j, mask_j)), 1))
                ref_ts.append(_median_time(lambda: pt(input_ids=ids_t, attention_mask=mask_t), 1))
            ours_s, ref_s = statistics.median(ours_ts), statistics.median(ref_ts)
            row = dict(batch=b, seq=t, ours_ms=ours_s * 1e3, hf_pt_eager_ms=ref_s * 1e3, speedup=ref_s / ours_s,
                       compile_s=compile_s, tokens_per_s=b * t / ours_s)
            rows.append(row)
            print(f"B={b:3d} L={t:4d}  ours {row['ours_ms']:8.1f} ms  HF PT eager {row['hf_pt_eager_ms']:8.1f} ms  "
                  f"ratio {row['speedup']:.2f}x  compile {compile_s:.1f} s  {row['tokens_per_s']:.0f} tok/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
