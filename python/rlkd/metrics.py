"""Classifier metrics for a judge's scores against correctness labels (numpy only).

All functions take `scores` (float, higher = "more likely correct") and `labels` (bool) of the
same length and ignore entries where the score is NaN (an abstained judge).
"""

from __future__ import annotations

import numpy as np


def _clean(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    keep = ~np.isnan(s)
    return s[keep], y[keep]


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class is empty."""
    s, y = _clean(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over runs of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy_at(scores, labels, threshold: float = 0.5) -> float:
    s, y = _clean(scores, labels)
    return float(((s >= threshold) == y).mean()) if len(s) else float("nan")


def best_threshold(scores, labels) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of `score >= threshold`."""
    s, y = _clean(scores, labels)
    if len(s) == 0:
        return float("nan"), float("nan")
    candidates = np.concatenate([np.unique(s), [np.inf]])
    accs = [((s >= t) == y).mean() for t in candidates]
    k = int(np.argmax(accs))
    return float(candidates[k]), float(accs[k])


def brier(scores, labels) -> float:
    s, y = _clean(scores, labels)
    return float(((s - y) ** 2).mean()) if len(s) else float("nan")


def reliability_bins(scores, labels, n_bins: int = 10) -> list[dict]:
    """Per equal-width bin of score: count, mean score, observed accuracy (for a reliability diagram)."""
    s, y = _clean(scores, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(s, edges[1:-1]), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        in_bin = index == b
        count = int(in_bin.sum())
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "mean_score": float(s[in_bin].mean()) if count else float("nan"),
                "accuracy": float(y[in_bin].mean()) if count else float("nan"),
            }
        )
    return bins


def expected_calibration_error(scores, labels, n_bins: int = 10) -> float:
    bins = reliability_bins(scores, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] * abs(b["mean_score"] - b["accuracy"]) for b in bins if b["count"]) / total)


def same_correctness_share(advantages, labeled, correct, group_size: int) -> float:
    """Share of the labeled groups' |advantage| that falls on groups whose responses are all
    correct or all wrong (groups of ``group_size`` consecutive samples).

    In such a group the verifier sees no difference, so whatever advantage it carries comes from
    the judge's (or reranker's) ranking alone: a high share means the update mostly follows the
    judge's noise among equally right or wrong answers. NaN when no labeled group has any advantage.
    """
    a = np.abs(np.nan_to_num(np.asarray(advantages, dtype=np.float64))).reshape(-1, group_size).sum(axis=1)
    lab = np.asarray(labeled, dtype=bool).reshape(-1, group_size).all(axis=1)
    ok = np.asarray(correct, dtype=bool).reshape(-1, group_size)
    same = lab & (ok.all(axis=1) | ~ok.any(axis=1))
    total = a[lab].sum()
    return float(a[same].sum() / total) if total > 0 else float("nan")
