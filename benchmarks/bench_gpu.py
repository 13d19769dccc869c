"""GPU figures in one command: ours vs HF PyTorch (eager and torch.compile), bf16 mixed precision.

    bash benchmarks/gpu.sh                 # installs what it needs, then runs this (about 6 minutes)
    bash benchmarks/gpu.sh --dry-run       # the same code path, tiny config, CPU backend (CI)
    python benchmarks/bench_gpu.py --torch-python .venv-gpu-torch/bin/python --json gpu.json

Measured, each side in its own process on the same GPU, one side at a time:
- training tokens/s (forward + backward + AdamW with clip 1.0) for MobileBertForSequenceClassification
  and MobileBertForPreTraining (MLM + NSP) at B in 32..256, L = 128 and 512; ours: bf16 compute with
  float32 params (`dtype=bfloat16`), scanned layers, jit with donation; HF: `torch.autocast(bf16)`
  over float32 params, fused AdamW, eager and `torch.compile`;
- our MFU: model FLOPs from XLA's cost analysis of the lowered step (a scanned loop is counted once
  by XLA, so the step is lowered with 1 and 2 unrolled layers and extrapolated, which is exact for
  identical layers) / step time / the chip's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s);
- inference latency at B=1, L=128 and throughput at B=256, L=128;
- peak memory: ours from XLA's memory analysis of the compiled step (arguments + temporaries +
  outputs - aliased), theirs `torch.cuda.max_memory_allocated`.
Cells run in priority order under a time budget (`--budget-s`, default 360 s for all sides); a cell
that does not fit is reported as skipped. Results: one JSON (`--json`) and a printed table.

The reference worker imports no JAX (it gets the config as JSON), so torch and jax can live in two
virtual environments (`--torch-python`), as `gpu.sh` sets them up, and never fight over CUDA libraries.
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
ROOT = os.path.dirname(HERE)
CLASSES = {"seqcls": "MobileBertForSequenceClassification", "pretraining": "MobileBertForPreTraining"}
# dense bf16 peak, TFLOP/s, by a substring of the device kind (first match wins)
PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L4", 121.0))


def cells(dry: bool) -> list[dict]:
    """(kind, head, B, L) in priority order: what matters most runs first."""
    if dry:  # one training and one inference cell: every code path, as little compiling as possible
        shapes = [("train", "seqcls", 4, 16), ("infer", "seqcls", 1, 16)]
    else:
        shapes = [("train", "seqcls", 256, 128), ("train", "pretraining", 256, 128)]
        shapes += [("infer", "seqcls", 1, 128), ("infer", "seqcls", 256, 128)]
        shapes += [("train", h, 64, 512) for h in CLASSES] + [("train", h, 32, 128) for h in CLASSES]
        shapes += [("train", h, 32, 512) for h in CLASSES] + [("train", h, 256, 512) for h in CLASSES]
    return [dict(kind=k, head=h, batch=b, seq=t) for k, h, b, t in shapes]


def model_config(dry: bool, attention_dropout: float) -> dict:
    sys.path.insert(0, ROOT)
    from mobilebert_jax import MobileBertConfig

    cfg = MobileBertConfig.from_preset("mobilebert-test" if dry else "mobilebert-uncased")
    if dry:
        cfg = MobileBertConfig.from_dict({**cfg.to_dict(), "num_hidden_layers": 2})
    return {**cfg.to_dict(), "attention_probs_dropout_prob": attention_dropout}


def batch_arrays(cfg: dict, head: str, b: int, t: int, seed: int = 0) -> dict:
    import numpy as np

    r = np.random.default_rng(seed)
    ids = r.integers(5, cfg["vocab_size"], (b, t)).astype(np.int32)
    out = dict(
        input_ids=ids, attention_mask=np.ones((b, t), np.int32), token_type_ids=np.zeros((b, t), np.int32)
    )
    if head == "seqcls":
        out["labels"] = r.integers(0, 2, (b,)).astype(np.int32)
    else:  # 15% of the positions are MLM targets, as in pretraining
        out["labels"] = np.where(r.random((b, t)) < 0.15, ids, -100).astype(np.int32)
        out["next_sentence_label"] = r.integers(0, 2, (b,)).astype(np.int32)
    return out


# ---------------------------------------------------------------------------------------------------
# Worker: ours (JAX)
# ---------------------------------------------------------------------------------------------------
def _ours_flops(cfg_dict, cls_name, batch, dtype) -> float:
    """FLOPs of one train step from XLA's cost analysis, extrapolated from 1 and 2 unrolled layers."""
    import jax

    from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
    from mobilebert_jax.training import optim
    from mobilebert_jax.training.objectives import loss_fn_for
    from mobilebert_jax.training.state import TrainState

    def flops(n_layers):
        cfg = MobileBertConfig.from_dict({**cfg_dict, "num_hidden_layers": n_layers})
        model = MODEL_CLASSES[cls_name](cfg, dtype=dtype)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch["input_ids"]))["params"]
        state = jax.eval_shape(lambda p: TrainState.create(p, optim.adamw(1e-4)), params)
        step = _train_step(loss_fn_for(model))
        return float(jax.jit(step).lower(state, batch, jax.random.key(0)).cost_analysis()["flops"])

    f1, f2 = flops(1), flops(2)
    return f1 + (cfg_dict["num_hidden_layers"] - 1) * (f2 - f1)


def _train_step(loss_fn):

    from mobilebert_jax.training.trainer import apply_update

    def step(state, batch, rng):
        return apply_update(loss_fn, state, batch, rng)

    return step


def ours_cell(cell: dict, cfg_dict: dict, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
    from mobilebert_jax.training import optim
    from mobilebert_jax.training.objectives import loss_fn_for
    from mobilebert_jax.training.state import TrainState

    cls_name, b, t = CLASSES[cell["head"]], cell["batch"], cell["seq"]
    cfg = MobileBertConfig.from_dict(cfg_dict)
    model = MODEL_CLASSES[cls_name](cfg, dtype=jnp.bfloat16, scan_layers=True)
    batch = {k: jnp.asarray(v) for k, v in batch_arrays(cfg_dict, cell["head"], b, t).items()}
    params = jax.jit(lambda r: model.init(r, batch["input_ids"]))(jax.random.key(0))["params"]
    t0 = time.perf_counter()
    if cell["kind"] == "train":
        state = TrainState.create(params, optim.adamw(1e-4))
        compiled = (
            jax.jit(_train_step(loss_fn_for(model)), donate_argnums=0)
            .lower(state, batch, jax.random.key(1))
            .compile()
        )
        compile_s = time.perf_counter() - t0
        holder = {"s": state}

        def run():
            holder["s"], metrics = compiled(holder["s"], batch, jax.random.key(1))
            return metrics["loss"]
    else:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        compiled = (
            jax.jit(lambda p, x: model.apply({"params": p}, **x).logits).lower(params, inputs).compile()
        )
        compile_s = time.perf_counter() - t0

        def run():
            return compiled(params, inputs)

    times = _time(run, steps, lambda x: x.block_until_ready(), per_call=cell["kind"] == "infer")
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = (
            mem.argument_size_in_bytes
            + mem.temp_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
        )
    out = dict(compile_s=compile_s, peak_bytes=peak, **times)
    if cell["kind"] == "train":
        out["flops"] = _ours_flops(cfg_dict, cls_name, batch, jnp.bfloat16)
        out["loss"] = float(np.asarray(run()))
    stats = jax.devices()[0].memory_stats() or {}
    out["process_peak_bytes"] = stats.get("peak_bytes_in_use")
    return out


def _time(run, steps: int, sync, per_call: bool) -> dict:
    """Warm-up 2 calls, then `steps` calls: the total (one sync at the end) or each call (latency)."""
    import statistics

    for _ in range(2):
        sync(run())
    if per_call:
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            sync(run())
            ts.append(time.perf_counter() - t0)
        return dict(step_s=statistics.median(ts), step_s_min=min(ts))
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        run()
    sync(run())
    return dict(step_s=(time.perf_counter() - t0) / steps)


# ---------------------------------------------------------------------------------------------------
# Worker: HF PyTorch (eager or torch.compile); imports no JAX
# ---------------------------------------------------------------------------------------------------
def torch_cell(cell: dict, cfg_dict: dict, steps: int, compile_backend: str | None) -> dict:
    import torch
    import transformers

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = transformers.MobileBertConfig.from_dict(cfg_dict)
    torch.manual_seed(0)
    model = getattr(transformers, CLASSES[cell["head"]])(hf_cfg).to(dev)
    batch = {
        k: torch.as_tensor(v, dtype=torch.long, device=dev)
        for k, v in batch_arrays(cfg_dict, cell["head"], cell["batch"], cell["seq"]).items()
    }
    fwd = torch.compile(model, backend=compile_backend) if compile_backend else model
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast(dev, dtype=torch.bfloat16)
    if cell["kind"] == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01, fused=dev == "cuda")

        def run():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = fwd(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss
    else:
        model.eval()
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

        def run():
            with torch.no_grad(), autocast:
                return fwd(**inputs).logits

    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)
    t0 = time.perf_counter()
    sync(run())  # first call: torch.compile compiles here
    compile_s = time.perf_counter() - t0
    out = dict(
        compile_s=compile_s if compile_backend else 0.0, **_time(run, steps, sync, cell["kind"] == "infer")
    )
    out["peak_bytes"] = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    out["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    if cell["kind"] == "train":
        out["loss"] = float(run().detach().float())
    return out


def worker(args) -> None:
    """Runs the cells of one side until the deadline; one JSON line per cell, written as it finishes."""
    with open(args.cells) as f:
        spec = json.load(f)
    if args.worker == "ours":
        sys.path.insert(0, ROOT)
        import jax

        device = jax.devices()[0]
        info = dict(backend=jax.default_backend(), device_kind=device.device_kind, jax=jax.__version__)
    else:
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        kind = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
        info = dict(backend=dev, device_kind=kind, torch=torch.__version__)
    with open(args.out, "a") as out:
        out.write(json.dumps({"side": args.worker, "info": info}) + "\n")
        out.flush()
        for cell in spec["cells"]:
            if time.time() > spec["deadline"]:
                break
            row = dict(side=args.worker, **cell)
            try:
                if args.worker == "ours":
                    row.update(ours_cell(cell, spec["config"], spec["steps"]))
                else:
                    backend = spec["compile_backend"] if args.worker == "compile" else None
                    row.update(torch_cell(cell, spec["config"], spec["steps"], backend))
            except Exception as e:  # an OOM or an unsupported shape is a result, not a crash
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(
                f"  {args.worker:7s} {_label(cell)}: "
                + (row.get("error") or f"{row['step_s'] * 1e3:.1f} ms"),
                flush=True,
            )


# ---------------------------------------------------------------------------------------------------
# Coordinator
# ---------------------------------------------------------------------------------------------------
def _label(c: dict) -> str:
    return f"{c['kind']:5s} {c['head']:11s} B={c['batch']:3d} L={c['seq']:3d}"


def chip_peak(device_kind: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def run_side(side: str, python: str, spec: dict, out: str, tmp: str, slack_s: float) -> str | None:
    path = os.path.join(tmp, f"{side}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, PYTHONPATH=ROOT)
    if side == "ours":
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # memory figures, and torch runs later
    cmd = [python, os.path.abspath(__file__), "--worker", side, "--cells", path, "--out", out]
    try:
        p = subprocess.run(cmd, env=env, timeout=max(spec["deadline"] - time.time(), 0) + slack_s)
    except subprocess.TimeoutExpired:
        return f"{side}: stopped at the time budget"
    return None if p.returncode == 0 else f"{side}: worker exited with {p.returncode}"


def summarise(lines: list[dict], peak_override: float | None) -> dict:
    info = {r["side"]: r["info"] for r in lines if "info" in r}
    rows = {}
    for r in lines:
        if "info" in r:
            continue
        key = (r["kind"], r["head"], r["batch"], r["seq"])
        rows.setdefault(key, {})[r["side"]] = r
    peak = chip_peak(info.get("ours", {}).get("device_kind", ""), peak_override)
    table = []
    for (kind, head, b, t), sides in rows.items():
        row = dict(kind=kind, head=head, batch=b, seq=t)
        for side, r in sides.items():
            if "error" in r:
                row[f"{side}_error"] = r["error"]
                continue
            row[f"{side}_step_ms"] = r["step_s"] * 1e3
            row[f"{side}_tokens_per_s"] = b * t / r["step_s"]
            row[f"{side}_peak_gib"] = r["peak_bytes"] / 2**30 if r.get("peak_bytes") else None
            row[f"{side}_compile_s"] = r["compile_s"]
        ours = sides.get("ours", {})
        for ref in ("eager", "compile"):
            if "ours_step_ms" in row and f"{ref}_step_ms" in row:
                row[f"speedup_vs_{ref}"] = row[f"{ref}_step_ms"] / row["ours_step_ms"]
        if kind == "train" and "flops" in ours and "step_s" in ours:
            row["model_tflops"] = ours["flops"] / 1e12
            row["mfu"] = ours["flops"] / ours["step_s"] / peak if peak else None
        table.append(row)
    return dict(info=info, chip_peak_flops=peak, rows=table)


def print_table(result: dict) -> None:
    i = result["info"]
    print(f"ours: {i.get('ours')}\nreference: {i.get('eager') or i.get('compile')}")
    print(
        f"chip bf16 peak: {result['chip_peak_flops'] / 1e12:.0f} TFLOP/s"
        if result["chip_peak_flops"]
        else "chip peak: unknown (--peak-tflops)"
    )
    head = f"{'cell':32s} {'ours tok/s':>11s} {'eager tok/s':>11s} {'compile tok/s':>13s} {'x eager':>7s} {'x compile':>9s} {'MFU':>6s} {'ours GiB':>8s} {'eager GiB':>9s}"
    print(head)
    f = lambda v, fmt: format(v, fmt) if isinstance(v, float) else "-"  # noqa: E731
    for r in result["rows"]:
        lab = _label(r)
        if r["kind"] == "infer" and r["batch"] == 1:
            lab += " (latency)"
        print(
            f"{lab:32s} {f(r.get('ours_tokens_per_s'), '11.0f'):>11s} {f(r.get('eager_tokens_per_s'), '11.0f'):>11s} "
            f"{f(r.get('compile_tokens_per_s'), '13.0f'):>13s} {f(r.get('speedup_vs_eager'), '7.2f'):>7s} "
            f"{f(r.get('speedup_vs_compile'), '9.2f'):>9s} {f(r.get('mfu') and 100 * r['mfu'], '5.1f'):>6s} "
            f"{f(r.get('ours_peak_gib'), '8.2f'):>8s} {f(r.get('eager_peak_gib'), '9.2f'):>9s}"
        )
        for side in ("ours", "eager", "compile"):
            if f"{side}_error" in r:
                print(f"    {side}: {r[f'{side}_error']}")
        if r["kind"] == "infer":
            print(
                f"    ms per call: ours {f(r.get('ours_step_ms'), '.2f')}, eager {f(r.get('eager_step_ms'), '.2f')}, compile {f(r.get('compile_step_ms'), '.2f')}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dry-run", action="store_true", help="tiny config, CPU backend, torch.compile(backend='eager')"
    )
    ap.add_argument("--json", default="gpu_bench.json", help="where the results go")
    ap.add_argument("--torch-python", default=sys.executable, help="the Python with torch + transformers")
    ap.add_argument(
        "--budget-s", type=float, default=None, help="time for all sides (default 360; dry run 50)"
    )
    ap.add_argument("--steps", type=int, default=None, help="timed steps per cell (default 10; dry run 2)")
    ap.add_argument(
        "--attention-dropout",
        type=float,
        default=0.1,
        help="attention_probs_dropout_prob (0: fused attention in training)",
    )
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak, if not detected"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cells", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    budget = args.budget_s or (900.0 if args.dry_run else 360.0)  # a dry run skips nothing
    steps = args.steps or (2 if args.dry_run else 10)
    t_start = time.time()
    sides = [("ours", sys.executable, 0.45), ("eager", args.torch_python, 0.15)]
    if not args.no_compile:
        sides.append(("compile", args.torch_python, 0.40))
    config = model_config(args.dry_run, args.attention_dropout)
    todo = cells(args.dry_run)
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.jsonl")
        for side, python, share in sides:
            left = budget - (time.time() - t_start)
            deadline = time.time() + (left if side == sides[-1][0] else min(left, share * budget))
            spec = dict(
                cells=todo,
                config=config,
                steps=steps,
                deadline=deadline,
                compile_backend="eager" if args.dry_run else "inductor",
            )
            print(f"{side}: {len(todo)} cells, {deadline - time.time():.0f} s", flush=True)
            note = run_side(side, python, spec, out, tmp, slack_s=20.0 if args.dry_run else 60.0)
            if note:
                notes.append(note)
        lines = [json.loads(x) for x in open(out)] if os.path.exists(out) else []
    result = summarise(lines, args.peak_tflops)
    done = {(r["kind"], r["head"], r["batch"], r["seq"]) for r in result["rows"]}
    result.update(
        dry_run=args.dry_run,
        wall_s=time.time() - t_start,
        steps=steps,
        attention_dropout=args.attention_dropout,
        skipped=[_label(c) for c in todo if (c["kind"], c["head"], c["batch"], c["seq"]) not in done],
        notes=notes,
        raw=lines,
    )
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print_table(result)
    for n in notes:
        print(f"note: {n}")
    if result["skipped"]:
        print(f"skipped (time budget): {', '.join(result['skipped'])}")
    print(f"wrote {args.json} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
