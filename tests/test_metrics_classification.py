"""AUROC / AP / F1-max against brute-force definitions (pairwise AUROC, per-threshold loops)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zsad.metrics import UndefinedMetricWarning, auroc, average_precision, binary_clf_curve, f1_max

FAST = settings(max_examples=80, deadline=None)


def brute_auroc(s, y):
    """P(score_pos > score_neg) + 0.5 P(tie), over all pairs."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return (np.count_nonzero(diff > 0) + 0.5 * np.count_nonzero(diff == 0)) / diff.size


def brute_pr_points(s, y):
    """(precision, recall) at every distinct threshold, decreasing (predict positive if score >= t)."""
    pts = []
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = np.count_nonzero(pred & (y == 1))
        pts.append((tp / np.count_nonzero(pred), tp / np.count_nonzero(y == 1)))
    return pts


def brute_ap(s, y):
    """scikit-learn's average_precision_score: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    ap, prev_r = 0.0, 0.0
    for p, r in brute_pr_points(s, y):
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def brute_f1_max(s, y):
    f1s = [2 * p * r / (p + r) for p, r in brute_pr_points(s, y) if p + r > 0]
    return max(f1s + [0.0])


@st.composite
def scores_labels(draw, max_n=60):
    n = draw(st.integers(2, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.sampled_from([None, 2, 3, 10]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    y = (rng.random(n) < draw(st.sampled_from([0.1, 0.5, 0.9]))).astype(np.int64)
    s = rng.random(n) + draw(st.sampled_from([0.0, 0.3])) * y
    if levels is not None:
        s = np.floor(s * levels) / levels
    assume(0 < y.sum() < n)
    return s.astype(dtype), y


@FAST
@given(data=scores_labels())
def test_against_brute_force(data):
    s, y = data
    assert abs(auroc(s, y) - brute_auroc(s, y)) < 1e-12
    assert abs(average_precision(s, y) - brute_ap(s, y)) < 1e-12
    assert abs(f1_max(s, y) - brute_f1_max(s, y)) < 1e-12


@FAST
@given(data=scores_labels(max_n=30))
def test_curve_counts(data):
    s, y = data
    fps, tps, thr = binary_clf_curve(s, y)
    assert np.all(np.diff(thr) < 0)
    for f, t, th in zip(fps, tps, thr):
        pred = s >= th
        assert f == np.count_nonzero(pred & (y == 0)) and t == np.count_nonzero(pred & (y == 1))


def test_known_values_and_inputs():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    assert auroc(s, y) == 0.75
    # sklearn documentation example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333...
    assert average_precision(s, y) == pytest.approx(0.8333333333333333, abs=1e-15)
    assert f1_max(s, y) == pytest.approx(0.8, abs=1e-15)  # threshold 0.35: P = 2/3, R = 1
    # torch tensors, 2-D maps (pixel level), bool labels
    maps = torch.tensor([[0.1, 0.4], [0.35, 0.8]])
    masks = torch.tensor([[False, False], [True, True]])
    assert auroc(maps, masks) == 0.75
    # invariant to strictly increasing transforms; reversed scores give 1 - AUROC
    assert auroc(np.exp(3 * s), y) == 0.75
    assert auroc(-s, y) == 0.25


def test_perfect_and_constant():
    y = np.array([0, 1, 0, 1, 1])
    assert auroc(y * 2.0, y) == 1.0 and average_precision(y * 2.0, y) == 1.0 and f1_max(y * 2.0, y) == 1.0
    const = np.zeros(5)
    assert auroc(const, y) == 0.5
    assert average_precision(const, y) == pytest.approx(0.6)  # prevalence
    assert f1_max(const, y) == pytest.approx(2 * 0.6 / 1.6)


def test_single_class_is_nan_with_warning():
    s = np.array([0.1, 0.2, 0.3])
    with pytest.warns(UndefinedMetricWarning, match="AUROC is undefined: labels contain only normal"):
        assert math.isnan(auroc(s, [0, 0, 0]))
    with pytest.warns(UndefinedMetricWarning, match="AUROC is undefined: labels contain only anomalous"):
        assert math.isnan(auroc(s, [1, 1, 1]))
    with pytest.warns(UndefinedMetricWarning, match="average precision is undefined"):
        assert math.isnan(average_precision(s, [0, 0, 0]))
    with pytest.warns(UndefinedMetricWarning, match="F1-max is undefined"):
        assert math.isnan(f1_max(s, [0, 0, 0]))
    assert average_precision(s, [1, 1, 1]) == 1.0 and f1_max(s, [1, 1, 1]) == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="scores contains 1 NaN values"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="scores contains 1 infinite values"):
        average_precision([0.1, float("inf")], [0, 1])
    with pytest.raises(ValueError, match=r"shape mismatch: scores \(3,\) vs labels \(2,\)"):
        f1_max([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match=r"labels must be binary \(0/1\); found values \{2\}"):
        auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="scores is empty"):
        auroc([], [])
