"""Training metrics: `metrics.jsonl` (always), TensorBoard (when a writer is installed), the loss plot."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax

log = logging.getLogger(__name__)


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
