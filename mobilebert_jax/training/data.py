"""Host-side training data: the `DataIterator` protocol and `ArrayIterator`, with a resumable position.

`fit` (trainer.py) reads batches from any `DataIterator` (this `ArrayIterator`, a grain iterator, or
your own class with `get_state`/`set_state`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from mobilebert_jax.training import sharding as shd

log = logging.getLogger(__name__)


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
        idx = self.next_indices()
        return {k: v[idx] for k, v in self.arrays.items()}

    def next_indices(self) -> np.ndarray:
        """Advances one batch; returns the example indices this host reads ([batch_size / processes])."""
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
        return idx

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "batch_size": self.batch_size}

    def set_state(self, state: dict) -> None:
        for k in ("seed", "batch_size"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(
                    f"data state {k}={state[k]} does not match this iterator's {k}={getattr(self, k)}"
                )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
