"""Classification and regression metrics in numpy, equal to scikit-learn's and scipy's.

accuracy = `sklearn.metrics.accuracy_score`; f1 = `sklearn.metrics.f1_score` (binary, pos_label=1,
0.0 when undefined); matthews_corrcoef = `sklearn.metrics.matthews_corrcoef` (multi-class form,
0.0 when undefined); pearson / spearman = `scipy.stats.pearsonr` / `spearmanr` statistics (NaN for
constant input).

NaN in, NaN out: a NaN prediction or reference makes every metric NaN (as scipy's correlations do),
so a diverged model never scores a plausible number; `argmax` keeps a row of NaN logits as a NaN
prediction, and `check_finite` turns non-finite metrics or model outputs into a job error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

NAN = float("nan")


def _has_nan(*arrays: np.ndarray) -> bool:
    return any(np.issubdtype(a.dtype, np.inexact) and bool(np.isnan(a).any()) for a in arrays)


def argmax(logits, axis: int = -1) -> np.ndarray:
    """Class ids of `logits` (int32), or float with NaN where a row holds a NaN (a broken model)."""
    logits = np.asarray(logits)
    ids = logits.argmax(axis=axis).astype(np.int32)
    bad = np.isnan(logits).any(axis=axis) if np.issubdtype(logits.dtype, np.inexact) else None
    if bad is not None and bad.any():
        return np.where(bad, np.nan, ids.astype(np.float64))
    return ids


def check_finite(metrics: Mapping[str, Any], where: str, outputs: Mapping[str, Any] | None = None) -> None:
    """Raises ValueError naming every NaN/inf metric (and non-finite model output) of `where`."""
    problems = []
    for name, arr in (outputs or {}).items():
        a = np.asarray(arr)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            problems.append(
                f"model output {name} has {int(np.size(a) - np.isfinite(a).sum())} NaN/inf values"
            )
    bad = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isfinite(v)]
    if bad:
        problems.append("metrics " + ", ".join(f"{k}={metrics[k]}" for k in bad))
    if problems:
        raise ValueError(
            f"{where}: {'; '.join(problems)}: the model is broken (diverged training? try a lower learning "
            "rate, or float32) or its predictions are constant; no result is reported"
        )


def _pair(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions).reshape(-1)
    r = np.asarray(references).reshape(-1)
    if p.shape != r.shape:
        raise ValueError(f"predictions and references differ in length: {p.shape[0]} vs {r.shape[0]}")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, r


def accuracy(predictions, references) -> float:
    """Fraction of predictions equal to the reference."""
    p, r = _pair(predictions, references)
    if _has_nan(p, r):
        return NAN
    return float(np.mean(p == r))


def f1(predictions, references, pos_label: int = 1) -> float:
    """Binary F1 of the class `pos_label`; 0.0 when there is no true or predicted positive."""
    p, r = _pair(predictions, references)
    if _has_nan(p, r):
        return NAN
    tp = np.sum((p == pos_label) & (r == pos_label))
    fp = np.sum((p == pos_label) & (r != pos_label))
    fn = np.sum((p != pos_label) & (r == pos_label))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 and tp > 0 else 0.0


def matthews_corrcoef(predictions, references) -> float:
    """Matthews correlation coefficient (Gorodkin's multi-class form, as sklearn)."""
    p, r = _pair(predictions, references)
    if _has_nan(p, r):
        return NAN
    classes, inv = np.unique(np.concatenate([r, p]), return_inverse=True)
    k = len(classes)
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (inv[: len(r)], inv[len(r) :]), 1.0)
    t = conf.sum(axis=1)
    q = conf.sum(axis=0)
    c = np.trace(conf)
    s = conf.sum()
    cov_tp = c * s - t @ q
    cov_pp = s * s - q @ q
    cov_tt = s * s - t @ t
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(predictions, references) -> float:
    """Pearson correlation coefficient; NaN if either side is constant."""
    p, r = _pair(predictions, references)
    if _has_nan(p, r):
        return NAN
    x = p.astype(np.float64) - p.mean(dtype=np.float64)
    y = r.astype(np.float64) - r.mean(dtype=np.float64)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(np.clip(np.dot(x / nx, y / ny), -1.0, 1.0))


def rankdata(a) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (`scipy.stats.rankdata(method="average")`).

    All NaN if `a` holds a NaN (scipy's default nan_policy="propagate"; sorting would rank NaN last).
    """
    a = np.asarray(a).reshape(-1)
    if _has_nan(a):
        return np.full(len(a), np.nan)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new = np.concatenate([[True], s[1:] != s[:-1]])
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [len(a)]])
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def spearman(predictions, references) -> float:
    """Spearman rank correlation: Pearson of average ranks; NaN if either side is constant."""
    p, r = _pair(predictions, references)
    return pearson(rankdata(p), rankdata(r))
