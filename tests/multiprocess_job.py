"""`mobilebert-jax` (the real command line, `cli.main.main`) with two test hooks, for test_multiprocess.py.

    python tests/multiprocess_job.py finetune ... --distributed --coordinator-address 127.0.0.1:PORT \\
        --num-processes 2 --process-id I

Hooks, both on `ArrayIterator.next_indices` (the example indices a host reads for each batch):
- `MBJ_TEST_IDS_DIR=DIR`: append one JSON line per batch to DIR/ids.<process index>.jsonl:
  {"pid": ..., "epoch": e, "index": i, "ids": [...]} (i: the batch's position within epoch e).
- `MBJ_TEST_SLEEP=S`: sleep S seconds per batch, so the test can kill the job mid-run.
"""

# ruff: noqa: E402  (imports follow the sys.path line, so the script runs from a checkout)
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mobilebert_jax.cli.main import main
from mobilebert_jax.training.data import ArrayIterator

_next_indices = ArrayIterator.next_indices


def _logged_next_indices(self):
    import jax

    idx = _next_indices(self)
    if os.environ.get("MBJ_TEST_SLEEP"):
        time.sleep(float(os.environ["MBJ_TEST_SLEEP"]))
    d = os.environ.get("MBJ_TEST_IDS_DIR")
    if d:
        row = {"pid": os.getpid(), "epoch": self.epoch, "index": self.index - 1, "ids": [int(i) for i in idx]}
        with open(os.path.join(d, f"ids.{jax.process_index()}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return idx


ArrayIterator.next_indices = _logged_next_indices

if __name__ == "__main__":
    sys.exit(main())
