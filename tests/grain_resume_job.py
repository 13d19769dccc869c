"""A tiny MLM + NSP pretraining job reading a prepared (ArrayRecord) folder through Grain, for the resume test.

    python tests/grain_resume_job.py --data DIR --workdir WD [--workers 2] [--sleep 0.3]

`training.grain_data.prepared_iterator` (global shuffle, per-host rows, `--workers` reading processes)
feeds `trainer.fit` (orbax checkpoints every 10 steps, with the iterator's position); the model is the
2-layer `mobilebert-test` MobileBertForPreTraining with dropout, LAMB with warmup and decay. Running the
same command again resumes from the last committed checkpoint. At the end it writes WD/final_params.npz
and prints "FINISHED <step> <stopped>". `build(...)` gives the same job in-process.
"""

# ruff: noqa: E402  (imports follow the sys.path line, so the script runs from a checkout)
from __future__ import annotations

import argparse
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax

from mobilebert_jax import MobileBertConfig, MobileBertForPreTraining
from mobilebert_jax.training import objectives, optim, trainer
from mobilebert_jax.training import state as ts
from mobilebert_jax.training.grain_data import prepared_iterator
from mobilebert_jax.training.optim import path_str

FAST = {"xla_backend_optimization_level": 0}  # compile time matters more than CPU step time here
BATCH, NUM_STEPS, MAX_LEN = 8, 30, 32
KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label")


class Slow:
    """Delegates to a data iterator, sleeping before each batch (so a test can kill the job mid-run)."""

    def __init__(self, it, sleep: float):
        self.it, self.sleep = it, sleep

    def __next__(self):
        time.sleep(self.sleep)
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def build(data_dir: str, workdir: str | None, workers: int = 0, sleep: float = 0.0):
    cfg = MobileBertConfig.from_preset(
        "mobilebert-test", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    model = MobileBertForPreTraining(cfg)
    data = prepared_iterator(data_dir, BATCH, seed=1, num_workers=workers, max_seq_length=MAX_LEN, keys=KEYS)
    sched = optim.warmup_linear_decay(2e-3, NUM_STEPS, 3, decay_from_zero=True)
    init = ts.model_init_fn(model, data.example())
    st = ts.create_train_state(init, optim.lamb(sched), jax.random.key(0, impl="rbg"), compiler_options=FAST)
    step = trainer.make_train_step(objectives.loss_fn_for(model), learning_rate=sched, compiler_options=FAST)
    fit_cfg = trainer.FitConfig(
        num_steps=NUM_STEPS, workdir=workdir, log_every=1, checkpoint_every=10, progress=False, plot=False
    )
    return types.SimpleNamespace(
        state=st.state,
        step=step,
        data=data,
        slow=Slow(data, sleep),
        config=fit_cfg,
        rng=jax.random.key(42, impl="rbg"),
    )


def run(job) -> trainer.FitResult:
    try:
        return trainer.fit(job.config, job.state, job.step, job.slow, job.rng)
    finally:
        job.data.close()


def flat_params(params) -> dict[str, np.ndarray]:
    return {
        path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(params))
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    args = ap.parse_args()
    res = run(build(args.data, args.workdir, args.workers, args.sleep))
    if res.stopped == "done":
        np.savez(os.path.join(args.workdir, "final_params.npz"), **flat_params(res.state.params))
    print(f"FINISHED {res.step} {res.stopped}", flush=True)


if __name__ == "__main__":
    main()
