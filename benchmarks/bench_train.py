"""Training-step benchmark: full-size MobileBERT sequence classification, JAX (unrolled vs scanned
layers) against HF PyTorch `MobileBertForSequenceClassification` + `torch.optim.AdamW`, same run.

    python benchmarks/bench_train.py [--batch 8] [--seq 128] [--steps 5] [--dtype float32|bfloat16]

Both sides: train mode (dropout on), AdamW (eps 1e-6, wd 0.01), global-norm clip 1.0, one optimizer
update per step. JAX: compile time is measured as trace+lower and XLA compile separately. Step time
is the median over `--rounds` rounds of `--steps` timed steps per contender, each block after one
untimed step (JAX steps end with `block_until_ready`); rounds spread load from other processes over
all contenders.
Prints a table and the ratio JAX / PyTorch; `--json` writes the numbers.
"""

# ruff: noqa: E402  (imports follow the sys.path line, so the script runs from a checkout)
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp

from mobilebert_jax import MobileBertConfig, MobileBertForSequenceClassification
from mobilebert_jax.training import objectives, optim, trainer
from mobilebert_jax.training import state as ts


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {
        "input_ids": r.integers(1000, vocab, (batch, seq)).astype(np.int32),
        "attention_mask": np.ones((batch, seq), np.int32),
        "token_type_ids": np.zeros((batch, seq), np.int32),
        "labels": r.integers(0, 2, batch).astype(np.int32),
    }


def setup_jax(
    cfg: MobileBertConfig, batch: dict, scan: bool, dtype
) -> tuple[dict[str, float], Callable[[], float]]:
    """Compiles the JAX step; returns (compile timings, `one()` that runs one timed-ready step)."""
    model = MobileBertForSequenceClassification(cfg, dtype=dtype, scan_layers=scan)
    tx = optim.adamw(2e-5)
    st = ts.create_train_state(ts.model_init_fn(model, batch), tx, jax.random.key(0))
    step = trainer.make_train_step(objectives.loss_fn_for(model), learning_rate=2e-5, donate=True)
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    lowered = step.jitted.lower(st.state, b, rng)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    box = {"state": st.state}

    def one() -> float:
        box["state"], m = step(box["state"], b, rng)
        jax.block_until_ready((box["state"].params, m["loss"]))
        return float(m["loss"])

    one()  # warm-up (jit's cache already holds the executable compiled above)
    return {"trace_lower_s": t1 - t0, "compile_s": t2 - t1}, one


def setup_torch(cfg: MobileBertConfig, batch: dict) -> Callable[[], float]:
    import torch
    import transformers

    torch.manual_seed(0)
    hf = transformers.MobileBertConfig.from_dict(cfg.to_dict())
    model = transformers.MobileBertForSequenceClassification(hf).train()
    no_decay = lambda n: "bias" in n or "LayerNorm" in n  # noqa: E731
    groups = [
        {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=2e-5, eps=1e-6)
    tb = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}

    def one() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(**tb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    one()
    return one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--modes", default="unrolled,scanned")
    ap.add_argument("--no_torch", action="store_true")
    ap.add_argument(
        "--omp_active",
        action="store_true",
        help="keep OpenMP's default spin-waiting for torch (by default OMP_WAIT_POLICY=PASSIVE: on a shared, "
        "oversubscribed CPU, spinning torch threads slowed its step 5-10x in our runs)",
    )
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    if not args.omp_active:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp
    cfg = MobileBertConfig(num_labels=2)
    batch = make_batch(args.batch, args.seq, cfg.vocab_size)
    dtype = jnp.dtype(args.dtype)
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, cpus={os.cpu_count()}, "
        f"load avg {os.getloadavg()[0]:.1f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"B={args.batch} L={args.seq}, dtype={args.dtype}, steps={args.steps}x{args.rounds}",
        flush=True,
    )
    results: dict[str, dict] = {}
    runners: dict[str, Callable[[], float]] = {}
    for mode in args.modes.split(","):
        results[f"jax_{mode}"], runners[f"jax_{mode}"] = setup_jax(cfg, batch, mode == "scanned", dtype)
        r = results[f"jax_{mode}"]
        print(
            f"jax {mode:9s} trace+lower {r['trace_lower_s']:6.2f} s  compile {r['compile_s']:6.2f} s",
            flush=True,
        )
    if not args.no_torch:
        import torch

        runners["torch"] = setup_torch(cfg, batch)
        results["torch"] = {"threads": torch.get_num_threads()}
    # Blocks of steps per contender (one untimed step first), in `--rounds` rounds: load drift on a
    # shared machine hits every contender, while one framework's idle threads never spin during the
    # other's timed steps (step-by-step interleaving slowed torch 10x that way).
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, one in runners.items():
            one()
            for _ in range(args.steps):
                t = time.perf_counter()
                results[k]["loss"] = one()
                times[k].append(time.perf_counter() - t)
    for k in runners:
        results[k]["step_s"] = statistics.median(times[k])
        results[k]["step_s_all"] = times[k]
        print(
            f"{k:14s} step {results[k]['step_s'] * 1e3:8.1f} ms (median of {len(times[k])})  "
            f"loss {results[k]['loss']:.4f}",
            flush=True,
        )
    if "torch" in runners:
        for mode in args.modes.split(","):
            ratio = results[f"jax_{mode}"]["step_s"] / results["torch"]["step_s"]
            results[f"jax_{mode}"]["ratio_to_torch"] = ratio
            print(f"ratio jax {mode} / torch ({results['torch']['threads']} threads) step time: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
