"""Training metrics: `metrics.jsonl` (always), TensorBoard (when a writer is installed), the loss plot."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jax

from mobilebert_jax import storage

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


# A bucket object cannot be appended to: metrics.jsonl on gs:// is rewritten whole, at most this often
# (and when the writer closes; a killed run loses at most these seconds of rows, which it recomputes).
REMOTE_FLUSH_S = 30.0


class MetricsWriter:
    """metrics.jsonl (always), TensorBoard (when tensorboardX or torch's writer is importable); host 0 only."""

    def __init__(self, workdir: str | None):
        self.path = None if workdir is None else storage.join(workdir, "metrics.jsonl")
        self.tb = None
        self._text: str | None = None  # gs://: the file's content, uploaded whole by `_flush`
        self._flushed = 0.0
        if workdir is None or jax.process_index() != 0:
            self.path = None
            return
        storage.makedirs(workdir)
        self.tb = _tensorboard_writer(storage.join(workdir, "tensorboard"))

    def truncate(self, step: int) -> None:
        """Drops rows after `step` (a resumed run recomputes them; the plot must not double back)."""
        if self.path is None or not storage.exists(self.path):
            return
        with storage.open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if int(row.get("step", 0)) <= step:
                keep.append(json.dumps(row) + "\n")
        if len(keep) != len(lines):
            storage.write_text(self.path, "".join(keep))
            self._text = None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.path is None:
            return
        line = json.dumps({"step": step, **metrics}) + "\n"
        if storage.is_url(self.path):
            if self._text is None:
                self._text = storage.read_text(self.path) if storage.exists(self.path) else ""
            self._text += line
            if time.monotonic() - self._flushed > REMOTE_FLUSH_S:
                self._flush()
        else:
            with open(self.path, "a") as f:
                f.write(line)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def _flush(self) -> None:
        if self._text is not None:
            storage.write_text(self.path, self._text)
            self._flushed = time.monotonic()

    def close(self) -> None:
        self._flush()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def eval_metric_series(rows: list[dict], metric: str | None = None) -> tuple[str, list] | None:
    """(key, [(step, value)]) of the eval metric to plot beside the loss: `eval/<metric>` when logged,
    else the first `eval/` key that is not a loss; None when no eval metric was logged."""
    keys = [k for r in rows for k in r if k.startswith("eval/") and not k.startswith("eval/loss")]
    if not keys:
        return None
    key = f"eval/{metric}" if metric and f"eval/{metric}" in keys else keys[0]
    return key, [(r["step"], r[key]) for r in rows if key in r]


def plot_loss_curve(jsonl_path: str, png_path: str, metric: str | None = None) -> str | None:
    """Writes train (and eval) loss vs step from metrics.jsonl to a PNG (matplotlib, Agg); with eval
    metrics logged (`--eval_steps`), a second panel shows `metric` (see `eval_metric_series`)."""
    if not storage.exists(jsonl_path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for line in storage.read_text(jsonl_path).splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    series = eval_metric_series(rows, metric)
    fig, axes = plt.subplots(1, 2 if series else 1, figsize=(12 if series else 7, 4), squeeze=False)
    ax = axes[0, 0]
    for key, label in (("loss", "train"), ("eval/loss", "eval")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label=label, marker="." if label == "eval" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if series:
        key, pts = series
        ax2 = axes[0, 1]
        ax2.plot(*zip(*pts), marker="o", color="tab:green", label=key)
        ax2.set_xlabel("step")
        ax2.set_ylabel(key[5:])
        ax2.set_title(f"validation {key[5:]}")
        ax2.legend()
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    with storage.staged_file(png_path) as local:
        fig.savefig(local, dpi=100)
    plt.close(fig)
    return png_path
