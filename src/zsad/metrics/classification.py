"""Threshold-free binary classification metrics: AUROC, average precision and F1-max.

Exact, sort-based and tie-aware; they give the same values as scikit-learn's ``roc_auc_score``,
``average_precision_score`` and the max-F1 over ``precision_recall_curve`` used by ZSAD repositories
(AnomalyCLIP, AdaCLIP, Crane), without depending on scikit-learn. Inputs of any (equal) shape are flattened,
so the same functions serve image-level scores and pixel-level maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._utils import (
    as_binary,
    as_float_scores,
    check_same_shape,
    curve_vertices,
    keys_to_float,
    orderable_keys,
    sort_keys_desc,
    tie_ends,
    to_numpy,
    warn_undefined,
)

__all__ = ["binary_clf_curve", "auroc", "average_precision", "f1_max", "f1_optimal_threshold", "fpr_threshold"]


def binary_clf_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False/true positive counts at every distinct threshold, in decreasing threshold order.

    A sample is predicted positive at threshold ``t`` when ``score >= t``. Returns ``(fps, tps, thresholds)``
    (int64, int64, float), one entry per distinct score, like scikit-learn's ``_binary_clf_curve``.
    """
    s, y = _validate(scores, labels)
    return _curve(s, y)


def _validate(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = to_numpy(scores)
    y = to_numpy(labels)
    check_same_shape(s, y, "scores", "labels")
    s = as_float_scores(s, "scores").ravel()
    y = as_binary(y, "labels").ravel()
    return s, y


def _curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys, pos = sort_keys_desc(orderable_keys(s), y)
    ends = tie_ends(keys)
    tps_all = np.cumsum(pos, dtype=np.int64)
    tps = tps_all[ends]
    fps = ends.astype(np.int64) + 1 - tps
    return fps, tps, keys_to_float(keys[ends], s.dtype)


def _vertices(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact curve vertices (sort the negatives, then count them above every distinct positive score)."""
    keys = orderable_keys(s)
    fps, tps, _ = curve_vertices(keys[~y], keys[y])
    return fps, tps


def auroc_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """Area under the ROC curve through the points ``(fps/N, tps/P)`` (plus the origin), trapezoid rule.

    ``fps``/``tps`` are cumulative counts at decreasing thresholds; the last entry must be the totals.
    Returns NaN when there is a single class.
    """
    n, p = fps[-1], tps[-1]
    if n == 0 or p == 0:
        return float("nan")
    fpr = np.concatenate(([0.0], fps / n))
    tpr = np.concatenate(([0.0], tps / p))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def average_precision_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k (scikit-learn's step definition, no interpolation). NaN if no positive."""
    p = tps[-1]
    if p == 0:
        return float("nan")
    keep = (tps + fps) > 0  # thresholds above every score (binned curves) have no precision
    fps, tps = fps[keep], tps[keep]
    precision = tps / (tps + fps)
    recall = tps / p
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def f1_curve(fps: np.ndarray, tps: np.ndarray) -> np.ndarray:
    """F1 = 2PR/(P+R) at every point of a curve of cumulative counts; NaN where undefined."""
    denom = tps + fps
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(denom > 0, tps / np.maximum(denom, 1), 0.0)
        recall = tps / tps[-1]
        return 2 * precision * recall / (precision + recall)


def f1_max_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """max over PR-curve points of 2PR/(P+R), ignoring undefined points. NaN if no positive."""
    if tps[-1] == 0:
        return float("nan")
    f1 = f1_curve(fps, tps)
    f1 = f1[np.isfinite(f1)]
    return float(max(f1.max(), 0.0)) if f1.size else 0.0


def f1_optimal_threshold(fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """`(threshold, F1)` of the curve point with the highest F1 (the highest threshold among ties).

    `fps` / `tps` are cumulative counts at the decreasing `thresholds` (positive when `score >= t`), as
    `binary_clf_curve` and `BinnedPixelCounts.curve` return them. Needs positives and negatives.
    """
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("an F1-optimal threshold needs both normal and anomalous samples")
    f1 = np.nan_to_num(f1_curve(fps, tps), nan=-1.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(max(f1[best], 0.0))


def fpr_threshold(fps: np.ndarray, thresholds: np.ndarray, num_negatives: int, fpr: float) -> float:
    """The lowest of the decreasing `thresholds` at which at most a fraction `fpr` of the negatives
    reach it (`fps[i]` = negatives with `score >= thresholds[i]`): the (1 - fpr) quantile of their scores.

    When even the highest threshold is reached by more than that, the next float above it (no negative
    is flagged).
    """
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be within [0, 1); got {fpr}")
    if num_negatives <= 0:
        raise ValueError("an FPR threshold needs negative (normal) samples")
    allowed = np.flatnonzero(fps <= fpr * num_negatives)
    if allowed.size == 0:
        return float(np.nextafter(thresholds[0], np.inf))
    return float(thresholds[allowed[-1]])


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (exact, ties count 1/2, as scikit-learn's ``roc_auc_score``).

    Returns NaN with an :class:`UndefinedMetricWarning` if ``labels`` contain a single class.
    """
    s, y = _validate(scores, labels)
    fps, tps = _vertices(s, y)
    if fps[-1] == 0 or tps[-1] == 0:
        warn_undefined(f"AUROC is undefined: labels contain only {'anomalous' if fps[-1] == 0 else 'normal'} samples")
        return float("nan")
    return auroc_from_counts(fps, tps)


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision, scikit-learn's ``average_precision_score`` definition: sum_k (R_k - R_{k-1}) P_k.

    Returns NaN with an :class:`UndefinedMetricWarning` if there is no positive (anomalous) label.
    """
    s, y = _validate(scores, labels)
    fps, tps = _vertices(s, y)
    if tps[-1] == 0:
        warn_undefined("average precision is undefined: labels contain no anomalous sample")
        return float("nan")
    return average_precision_from_counts(fps, tps)


def f1_max(scores: Any, labels: Any) -> float:
    """Maximum F1 over all thresholds (max of 2PR/(P+R) over the PR curve, NaN points ignored).

    Returns NaN with an :class:`UndefinedMetricWarning` if there is no positive (anomalous) label.
    """
    s, y = _validate(scores, labels)
    fps, tps = _vertices(s, y)
    if tps[-1] == 0:
        warn_undefined("F1-max is undefined: labels contain no anomalous sample")
        return float("nan")
    return f1_max_from_counts(fps, tps)
