"""A small, deterministic training job for the resume tests: run as a subprocess or built in-process.

    python tests/resume_job.py --workdir DIR [--num_steps 30] [--checkpoint_every 10] [--sleep 0.1]

Tiny MobileBertForSequenceClassification (attention dropout on, 2 micro-batches, LAMB with warmup and
decay, shuffled multi-epoch data with padding). Running the same command again resumes from the last committed
checkpoint. At the end it writes DIR/final_params.npz and prints "FINISHED <step> <stopped>".
`build(...)` gives the same job to a test in-process (same XLA options, so the same executables).
"""

# ruff: noqa: E402  (imports follow the sys.path line, so the script runs from a checkout)
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp

from mobilebert_jax import MobileBertConfig, MobileBertForSequenceClassification
from mobilebert_jax.training import objectives, optim, trainer
from mobilebert_jax.training import state as ts
from mobilebert_jax.training.optim import path_str

FAST = {"xla_backend_optimization_level": 0}  # compile time matters more than CPU step time here
BATCH = 8


def make_data(
    n: int = 24, t: int = 16, vocab: int = 1000, seed: int = 0, num_labels: int = 3
) -> dict[str, np.ndarray]:
    """Random examples with padding (mask 0), MLM `token_labels` (~15%, -100 elsewhere), class `labels`,
    `next_sentence_label`, and a `poison` flag."""
    r = np.random.default_rng(seed)
    ids = r.integers(5, vocab, (n, t)).astype(np.int32)
    lengths = r.integers(t // 2, t + 1, n)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    token_labels = np.where((r.random((n, t)) < 0.15) & (mask > 0), ids, -100).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "labels": r.integers(0, num_labels, n).astype(np.int32),
        "token_labels": token_labels,
        "next_sentence_label": r.integers(0, 2, n).astype(np.int32),
        "poison": np.zeros(n, np.float32),
    }


def poisonable(loss_fn):
    """The loss, made NaN for a batch that holds a row with poison > 0 (for the NaN-guard test)."""

    def wrapped(params, batch, rng, deterministic):
        sums, rest = loss_fn(params, batch, rng, deterministic)
        bad = jnp.where(jnp.any(batch["poison"] > 0), jnp.nan, 1.0)
        return jax.tree.map(lambda s: s * bad, sums), rest

    return wrapped


class SlowIterator(trainer.ArrayIterator):
    """Test hooks: sleep per batch (so a test can interrupt the job mid-run), call `on_draw(n)` at the
    n-th draw of this iterator, and set `poison` in the batch of draw `poison_at`."""

    def __init__(self, *a, sleep: float = 0.0, on_draw=None, poison_at: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.sleep, self.on_draw, self.poison_at, self.draws = sleep, on_draw, poison_at, 0

    def __next__(self):
        time.sleep(self.sleep)
        self.draws += 1
        if self.on_draw is not None:
            self.on_draw(self.draws)
        batch = super().__next__()
        if self.draws == self.poison_at:
            batch["poison"] = np.ones_like(batch["poison"])
        return batch


@functools.cache
def _parts(num_steps: int, prng: str, fast: bool):
    cfg = MobileBertConfig.from_preset("mobilebert-test", num_labels=3)
    model = MobileBertForSequenceClassification(cfg)
    sched = optim.warmup_linear_decay(2e-3, num_steps, 3, decay_from_zero=True)
    opts = FAST if fast else None
    init = ts.model_init_fn(model, {k: v[:BATCH] for k, v in make_data().items()})
    st = ts.create_train_state(init, optim.lamb(sched), jax.random.key(0, impl=prng), compiler_options=opts)
    step = trainer.make_train_step(
        poisonable(objectives.loss_fn_for(model)),
        num_micro_batches=2,
        learning_rate=sched,
        compiler_options=opts,
    )
    return st, step


def build(
    workdir: str | None,
    num_steps: int = 30,
    checkpoint_every: int = 10,
    sleep: float = 0.0,
    prng: str = "rbg",
    fast: bool = True,
    data: dict | None = None,
    on_draw=None,
    plot: bool = False,
    log_every: int = 1,
):
    """The job: fresh state (a copy: the step donates it), step function, iterator, FitConfig, rng."""
    st, step = _parts(num_steps, prng, fast)
    state = jax.tree.map(lambda x: x.copy(), st.state)
    data = make_data() if data is None else data
    data = {k: data[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "poison")}
    it = SlowIterator(data, batch_size=BATCH, seed=1, sleep=sleep, on_draw=on_draw)
    cfg = trainer.FitConfig(
        num_steps=num_steps,
        workdir=workdir,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        progress=False,
        plot=plot,
    )
    return types.SimpleNamespace(
        state=state, step=step, data=it, config=cfg, rng=jax.random.key(42, impl=prng)
    )


def run(job) -> trainer.FitResult:
    return trainer.fit(job.config, job.state, job.step, job.data, job.rng)


def flat_params(params) -> dict[str, np.ndarray]:
    return {
        path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(params))
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--num_steps", type=int, default=30)
    ap.add_argument("--checkpoint_every", type=int, default=10)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--prng", default="rbg")
    ap.add_argument("--no_fast_compile", action="store_true", help="default XLA optimization level")
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    job = build(
        args.workdir,
        args.num_steps,
        args.checkpoint_every,
        args.sleep,
        args.prng,
        not args.no_fast_compile,
        plot=args.plot,
    )
    res = run(job)
    if res.stopped == "done":
        np.savez(os.path.join(args.workdir, "final_params.npz"), **flat_params(res.state.params))
    print(f"FINISHED {res.step} {res.stopped}", flush=True)


if __name__ == "__main__":
    main()
