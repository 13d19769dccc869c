"""Grain input pipelines for `fit`: global shuffle, per-host rows, worker processes, exact resume.

`GrainIterator` is a `DataIterator` (data.py) over any random-access source (an ArrayRecord data
source, a list): a `grain.MapDataset` that shuffles the whole source (a different permutation each
epoch, epochs chained), decodes, cuts the stream into blocks of `batch_size / P` rows and gives host
p of P the blocks p, p+P, p+2P, ... (it reads only its own rows), reading ahead in `num_workers`
processes. Global batch i is then the stream elements [i*B, (i+1)*B) in order whatever the number of
hosts or workers: host p holds its rows [p*B/P, (p+1)*B/P), contiguous in process order as
`sharding.host_slice` (the rows of `ArrayIterator`), so a P-host run feeds the devices the same
global batch, row for row (and dropout mask), as a 1-host run. The position is the number of batches
read, the same on every host, so the orbax checkpoint (data.py's JSON of process 0) restores every
host exactly, also with another `num_workers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mobilebert_jax.tasks import pretraining_data


def _grain():
    """`grain`, with absl flags marked parsed (grain reads its flags; no absl app parses them here)."""
    try:
        import grain
    except ImportError as e:  # a core dependency; a clear line if an environment lacks it
        raise ImportError("grain is needed for this data pipeline: pip install 'grain>=0.2.18'") from e
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


class GrainIterator:
    """Host batches from a Grain pipeline over `source`, resumable to the batch.

    Args:
        source: random access (`len`, `[i]`), e.g. `grain.sources.ArrayRecordDataSource(paths)`.
        transform: element -> dict of numpy arrays (one example); picklable when `num_workers > 0`.
        batch_size: the global batch; each of the P processes yields `batch_size / P` rows.
        seed: shuffle seed (epoch e uses seed + e, grain's rule); shuffle=False reads in order.
        num_workers: reading processes (0: threads in this process).
        process_index, process_count: default `jax.process_index()` / `jax.process_count()`.

    State: {"batches": batches read, ...}; set_state checks seed, batch size, size of the source and
    the number of processes (a different one would read other rows).
    """

    def __init__(
        self,
        source: Any,
        transform: Callable[[Any], dict[str, np.ndarray]],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        read_threads: int = 4,
        prefetch: int = 64,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        grain = _grain()
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        n = len(source)
        if batch_size % process_count:
            raise ValueError(f"global batch size {batch_size} is not divisible by {process_count} processes")
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} > number of examples {n}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.process_index, self.process_count, self.num_workers = process_index, process_count, num_workers
        self._source, self._transform = source, transform
        ds = grain.MapDataset.source(source)
        if shuffle:
            ds = ds.shuffle(seed=seed)
        # blocks of B/P consecutive stream elements; host p takes blocks p, p + P, ...: global batch i =
        # elements [i*B, (i+1)*B), host p's rows [p*B/P, (p+1)*B/P) of it (a block is read lazily)
        ds = ds.repeat().map(transform).batch(batch_size // process_count, drop_remainder=True)
        self._batches = ds[process_index::process_count]
        self._read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
        self._mp = grain.MultiprocessingOptions(num_workers=num_workers) if num_workers > 0 else None
        self.batches = 0
        self._it: Iterator | None = None

    def _open(self) -> Iterator:
        ds = self._batches[self.batches :].to_iter_dataset(self._read)
        if self._mp is not None:
            ds = ds.mp_prefetch(self._mp)
        return iter(ds)

    def __iter__(self) -> GrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._open()
        batch = next(self._it)
        self.batches += 1
        return batch

    def example(self) -> dict[str, np.ndarray]:
        """A global batch of the first element repeated (shapes and dtypes, e.g. for init); no state change."""
        one = self._transform(self._source[0])
        return {k: np.repeat(np.asarray(v)[None], self.batch_size, 0) for k, v in one.items()}

    @property
    def epoch(self) -> float:
        """Epochs read so far (examples of all hosts / size of the source)."""
        return self.batches * self.batch_size / self.n

    def get_state(self) -> dict:
        return {
            "batches": self.batches,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": self.n,
            "process_count": self.process_count,
        }

    def set_state(self, state: dict) -> None:
        if "batches" not in state:
            raise ValueError(f"data state {sorted(state)} is not a GrainIterator's (the run read other data)")
        for k in ("seed", "batch_size", "num_examples", "process_count"):
            if k in state and state[k] != getattr(self, "n" if k == "num_examples" else k):
                raise ValueError(
                    f"data state {k}={state[k]} does not match this iterator's "
                    f"{k}={getattr(self, 'n' if k == 'num_examples' else k)} (a different dataset or job)"
                )
        self.close()
        self.batches = int(state["batches"])

    def close(self) -> None:
        """Stops the reading processes (also done when the iterator is collected)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()


def prepared_iterator(
    path: str,
    batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    max_seq_length: int | None = None,
    max_predictions_per_seq: int | None = None,
    keys: Sequence[str] | None = None,
    tokenizer: Any = None,
    task_options: dict | None = None,
    shuffle: bool = True,
    **kw: Any,
):
    """A `GrainIterator` of padded pretraining batches from a prepared folder.

    `max_seq_length` / `max_predictions_per_seq`, when given, must be the folder's (the instances were
    cut for them); `tokenizer`, when given, must have the folder's vocabulary; `task_options` (the
    job's explicit `PretrainingTask` fields) must agree with the folder's.
    """
    m, paths = pretraining_data.read_manifest(path)
    bad = {
        k: (v, m["task"][k]) for k, v in (task_options or {}).items() if k in m["task"] and m["task"][k] != v
    }
    if bad:
        raise ValueError(
            f"{path} was prepared with other options: "
            + ", ".join(f"{k}={have!r} (the job asks for {want!r})" for k, (want, have) in bad.items())
        )
    L, P = m["max_seq_length"], m["task"]["max_predictions_per_seq"]
    for name, want, have in (
        ("max_seq_length", max_seq_length, L),
        ("max_predictions_per_seq", max_predictions_per_seq, P),
    ):
        if want is not None and want != have:
            raise ValueError(f"{path} holds instances with {name} {have}; the job asks for {want}")
    if tokenizer is not None and pretraining_data.vocab_sha256(tokenizer) != m["tokenizer"]["vocab_sha256"]:
        raise ValueError(f"{path} was tokenized with another vocabulary than the job's tokenizer")
    source = _grain().sources.ArrayRecordDataSource(paths)
    feats = pretraining_data.InstanceFeatures(L, P, tuple(keys) if keys is not None else None)
    return GrainIterator(source, feats, batch_size, seed=seed, num_workers=num_workers, shuffle=shuffle, **kw)
