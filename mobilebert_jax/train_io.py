"""Host-side training I/O: data iterators with a resumable position, metrics JSONL/TensorBoard, loss plot.

`fit` (trainer.py) reads batches from any `DataIterator` (this `ArrayIterator`, a grain iterator, or
your own class with `get_state`/`set_state`) and logs through `MetricsWriter`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import numpy as np

from . import sharding as shd

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


class DataIterator(Protocol):
    """What `fit` reads: host batches plus a JSON-able position for exact resume (grain-compatible).

    `get_state()` must describe the global position, the same on every host (orbax saves the JSON of
    process 0 only); `ArrayIterator`'s {"epoch", "index"} is.
    """

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class ArrayIterator:
    """Shuffled, epoch-based batches over in-memory arrays; each host yields its rows of each batch.

    Args:
        arrays: dict of numpy arrays with a common leading dim N (examples).
        batch_size: the *global* batch size (split over processes by `sharding.host_slice`).
        seed: shuffling seed; epoch e uses permutation `default_rng([seed, e])`.
        shuffle: shuffle each epoch; drop_remainder: skip the last partial batch (always, for training).

    State: {"epoch": e, "index": next batch within the epoch} — resume yields exactly the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int = 0, shuffle: bool = True):
        lens = {k: len(v) for k, v in arrays.items()}
        if len(set(lens.values())) != 1:
            raise ValueError(f"arrays have different lengths: {lens}")
        self.n = next(iter(lens.values()))
        if batch_size > self.n:
            raise ValueError(f"batch_size {batch_size} > number of examples {self.n}")
        self.arrays, self.batch_size, self.seed, self.shuffle = arrays, batch_size, seed, shuffle
        self.rows = shd.host_slice(batch_size)
        self.epoch, self.index = 0, 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        per_epoch = self.n // self.batch_size
        if self.index >= per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        idx = order[self.index * self.batch_size : (self.index + 1) * self.batch_size][self.rows]
        self.index += 1
        return {k: v[idx] for k, v in self.arrays.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "batch_size": self.batch_size}

    def set_state(self, state: dict) -> None:
        for k in ("seed", "batch_size"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(
                    f"data state {k}={state[k]} does not match this iterator's {k}={getattr(self, k)}"
                )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# ---------------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------------


def _tensorboard_writer(logdir: str) -> Any:
    """A SummaryWriter from tensorboardX, or torch's when `tensorboard` is installed; else None."""
    import importlib.util

    try:
        if importlib.util.find_spec("tensorboardX"):
            from tensorboardX import SummaryWriter
        elif importlib.util.find_spec("tensorboard") and importlib.util.find_spec("torch"):
            from torch.utils.tensorboard import SummaryWriter
        else:
            return None
        return SummaryWriter(logdir)
    except Exception as e:  # a broken install must not stop training
        log.warning("TensorBoard disabled: %s", e)
        return None


class MetricsWriter:
    """metrics.jsonl (always), TensorBoard (when tensorboardX or torch's writer is importable); host 0 only."""

    def __init__(self, workdir: str | None):
        self.path = None if workdir is None else os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if workdir is None or jax.process_index() != 0:
            self.path = None
            return
        os.makedirs(workdir, exist_ok=True)
        self.tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def plot_loss_curve(jsonl_path: str, png_path: str) -> str | None:
    """Writes train (and eval) loss vs step from metrics.jsonl to a PNG (matplotlib, Agg)."""
    if not os.path.exists(jsonl_path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(jsonl_path) if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("eval/loss", "eval")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label=label, marker="." if label == "eval" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
