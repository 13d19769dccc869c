"""`mobilebert-jax` (the real command line, `cli.main.main`) with test hooks, for test_multiprocess.py.

    python tests/multiprocess_job.py finetune ... --distributed --coordinator-address 127.0.0.1:PORT \\
        --num-processes 2 --process-id I

Hooks on `ArrayIterator.next_indices` (the example indices a host reads for each batch):
- `MBJ_TEST_IDS_DIR=DIR`: append one JSON line per batch to DIR/ids.<process index>.jsonl:
  {"pid": ..., "epoch": e, "index": i, "ids": [...]} (i: the batch's position within epoch e).
- `MBJ_TEST_SLEEP=S`: sleep S seconds per batch, so the test can kill the job mid-run.

Hook on `GrainIterator.__next__` (a prepared folder read through Grain), with `MBJ_TEST_IDS_DIR`: one
JSON line per host batch in DIR/rows.<process index>.jsonl: {"pid", "batch": b, "keys": [...],
"rows": [sha1 of each row's arrays]}.

`MBJ_TEST_THEN='["finetune", ...]'`: once the command has finished (exit 0), run this second command
line in the same process (jax and jax.distributed already up: no second start-up).
"""

# ruff: noqa: E402  (imports follow the sys.path line, so the script runs from a checkout)
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

from mobilebert_jax.cli.main import main
from mobilebert_jax.training.data import ArrayIterator
from mobilebert_jax.training.grain_data import GrainIterator

_next_indices = ArrayIterator.next_indices
_grain_next = GrainIterator.__next__


def _append(name: str, row: dict) -> None:
    import jax

    d = os.environ.get("MBJ_TEST_IDS_DIR")
    if d:
        with open(os.path.join(d, f"{name}.{jax.process_index()}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


def row_hashes(batch: dict) -> list[str]:
    """sha1 of each row: its arrays (sorted keys) as int64 bytes; the test hashes the folder the same way."""
    keys = sorted(batch)
    n = len(batch[keys[0]])
    return [
        hashlib.sha1(b"".join(np.asarray(batch[k][j], np.int64).tobytes() for k in keys)).hexdigest()
        for j in range(n)
    ]


def _logged_next_indices(self):
    idx = _next_indices(self)
    if os.environ.get("MBJ_TEST_SLEEP"):
        time.sleep(float(os.environ["MBJ_TEST_SLEEP"]))
    _append(
        "ids",
        {"pid": os.getpid(), "epoch": self.epoch, "index": self.index - 1, "ids": [int(i) for i in idx]},
    )
    return idx


def _logged_grain_next(self):
    batch = _grain_next(self)
    _append(
        "rows",
        {"pid": os.getpid(), "batch": self.batches - 1, "keys": sorted(batch), "rows": row_hashes(batch)},
    )
    return batch


if __name__ == "__main__":  # (imported by the test for `row_hashes` only: no hooks there)
    ArrayIterator.next_indices = _logged_next_indices
    GrainIterator.__next__ = _logged_grain_next
    rc = main()
    if not rc and os.environ.get("MBJ_TEST_THEN"):
        rc = main(json.loads(os.environ["MBJ_TEST_THEN"]))
    sys.exit(rc)
