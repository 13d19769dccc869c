"""SQuAD exact match and F1, by the official v1.1 and v2.0 evaluation scripts' definitions.

v1.1: answers are normalised (lowercase, punctuation removed, articles a/an/the removed, whitespace
collapsed); EM and token-bag F1 take the max over the gold answers; a question without a prediction
scores 0 and still counts in the total. v2.0 differs in that gold answers whose normalised form is
empty are dropped, an unanswerable question's only gold answer is "" (so predicting "" scores 1),
F1 is 1 when both sides are empty, a question without a prediction is left out of the total, scores
are split into HasAns / NoAns, and with no-answer probabilities the best thresholds are searched.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)

# (question id, gold answer texts); for v2.0 an empty list means unanswerable.
Reference = tuple[str, Sequence[str]]


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, drop articles, collapse whitespace (official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """v1.1 exact match of one prediction against one gold answer."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """v1.1 token-bag F1 of one prediction against one gold answer (0 when nothing is shared)."""
    p = normalize_answer(prediction).split()
    g = normalize_answer(ground_truth).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def evaluate_v1(references: Sequence[Reference], predictions: Mapping[str, str]) -> dict[str, float]:
    """Official SQuAD v1.1 `evaluate`: {"exact_match", "f1"} in percent over all references."""
    if not references:
        raise ValueError("no references to score")
    em = f1 = 0.0
    for qid, golds in references:
        if qid not in predictions:
            continue  # counts as 0, as in the official script
        if not golds:
            raise ValueError(f"question {qid!r} has no gold answer; SQuAD v1.1 needs one (use v2.0 scoring)")
        pred = predictions[qid]
        em += max(exact_match_score(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    n = len(references)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold: str, a_pred: str) -> int:
    """v2.0 exact match (0/1)."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """v2.0 F1: as v1.1, but 1.0 when gold and prediction are both empty (0.0 when only one is)."""
    g, p = _tokens(a_gold), _tokens(a_pred)
    if not g or not p:
        return float(g == p)
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _best_thresh(preds, scores, na_probs, has_ans) -> tuple[float, float]:
    cur = best = sum(1 for k in has_ans if not has_ans[k])
    thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur += diff
        if cur > best:
            best, thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), thresh


def evaluate_v2(
    references: Sequence[Reference],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """Official SQuAD v2.0 evaluation.

    Args:
        references: (id, gold texts) per question; an empty list marks an unanswerable question.
        predictions: id -> predicted text ("" = no answer).
        na_probs: optional id -> no-answer score (e.g. the null-odds of `postprocess_qa`). Without it
            every score is 0.0 and the best-threshold search is skipped, as in the official script.
        na_prob_thresh: an answer counts as "no answer" where its na_prob exceeds this.

    Returns:
        exact, f1, total; HasAns_* and NoAns_* where such questions exist; best_exact(_thresh),
        best_f1(_thresh) when `na_probs` is given.
    """
    has_ans = {qid: bool(golds) for qid, golds in references}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, golds in references:
        golds = [a for a in golds if normalize_answer(a)] or [""]
        if qid not in predictions:
            continue
        pred = predictions[qid]
        exact_raw[qid] = max(compute_exact(a, pred) for a in golds)
        f1_raw[qid] = max(compute_f1(a, pred) for a in golds)
    if not exact_raw:
        raise ValueError("no predictions for any reference question")
    probs = dict(na_probs) if na_probs is not None else {k: 0.0 for k in predictions}

    def thresholded(scores):
        return {q: float(not has_ans[q]) if probs[q] > na_prob_thresh else s for q, s in scores.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids):
        n = len(qids)
        return {
            "exact": 100.0 * sum(exact[k] for k in qids) / n,
            "f1": 100.0 * sum(f1[k] for k in qids) / n,
            "total": n,
        }

    out = summary(list(exact))
    for prefix, want in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, h in has_ans.items() if h == want]
        if qids:
            missing = [q for q in qids if q not in exact]
            if missing:  # the official script fails with a KeyError here
                raise KeyError(f"no prediction for question {missing[0]!r} ({len(missing)} missing)")
            out.update({f"{prefix}_{k}": v for k, v in summary(qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_thresh(predictions, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_thresh(predictions, f1_raw, probs, has_ans)
    return out
