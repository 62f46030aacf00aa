"""AUPRO (exact / binned / cflow) against slow, straightforward reference implementations."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from zsad.metrics import BinnedPixelCounts, UndefinedMetricWarning, aupro, cflow_aupro, pro_curve
from zsad.metrics.aupro import _count_thresholds, _lower_bound, label_regions

S8 = np.ones((3, 3), dtype=bool)
FAST = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------------------------------------------------
# Reference implementations (deliberately naive: a loop over thresholds, connected components per image)
# ------------------------------------------------------------------------------------------------------------


def _regions(masks):
    """List of (image index, region mask) for the 8-connected components of every mask."""
    out = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(np.asarray(m, dtype=bool), structure=S8)
        out.extend((i, lab == k) for k in range(1, n + 1))
    return out


def reference_points(maps, masks, thresholds, strict=False):
    """(FPR, PRO) at each threshold; maps/masks are lists of 2-D arrays."""
    regions = _regions(masks)
    n_normal = sum(np.count_nonzero(~np.asarray(g, bool)) for g in masks)
    fprs, pros = [], []
    for t in thresholds:
        preds = [(m > t) if strict else (m >= t) for m in maps]
        fp = sum(np.count_nonzero(p & ~np.asarray(g, bool)) for p, g in zip(preds, masks))
        fprs.append(fp / n_normal)
        pros.append(np.mean([np.count_nonzero(preds[i] & r) / np.count_nonzero(r) for i, r in regions]))
    return fprs, pros


def integrate_to(points, limit):
    """Area under the polyline through `points` (x non-decreasing) from x=0 to x=limit, divided by limit."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


def reference_aupro(maps, masks, limit=0.3):
    """Official definition: every distinct score is a threshold, anchored at (0,0) and (1,1)."""
    maps, masks = list(maps), list(masks)
    thresholds = np.unique(np.concatenate([np.ravel(m) for m in maps]))[::-1]
    fprs, pros = reference_points(maps, masks, thresholds)
    return integrate_to([(0.0, 0.0)] + list(zip(fprs, pros)) + [(1.0, 1.0)], limit)


def reference_cflow(maps, masks, limit=0.3, steps=200):
    """AnomalyCLIP / Crane `cal_pro_score` semantics, written from the description."""
    maps = np.asarray(maps)
    lo, hi = maps.min(), maps.max()
    delta = (hi - lo) / steps
    fprs, pros = reference_points(list(maps), list(masks), np.arange(lo, hi, delta), strict=True)
    kept = [(f, p) for f, p in zip(fprs, pros) if f < limit]
    f = np.array([k[0] for k in kept])
    p = np.array([k[1] for k in kept])
    if len(kept) < 2:  # sklearn.metrics.auc raises on fewer than two points
        raise ValueError("fewer than two points")
    f = (f - f.min()) / (f.max() - f.min())
    pts = sorted(zip(f[::-1], p[::-1]), key=lambda t: t[0])  # stable: keeps threshold order within ties
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]))


# ------------------------------------------------------------------------------------------------------------
# Random inputs
# ------------------------------------------------------------------------------------------------------------


@st.composite
def maps_and_masks(draw, max_images=4, max_side=12, dtypes=(np.float64, np.float32)):
    n = draw(st.integers(1, max_images))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    levels = draw(st.sampled_from([None, 2, 4, 16]))  # None: (almost) all distinct scores; else heavy ties
    density = draw(st.sampled_from([0.03, 0.15, 0.4]))
    signal = draw(st.sampled_from([0.0, 0.3, 1.0]))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = rng.random((n, h, w)) < density
    normal_images = rng.random(n) < 0.3
    masks[normal_images] = False
    maps = rng.random((n, h, w)) + signal * masks
    if levels is not None:
        maps = np.floor(maps * levels) / levels
    maps = maps.astype(dtype)
    assume(masks.any() and not masks.all())
    return maps, masks


# ------------------------------------------------------------------------------------------------------------
# Exact mode
# ------------------------------------------------------------------------------------------------------------


@FAST
@given(data=maps_and_masks(), limit=st.sampled_from([0.3, 0.05, 0.5, 1.0]))
def test_exact_matches_reference(data, limit):
    maps, masks = data
    expected = reference_aupro(maps, masks, limit)
    assert abs(aupro(maps, masks, fpr_limit=limit) - expected) < 1e-9
    assert abs(aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=limit, backend="torch") - expected) < 1e-9


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), levels=st.sampled_from([40, 150]), limit=st.sampled_from([0.3, 0.1]))
def test_exact_candidate_path_matches_reference(seed, levels, limit):
    """Large enough maps that only the pixels above the FPR-limit quantile are sorted."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((6, 40, 50), dtype=bool)
    for i in range(1, 6):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 35, 2)
            masks[i, y : y + rng.integers(1, 8), x : x + rng.integers(1, 12)] = True
    maps = (np.floor((rng.random(masks.shape) + 0.5 * masks) * levels) / levels).astype(np.float32)
    regions = label_regions([masks])
    assert _lower_bound(maps.ravel(), regions.mask, int(regions.sizes[0]), limit) is not None
    assert abs(aupro(maps, masks, fpr_limit=limit) - reference_aupro(maps, masks, limit)) < 1e-9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_exact_candidate_path_matches_full_sort(seed, dtype):
    """Continuous scores: the candidate-only numpy path equals the full torch sort."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 64, 48), dtype=bool)
    masks[1:, 10:20, 5:30] = True
    masks[3, 40:60, 30:44] = True
    maps = (rng.normal(size=masks.shape) + rng.uniform(0, 2) * masks).astype(dtype)
    for limit in (0.3, 0.01):
        fast = aupro(maps, masks, fpr_limit=limit)
        full = aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=limit, backend="torch")
        assert abs(fast - full) < 1e-12


def test_list_of_maps_with_different_sizes():
    rng = np.random.default_rng(0)
    maps = [rng.random((8, 8)), rng.random((5, 11)), rng.random((7, 3))]
    masks = [np.zeros((8, 8)), np.zeros((5, 11)), np.zeros((7, 3))]
    masks[0][2:4, 2:5] = 1
    masks[1][0:2, 6:11] = 1
    masks[1][4, 0] = 1
    maps[0] = maps[0] + masks[0] * 0.4
    expected = reference_aupro(maps, masks)
    assert abs(aupro(maps, masks) - expected) < 1e-9
    assert abs(aupro([torch.from_numpy(m) for m in maps], masks) - expected) < 1e-9


def test_eight_connectivity_and_region_weighting():
    # two diagonal pixels form ONE region under 8-connectivity; a second, large region is found perfectly
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    masks[0, 3:6, 3:6] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 3:6, 3:6] = 1.0  # large region: found at FPR 0; diagonal region: scored like the background
    regions = label_regions([masks])
    assert regions.sizes.tolist() == [36 - 11, 2, 9]
    assert regions.dense_ids().reshape(6, 6)[1, 1] == 1 and regions.dense_ids().reshape(6, 6)[5, 5] == 2
    # curve: (0, 0) -> (0, 0.5) -> (1, 1): AUPRO@0.3 = mean of PRO over [0, 0.3] = 0.5 + 0.25 * 0.3
    assert aupro(maps, masks) == pytest.approx(0.5 + 0.5 * 0.3 / 2, abs=1e-12)


def test_perfect_worst_and_constant_maps():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 20, 17)) < 0.2
    masks[0] = False  # a normal image
    perfect = masks.astype(np.float32) + rng.random(masks.shape).astype(np.float32) * 0.5
    assert aupro(perfect, masks) == 1.0
    assert aupro(perfect, masks, mode="cflow") == 1.0
    assert aupro(perfect, masks, num_thresholds=1000) == 1.0
    assert aupro(-perfect, masks) == 0.0
    constant = np.full(masks.shape, 0.7)
    for limit in (0.3, 0.1, 1.0):
        assert aupro(constant, masks, fpr_limit=limit) == pytest.approx(limit / 2, abs=1e-12)


@FAST
@given(data=maps_and_masks(dtypes=(np.float64,)), transform=st.sampled_from(["exp", "cube", "affine", "log1p"]))
def test_invariant_to_strictly_increasing_transforms(data, transform):
    maps, masks = data
    levels = np.round(maps * 64)  # integer levels: every transform below keeps them distinct
    f = {
        "exp": lambda x: np.exp(x / 9.0),
        "cube": lambda x: x**3 + 7.0,
        "affine": lambda x: 3.5 * x - 100.0,
        "log1p": lambda x: np.log1p(x + 1.0),
    }[transform]
    for limit in (0.3, 1.0):
        assert abs(aupro(f(levels), masks, fpr_limit=limit) - aupro(levels, masks, fpr_limit=limit)) < 1e-12
        assert aupro(f(levels), masks, num_thresholds=50, score_range=(float(f(0.0)), float(f(128.0)))) >= 0


def test_pro_curve_is_monotone_and_ends_at_one():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 10, 10)) < 0.3
    maps = np.round(rng.random(masks.shape) * 10)
    fpr, pro, thr = pro_curve(maps, masks)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0) and np.all(np.diff(thr) < 0)
    assert fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0)
    ref_f, ref_p = reference_points(list(maps), list(masks), thr)
    np.testing.assert_allclose(fpr, ref_f, atol=1e-12)
    np.testing.assert_allclose(pro, ref_p, atol=1e-12)


def test_half_precision_and_integer_maps():
    rng = np.random.default_rng(3)
    masks = rng.random((2, 9, 9)) < 0.3
    maps = rng.random(masks.shape).astype(np.float16)
    assert aupro(torch.from_numpy(maps), masks) == pytest.approx(reference_aupro(maps.astype(np.float64), masks), abs=1e-9)
    ints = rng.integers(0, 5, masks.shape)
    assert aupro(ints, masks) == pytest.approx(reference_aupro(ints.astype(np.float64), masks), abs=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_use_torch_and_match_numpy():
    rng = np.random.default_rng(4)
    masks = rng.random((4, 64, 64)) < 0.1
    maps = rng.random(masks.shape).astype(np.float32) + masks
    expected = aupro(maps, masks)
    assert abs(aupro(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda()) - expected) < 1e-9


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------


def _good():
    masks = np.zeros((4, 32, 32))
    masks[1, 3:9, 3:9] = 1
    return np.random.default_rng(0).random((4, 32, 32)).astype(np.float32), masks


@pytest.mark.parametrize("mode", ["exact", "binned", "cflow"])
def test_errors_are_clear(mode):
    maps, masks = _good()
    bad = maps.copy()
    bad[0, 0, :3] = np.nan
    with pytest.raises(ValueError, match="anomaly_maps contains 3 NaN values"):
        aupro(bad, masks, mode=mode)
    bad[0, 0, :3] = np.inf
    with pytest.raises(ValueError, match="anomaly_maps contains 3 infinite values"):
        aupro(bad, masks, mode=mode)
    with pytest.raises(ValueError, match=r"shape mismatch: anomaly_maps \(4, 32, 32\) vs masks \(4, 30, 32\)"):
        aupro(maps, masks[:, :30], mode=mode)
    half = masks.copy()
    half[2, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"masks must be binary \(0/1\); found values \{0.5\}"):
        aupro(maps, half, mode=mode)
    with pytest.raises(ValueError, match="AUPRO is undefined: masks contain no anomalous pixel"):
        aupro(maps, np.zeros_like(masks), mode=mode)
    with pytest.raises(ValueError, match="AUPRO is undefined: masks contain no normal pixel"):
        aupro(maps, np.ones_like(masks), mode=mode)
    with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\]"):
        aupro(maps, masks, fpr_limit=0.0, mode=mode)


def test_torch_backend_errors_are_clear():
    maps, masks = _good()
    bad = torch.from_numpy(maps.copy())
    bad[1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="anomaly_maps contains 1 NaN values"):
        aupro(bad, masks, backend="torch")
    with pytest.raises(ValueError, match="shape mismatch"):
        aupro(torch.from_numpy(maps), masks[:2], backend="torch")
    with pytest.raises(ValueError, match="AUPRO is undefined: masks contain no anomalous pixel"):
        aupro(torch.from_numpy(maps), np.zeros_like(masks), backend="torch")
    with pytest.raises(ValueError, match="backend='torch' needs maps of one size"):
        aupro([maps[0], maps[1, :5]], [masks[0], masks[1, :5]], backend="torch")


def test_argument_errors():
    maps, masks = _good()
    with pytest.raises(ValueError, match="mode must be"):
        aupro(maps, masks, mode="fast")
    with pytest.raises(ValueError, match="num_thresholds is only used"):
        aupro(maps, masks, mode="exact", num_thresholds=10)
    with pytest.raises(ValueError, match="must have shape"):
        aupro(maps[None], masks[None])
    with pytest.raises(ValueError, match="num_thresholds must be >= 2"):
        BinnedPixelCounts(1)
    with pytest.raises(ValueError, match="score_range"):
        BinnedPixelCounts(10, (1.0, 1.0))


# ------------------------------------------------------------------------------------------------------------
# Binned mode
# ------------------------------------------------------------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n_t=st.integers(2, 300),
    lo=st.floats(-5, 5),
    width=st.floats(1e-3, 10),
    dtype=st.sampled_from([np.float32, np.float64]),
    use_arange=st.booleans(),
)
def test_count_thresholds_equals_searchsorted(seed, n_t, lo, width, dtype, use_arange):
    rng = np.random.default_rng(seed)
    if use_arange:
        thresholds = np.arange(dtype(lo), dtype(lo + width), dtype(width / n_t))
    else:
        thresholds = np.linspace(lo, lo + width, n_t)
    scores = np.concatenate(
        [
            rng.uniform(lo - width, lo + 2 * width, 500),
            thresholds[rng.integers(0, thresholds.size, 200)],  # exactly on thresholds
            np.nextafter(thresholds[rng.integers(0, thresholds.size, 50)], np.inf),
        ]
    ).astype(dtype)
    t64 = thresholds.astype(np.float64)
    np.testing.assert_array_equal(_count_thresholds(scores, thresholds, strict=False), np.searchsorted(t64, scores, "right"))
    np.testing.assert_array_equal(_count_thresholds(scores, thresholds, strict=True), np.searchsorted(t64, scores, "left"))


@FAST
@given(data=maps_and_masks(), n_t=st.sampled_from([2, 7, 50, 1001]), limit=st.sampled_from([0.3, 0.8]))
def test_binned_equals_exact_on_grid_scores(data, n_t, limit):
    """When every score is one of the thresholds, the binned curve has all the exact curve's points."""
    maps, masks = data
    grid = np.linspace(0.0, 1.0, n_t)
    on_grid = grid[np.clip(np.round(maps.astype(np.float64) * (n_t - 1)).astype(int), 0, n_t - 1)]
    binned = aupro(on_grid, masks, fpr_limit=limit, num_thresholds=n_t, score_range=(0.0, 1.0))
    assert abs(binned - reference_aupro(on_grid, masks, limit)) < 1e-9


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_t=st.sampled_from([1000, 2000]), signal=st.sampled_from([0.2, 0.5, 1.0]))
def test_binned_close_to_exact_with_many_thresholds(seed, n_t, signal):
    rng = np.random.default_rng(seed)
    masks = np.zeros((8, 48, 48), dtype=bool)
    for i in range(2, 8):
        y, x = rng.integers(0, 36, 2)
        masks[i, y : y + rng.integers(2, 12), x : x + rng.integers(2, 12)] = True
    maps = (rng.random(masks.shape) + signal * masks * rng.random(masks.shape)) / (1 + signal)
    exact = aupro(maps, masks)
    assert abs(aupro(maps, masks, num_thresholds=n_t, score_range=(0.0, 1.0)) - exact) < 1e-3


def test_binned_counts_merge_exactly():
    rng = np.random.default_rng(5)
    masks = rng.random((10, 24, 20)) < 0.1
    masks[:3] = False
    maps = rng.random(masks.shape).astype(np.float32) + 0.3 * masks
    single = BinnedPixelCounts(500, (0.0, 1.0))
    single.update(maps, masks)
    parts = []
    for sl in (slice(0, 3), slice(3, 7), slice(7, 10)):
        part = BinnedPixelCounts(500, (0.0, 1.0))
        part.update(maps[sl], masks[sl])
        parts.append(part)
    merged = BinnedPixelCounts(500, (0.0, 1.0)).merge(parts[2]).merge(parts[0]).merge(parts[1])
    for key, value in single.state_dict().items():
        np.testing.assert_array_equal(value, merged.state_dict()[key])
    assert merged.aupro() == single.aupro()
    assert single.num_out_of_range == int(np.count_nonzero(maps > 1.0))
    with pytest.raises(ValueError, match="different thresholds"):
        single.merge(BinnedPixelCounts(499, (0.0, 1.0)))


# ------------------------------------------------------------------------------------------------------------
# cflow mode
# ------------------------------------------------------------------------------------------------------------


@FAST
@given(data=maps_and_masks(max_images=3, max_side=10), steps=st.sampled_from([200, 20]))
def test_cflow_matches_reference(data, steps):
    maps, masks = data
    assume(maps.max() > maps.min())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            expected = reference_cflow(maps, masks, 0.3, steps)
        except (ValueError, ZeroDivisionError):  # fewer than two kept points: the reference code crashes
            expected = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = cflow_aupro(maps, masks, 0.3, steps)
    if math.isnan(expected) or not math.isfinite(expected):
        assert math.isnan(value)
    else:
        assert abs(value - expected) < 1e-9


def test_cflow_differs_from_exact_and_warns_on_constant_maps():
    rng = np.random.default_rng(6)
    masks = rng.random((4, 30, 30)) < 0.15
    maps = rng.random(masks.shape) + 0.4 * masks
    assert aupro(maps, masks, mode="cflow") != pytest.approx(aupro(maps, masks), abs=1e-6)
    with pytest.warns(UndefinedMetricWarning, match="constant anomaly map"):
        assert math.isnan(aupro(np.zeros(masks.shape), masks, mode="cflow"))
