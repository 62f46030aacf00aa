"""AUPRO: area under the per-region-overlap (PRO) curve up to a false-positive-rate limit.

Definition (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 129:1038-1059, 2021; PRO from
"Uninformed Students", CVPR 2020): GT regions are the 8-connected components ``C_k`` of every mask (K in
total, over all images); for a threshold ``t`` with ``P_t = {pixels with score >= t}``

    PRO(t) = 1/K * sum_k |P_t & C_k| / |C_k|        FPR(t) = |P_t & N| / |N|   (N: all normal pixels, pooled)

and ``AUPRO@L = (1/L) * integral_0^L PRO d(FPR)`` with the trapezoid rule, the last segment linearly
interpolated at ``FPR = L``.

Three modes:

* ``"exact"`` (default): threshold-free, sort-based (every distinct score is a threshold), as the official
  MVTec evaluation code. Runs in torch when the maps are torch tensors on an accelerator.
* ``"binned"``: ``num_thresholds`` fixed, uniformly spaced thresholds; the state is additive integer counts
  (:class:`BinnedPixelCounts`) so batches and processes merge exactly without gathering maps.
* ``"cflow"``: what AnomalyCLIP / Crane (adapted from cflow-ad) report: 200 uniform thresholds between the
  min and max score (max excluded), ``score > t``, keep the points with ``FPR < L``, min-max rescale the kept
  FPRs to [0, 1], trapezoid. Use it only to compare with numbers from papers.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from scipy import ndimage

from ._utils import (
    as_binary,
    as_chunks,
    curve_vertices,
    keys_to_float,
    orderable_keys,
    sort_keys_desc,
    tie_ends,
    to_numpy,
    warn_undefined,
)

__all__ = ["aupro", "pro_curve", "cflow_aupro", "label_regions", "Regions", "BinnedPixelCounts", "AuproMode"]

AuproMode = Literal["exact", "binned", "cflow"]

_STRUCTURE_8 = np.ones((3, 3), dtype=bool)
_FIXED_POINT_BITS = 32  # binned overlap sums are stored in units of 2**-32 region
_CHUNK = 1 << 19


# ----------------------------------------------------------------------------------------------------------
# Connected components
# ----------------------------------------------------------------------------------------------------------


class Regions(NamedTuple):
    """8-connected GT regions of a set of masks, over the raveled and concatenated pixels."""

    mask: np.ndarray  # bool, True for anomalous pixels (all pixels, flat)
    indices: np.ndarray  # int64 flat indices of the anomalous pixels, increasing
    ids: np.ndarray  # int64 region id (1..K) of each anomalous pixel
    sizes: np.ndarray  # int64 (K + 1,): sizes[k] = |C_k|, sizes[0] = number of normal pixels

    @property
    def num_regions(self) -> int:
        return len(self.sizes) - 1

    def dense_ids(self) -> np.ndarray:
        """int32 region id of every pixel (0 for normal pixels)."""
        out = np.zeros(self.mask.size, dtype=np.int32)
        out[self.indices] = self.ids
        return out


def label_regions(masks: list[np.ndarray]) -> Regions:
    """Label the 8-connected GT regions of a list of bool mask stacks ``(n, H, W)``.

    Regions are numbered ``1..K`` globally, image by image; only images with anomalous pixels are labelled
    (``scipy.ndimage.label`` with a 3x3 structure of ones, as the official MVTec evaluation code).
    """
    flat = [m.reshape(-1) for m in masks]
    mask = flat[0] if len(flat) == 1 else np.concatenate(flat)
    indices: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    region_sizes: list[np.ndarray] = []
    offset = 0
    base = 0
    for m in masks:
        hw = m.shape[1] * m.shape[2]
        label_buf = np.empty(m.shape[1:], dtype=np.int32)
        for i in np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1)):
            k = ndimage.label(m[i], structure=_STRUCTURE_8, output=label_buf)
            lab = label_buf.reshape(-1)
            idx = np.flatnonzero(lab)
            indices.append(idx + (base + i * hw))
            ids.append(lab[idx].astype(np.int64) + offset)
            region_sizes.append(np.bincount(lab[idx], minlength=k + 1)[1:])
            offset += k
        base += m.size
    sizes = np.concatenate([np.zeros(1, np.int64)] + [r.astype(np.int64) for r in region_sizes])
    sizes[0] = mask.size - sizes[1:].sum()
    if not indices:
        return Regions(mask, np.zeros(0, np.int64), np.zeros(0, np.int64), sizes)
    return Regions(mask, np.concatenate(indices), np.concatenate(ids), sizes)


def _check_defined(sizes: np.ndarray, context: str | None) -> None:
    where = f"category {context!r} has" if context is not None else "masks contain"
    if len(sizes) == 1:
        raise ValueError(f"AUPRO is undefined: {where} no anomalous pixel")
    if sizes[0] == 0:
        raise ValueError(f"AUPRO is undefined: {where} no normal pixel (the FPR needs normal pixels)")


def _check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    return fpr_limit


# ----------------------------------------------------------------------------------------------------------
# Integration
# ----------------------------------------------------------------------------------------------------------


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the piecewise-linear curve (x non-decreasing, x[0] < x_max <= x[-1]) on [x[0], x_max]."""
    idx = int(np.searchsorted(x, x_max, side="left"))  # first point with x >= x_max
    xs, ys = x[:idx], y[:idx]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1])) / 2.0)
    x0, y0, x1, y1 = x[idx - 1], y[idx - 1], x[idx], y[idx]
    y_end = y1 if x1 == x_max else y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    return area + float((x_max - x0) * (y0 + y_end) / 2.0)


def _aupro_from_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Official normalised area: anchor at (0, 0) and (1, 1), clip to <= 1, integrate to the limit, / limit."""
    x = np.concatenate(([0.0], np.minimum(fpr, 1.0), [1.0]))
    y = np.concatenate(([0.0], np.minimum(pro, 1.0), [1.0]))
    return _trapezoid_to(x, y, fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------------------------------------
# Exact mode
# ----------------------------------------------------------------------------------------------------------


def _min_count_for_rate(rate: float, total: int) -> int:
    """Smallest integer n with n / total >= rate (as computed in float64)."""
    n = min(total, int(np.ceil(rate * total)))
    while n > 0 and (n - 1) / total >= rate:
        n -= 1
    while n < total and n / total < rate:
        n += 1
    return n


def _lower_bound(scores: np.ndarray, mask: np.ndarray, n_normal: int, fpr_limit: float) -> Any:
    """A key t' such that (very likely) at least ``ceil(fpr_limit * |N|)`` normal pixels have key >= t'.

    Only pixels with key >= t' matter for the curve up to the limit, so only they need sorting. t' is a
    slightly conservative quantile of a strided subsample of the normal pixels; callers verify the count
    and fall back to all pixels. None: no useful bound (small input or a limit close to 1).
    """
    step = max(1, scores.size >> 20)
    sample = orderable_keys(scores[::step][~mask[::step]])
    m = sample.size
    if m < 1024:
        return None
    q = _min_count_for_rate(fpr_limit, n_normal) / n_normal
    q_hi = q + 4.0 * np.sqrt(q * (1.0 - q) / m) + 0.002
    k = int(np.ceil(q_hi * m))  # keep the k largest sampled normal scores
    if k >= m or q_hi > 0.8:
        return None
    return np.partition(sample, m - k)[m - k]


def _exact_vertices(
    scores: np.ndarray, regions: Regions, fpr_limit: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact curve vertices ``(fps, tps, overlap sums)`` (see :func:`curve_vertices`), thresholds decreasing.

    ``overlap sums`` = sum_k |P_t & C_k| / |C_k| (divide by K for PRO). With ``fpr_limit`` the curve stops
    at a threshold whose FPR is >= the limit (only the pixels above it are sorted).
    """
    n_normal = int(regions.sizes[0])
    pos_keys, pos_ids = orderable_keys(scores[regions.indices]), regions.ids
    neg_keys = None
    if fpr_limit is not None and fpr_limit < 1.0:
        lower = _lower_bound(scores, regions.mask, n_normal, fpr_limit)
        if lower is not None:
            neg_keys = _normal_keys(scores, regions.mask, lower)
            if neg_keys.size >= _min_count_for_rate(fpr_limit, n_normal):
                keep = pos_keys >= lower
                pos_keys, pos_ids = pos_keys[keep], pos_ids[keep]
            else:  # unlucky subsample: not enough normal pixels above the bound
                neg_keys = None
    if neg_keys is None:
        neg_keys = _normal_keys(scores, regions.mask, None)
    return curve_vertices(neg_keys, pos_keys, pos_ids, _region_weights(regions.sizes))  # type: ignore[return-value]


def _normal_keys(scores: np.ndarray, mask: np.ndarray, lower: Any) -> np.ndarray:
    """Order-preserving keys of the normal pixels (only those with key >= ``lower``), in cache-sized chunks."""
    parts = []
    for start in range(0, scores.size, _CHUNK):
        keys = orderable_keys(scores[start : start + _CHUNK])
        sel = ~mask[start : start + _CHUNK]
        if lower is not None:
            sel &= keys >= lower
        parts.append(keys[sel])
    return np.concatenate(parts)


def _region_weights(sizes: np.ndarray) -> np.ndarray:
    weights = np.zeros(len(sizes), dtype=np.float64)
    weights[1:] = 1.0 / sizes[1:]
    return weights


def _exact_curve_numpy(scores: np.ndarray, regions: Regions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Curve at every distinct threshold, decreasing: (thresholds, fp counts, tp counts, overlap sums)."""
    keys_d, reg_d = sort_keys_desc(orderable_keys(scores), regions.dense_ids())
    ends = tie_ends(keys_d)
    fps = np.cumsum(reg_d == 0, dtype=np.int64)[ends]
    tps = ends.astype(np.int64) + 1 - fps
    overlap = np.cumsum(_region_weights(regions.sizes)[reg_d])[ends]
    return keys_to_float(keys_d[ends], scores.dtype), fps, tps, overlap


def _exact_curve_torch(scores: torch.Tensor, regions: Regions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Same as :func:`_exact_curve_numpy` with a full torch sort on the scores' device (for GPUs)."""
    device = scores.device
    vals, order = torch.sort(scores, descending=True, stable=True)
    reg = torch.from_numpy(regions.dense_ids()).to(device)[order].long()
    del order
    weights = torch.from_numpy(_region_weights(regions.sizes)).to(device)
    change = torch.nonzero(vals[1:] != vals[:-1]).squeeze(1)
    ends = torch.cat([change, torch.tensor([vals.numel() - 1], device=device)])
    fps = torch.cumsum(reg == 0, 0)[ends]
    tps = ends + 1 - fps
    overlap = torch.cumsum(weights[reg], 0)[ends]
    out = (vals[ends], fps, tps, overlap)
    return tuple(t.cpu().numpy() for t in out)  # type: ignore[return-value]


def _use_torch(anomaly_maps: Any, backend: str) -> bool:
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch'; got {backend!r}")
    if backend == "auto":
        return isinstance(anomaly_maps, torch.Tensor) and anomaly_maps.device.type != "cpu"
    return backend == "torch"


def _torch_inputs(anomaly_maps: Any, masks: Any) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Validate tensor inputs without moving the maps off their device; masks go to the CPU for labelling."""
    if isinstance(anomaly_maps, (list, tuple)):
        shapes = {tuple(m.shape) for m in anomaly_maps}
        if len(shapes) > 1:
            raise ValueError(f"backend='torch' needs maps of one size; got {sorted(shapes)} (use backend='numpy')")
        maps = torch.stack([torch.as_tensor(m) for m in anomaly_maps])
        masks = np.stack([to_numpy(g) for g in masks])
    elif isinstance(anomaly_maps, torch.Tensor):
        maps = anomaly_maps
    else:
        maps = torch.as_tensor(np.asarray(anomaly_maps))
    maps = maps.detach()
    if maps.dtype in (torch.float16, torch.bfloat16):
        maps = maps.float()
    elif not maps.is_floating_point():
        maps = maps.double()
    if maps.ndim == 2:
        maps = maps[None]
    mask_np = to_numpy(masks)
    if mask_np.ndim == 2:
        mask_np = mask_np[None]
    if maps.ndim != 3:
        raise ValueError(f"anomaly_maps must have shape (N, H, W) or (H, W); got {tuple(maps.shape)}")
    if tuple(maps.shape) != mask_np.shape:
        raise ValueError(f"shape mismatch: anomaly_maps {tuple(maps.shape)} vs masks {mask_np.shape}")
    if maps.numel() == 0:
        raise ValueError("anomaly_maps is empty")
    finite = torch.isfinite(maps)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(maps).sum())
        n_inf = int(torch.isinf(maps).sum())
        parts = [f"{n_nan} NaN values"] if n_nan else []
        parts += [f"{n_inf} infinite values"] if n_inf else []
        raise ValueError(f"anomaly_maps contains {' and '.join(parts)}")
    return maps.reshape(-1), [as_binary(mask_np, "masks")]


def _flat_scores(chunks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([m.ravel() for m, _ in chunks]) if len(chunks) > 1 else chunks[0][0].ravel()


def pro_curve(anomaly_maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact PRO curve: ``(fpr, pro, thresholds)`` at every distinct score, thresholds decreasing."""
    chunks = as_chunks(anomaly_maps, masks)
    regions = label_regions([g for _, g in chunks])
    _check_defined(regions.sizes, None)
    thr, fps, _, overlap = _exact_curve_numpy(_flat_scores(chunks), regions)
    return fps / regions.sizes[0], np.minimum(overlap / regions.num_regions, 1.0), thr


def _exact_aupro(anomaly_maps: Any, masks: Any, fpr_limit: float, backend: str) -> float:
    if _use_torch(anomaly_maps, backend):
        scores_t, mask_list = _torch_inputs(anomaly_maps, masks)
        regions = label_regions(mask_list)
        _check_defined(regions.sizes, None)
        _, fps, _, overlap = _exact_curve_torch(scores_t, regions)
    else:
        chunks = as_chunks(anomaly_maps, masks)
        regions = label_regions([g for _, g in chunks])
        _check_defined(regions.sizes, None)
        fps, _, overlap = _exact_vertices(_flat_scores(chunks), regions, fpr_limit)
    return _aupro_from_curve(fps / regions.sizes[0], overlap / regions.num_regions, fpr_limit)


# ----------------------------------------------------------------------------------------------------------
# Binned mode
# ----------------------------------------------------------------------------------------------------------


def _comparison_table(t: np.ndarray, dtype: np.dtype, up: bool) -> np.ndarray:
    """Thresholds rounded into ``dtype`` so that comparisons with ``dtype`` scores stay exact.

    For ``x`` of type ``dtype``: ``x >= t  <=>  x >= T`` and ``x < t <=> x < T`` with ``T`` the smallest value
    of ``dtype`` that is >= t (``up``); ``x > t <=> x > T`` and ``x <= t <=> x <= T`` with ``T`` the
    largest value <= t (not ``up``). The table is padded with -inf / +inf.
    """
    r = t.astype(dtype)
    if up:
        r = np.where(r < t, np.nextafter(r, dtype.type(np.inf)), r)
    else:
        r = np.where(r > t, np.nextafter(r, dtype.type(-np.inf)), r)
    return np.concatenate(([-np.inf], r, [np.inf])).astype(dtype)


def _threshold_counts(scores: np.ndarray, thresholds: np.ndarray, strict: bool, histogram: bool) -> np.ndarray:
    """Per score, the number of thresholds ``<= score`` (``< score`` if ``strict``), an int in [0, T].

    Returns these counts (``histogram=False``; equal to ``np.searchsorted(thresholds, scores, 'right' /
    'left')``) or their histogram of length T + 1 (``histogram=True``, no per-pixel array is kept).
    ``thresholds`` must be increasing and (nearly) uniformly spaced: an arithmetic guess, computed in
    cache-sized chunks, is corrected with exact comparisons.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    n_t = t.size
    flat = scores.ravel()
    lo = float(t[0])
    step = (float(t[-1]) - lo) / (n_t - 1) if n_t > 1 and t[-1] > lo else 1.0
    table = _comparison_table(t, flat.dtype, up=not strict)  # table[c] = t[c - 1]
    table_next = table[1:]  # table_next[c] = t[c]
    out = np.zeros(n_t + 1, dtype=np.int64) if histogram else np.empty(flat.size, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        x = flat[start : start + _CHUNK]
        g = x - (lo - step)  # guess: floor((x - lo) / step) + 1, in the scores' precision
        g *= 1.0 / step
        np.clip(g, 0, n_t, out=g)
        c = g.astype(np.intp)
        # invariant: t[c-1] <= x < t[c]  (strict: t[c-1] < x <= t[c]), with t[-1] = -inf and t[T] = +inf
        while True:
            up = (x > table_next[c]) if strict else (x >= table_next[c])
            if not up.any():
                break
            c += up
        while True:
            down = (x <= table[c]) if strict else (x < table[c])
            if not down.any():
                break
            c -= down
        if histogram:
            out += np.bincount(c, minlength=n_t + 1)
        else:
            out[start : start + x.size] = c
    return out


def _count_thresholds(scores: np.ndarray, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    """Number of thresholds ``<= score`` (``< score`` if ``strict``) for each score (int64 in [0, T])."""
    return _threshold_counts(scores, thresholds, strict, histogram=False)


def _region_suffix_counts(bins: np.ndarray, regions: np.ndarray, num_regions: int, num_bins: int):
    """Yield ``(first_region, S)`` with ``S[k, c]`` = pixels of region ``first_region + k`` with bin ``>= c``."""
    step = max(1, _CHUNK // num_bins)
    order = np.argsort(regions, kind="stable")
    regions, bins = regions[order], bins[order]
    bounds = np.searchsorted(regions, np.arange(0, num_regions + step, step))
    for j, first in enumerate(range(0, num_regions, step)):
        k = min(step, num_regions - first)
        r = regions[bounds[j] : bounds[j + 1]] - first
        b = bins[bounds[j] : bounds[j + 1]]
        hist = np.bincount(r * num_bins + b, minlength=k * num_bins).reshape(k, num_bins)
        yield first, np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]


class BinnedPixelCounts:
    """Additive pixel counts at fixed thresholds for binned pixel AUROC / AP / F1-max / AUPRO.

    ``thresholds = linspace(lo, hi, num_thresholds)``; a pixel is positive at ``t`` if ``score >= t``.
    Scores outside ``[lo, hi]`` are allowed (below ``lo``: never positive; above ``hi``: always positive) and
    counted in :attr:`num_out_of_range`. All state is integer (the region overlaps are fixed-point with
    2**-32 resolution per region), so :meth:`merge` is exact and order-independent.
    """

    def __init__(self, num_thresholds: int = 1000, score_range: tuple[float, float] = (0.0, 1.0)) -> None:
        num_thresholds = int(num_thresholds)
        lo, hi = (float(v) for v in score_range)
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2; got {num_thresholds}")
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"score_range must be finite with lo < hi; got {score_range}")
        self.score_range = (lo, hi)
        self.thresholds = np.linspace(lo, hi, num_thresholds)
        n_bins = num_thresholds + 1  # bin c = number of thresholds <= score
        self.normal = np.zeros(n_bins, dtype=np.int64)
        self.anomalous = np.zeros(n_bins, dtype=np.int64)
        self.overlap = np.zeros(n_bins, dtype=np.int64)
        self.num_regions = 0
        self.num_out_of_range = 0

    @property
    def num_thresholds(self) -> int:
        return self.thresholds.size

    def update(self, anomaly_maps: Any, masks: Any) -> None:
        """Add maps ``(N, H, W)`` and binary masks of the same shape (or sequences of 2-D maps / masks)."""
        for maps, gts in as_chunks(anomaly_maps, masks):
            self._update_chunk(maps, gts)

    def _update_chunk(self, maps: np.ndarray, gts: np.ndarray) -> None:
        n_bins = self.normal.size
        hi = self.score_range[1]
        hist = _threshold_counts(maps, self.thresholds, strict=False, histogram=True)
        regions = label_regions([gts])
        sizes = regions.sizes
        a_bins = _count_thresholds(maps.reshape(-1)[regions.indices], self.thresholds, strict=False)
        a_hist = np.bincount(a_bins, minlength=n_bins)
        self.anomalous += a_hist
        self.normal += hist - a_hist
        self.num_out_of_range += int(hist[0]) + int(np.count_nonzero(maps > hi))  # bin 0: score < lo
        k = len(sizes) - 1
        if k == 0:
            return
        if sizes[1:].max() >= 2**30:  # pragma: no cover - gigapixel regions
            raise ValueError("a GT region is too large for the fixed-point binned state")
        scale = np.int64(1) << _FIXED_POINT_BITS
        for first, suffix in _region_suffix_counts(a_bins, regions.ids - 1, k, n_bins):
            size = sizes[1 + first : 1 + first + suffix.shape[0], None]
            q = (suffix * scale + size // 2) // size  # round(2**32 * covered fraction), per region and bin
            q[:, :-1] -= q[:, 1:]  # back from suffix sums to per-bin increments
            self.overlap += q.sum(axis=0)
        self.num_regions += k

    def merge(self, other: BinnedPixelCounts) -> BinnedPixelCounts:
        """Add the counts of ``other`` (same thresholds) to this object; returns ``self``."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge BinnedPixelCounts with different thresholds")
        self.normal += other.normal
        self.anomalous += other.anomalous
        self.overlap += other.overlap
        self.num_regions += other.num_regions
        self.num_out_of_range += other.num_out_of_range
        return self

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(fps, tps, overlap)`` at thresholds ``t_{T-1} > ... > t_0 > -inf`` (cumulative, decreasing).

        ``overlap`` is sum_k |P_t & C_k| / |C_k| as float (divide by :attr:`num_regions` for PRO).
        """
        def suffix(h: np.ndarray) -> np.ndarray:
            return np.cumsum(h[::-1])  # entry i: bins >= T - i, i.e. positives at threshold t_{T-1-i}; last: all

        return suffix(self.normal), suffix(self.anomalous), suffix(self.overlap) / float(2**_FIXED_POINT_BITS)

    def aupro(self, fpr_limit: float = 0.3, context: str | None = None) -> float:
        """AUPRO on the binned curve (same anchoring / interpolation / normalisation as the exact mode)."""
        fpr_limit = _check_fpr_limit(fpr_limit)
        fps, _, overlap = self.curve()
        where = f"category {context!r} has" if context is not None else "masks contain"
        if self.num_regions == 0:
            raise ValueError(f"AUPRO is undefined: {where} no anomalous pixel")
        if fps[-1] == 0:
            raise ValueError(f"AUPRO is undefined: {where} no normal pixel (the FPR needs normal pixels)")
        return _aupro_from_curve(fps / fps[-1], overlap / self.num_regions, fpr_limit)

    def state_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds.copy(),
            "normal": self.normal.copy(),
            "anomalous": self.anomalous.copy(),
            "overlap": self.overlap.copy(),
            "num_regions": self.num_regions,
            "num_out_of_range": self.num_out_of_range,
        }


# ----------------------------------------------------------------------------------------------------------
# cflow / AnomalyCLIP / Crane compatibility mode
# ----------------------------------------------------------------------------------------------------------


def _cflow_from_flat(scores: np.ndarray, regions: Regions, fpr_limit: float, num_thresholds: int) -> float:
    lo, hi = scores.min(), scores.max()  # numpy scalars of the maps' dtype, as in the reference code
    if not hi > lo:
        warn_undefined("cflow AUPRO is undefined for a constant anomaly map; returning NaN")
        return float("nan")
    delta = (hi - lo) / num_thresholds
    thresholds = np.arange(lo, hi, delta)
    n_bins = thresholds.size + 1
    hist = _threshold_counts(scores, thresholds, strict=True, histogram=True)  # positive at t_j <=> bin > j
    sizes = regions.sizes
    a_bins = _count_thresholds(scores[regions.indices], thresholds, strict=True)
    k = regions.num_regions
    normal_hist = hist - np.bincount(a_bins, minlength=n_bins)
    fp = np.cumsum(normal_hist[::-1])[::-1][1:]  # fp[j] = normal pixels with bin > j
    pro_sum = np.zeros(n_bins, dtype=np.float64)
    for first, suffix in _region_suffix_counts(a_bins, regions.ids - 1, k, n_bins):
        size = sizes[1 + first : 1 + first + suffix.shape[0], None]
        pro_sum += (suffix / size).sum(axis=0)
    pro = pro_sum[1:] / k
    fpr = fp / sizes[0]
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2 or not fpr.max() > fpr.min():
        warn_undefined(
            f"cflow AUPRO is undefined: fewer than two distinct FPR values below {fpr_limit} among the "
            f"{thresholds.size} thresholds; returning NaN"
        )
        return float("nan")
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    # thresholds increase -> fpr decreases; integrate along increasing fpr
    return float(np.trapezoid(pro[::-1], fpr[::-1]))


def cflow_aupro(anomaly_maps: Any, masks: Any, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """AUPRO as computed by AnomalyCLIP / Crane (from cflow-ad); *not* the official definition.

    ``num_thresholds`` thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` in the maps' dtype
    (the max itself excluded), a pixel is positive if ``score > t``, PRO and pooled FPR per threshold, keep
    the points with ``FPR < fpr_limit``, rescale the kept FPRs to [0, 1] (min-max), trapezoid. No
    interpolation at the limit. Returns NaN (with a warning) if fewer than two distinct FPRs are kept.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    chunks = as_chunks(anomaly_maps, masks)
    regions = label_regions([g for _, g in chunks])
    _check_defined(regions.sizes, None)
    return _cflow_from_flat(_flat_scores(chunks), regions, fpr_limit, int(num_thresholds))


# ----------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------


def aupro(
    anomaly_maps: Any,
    masks: Any,
    fpr_limit: float = 0.3,
    *,
    num_thresholds: int | None = None,
    mode: AuproMode | None = None,
    score_range: tuple[float, float] | None = None,
    backend: Literal["auto", "numpy", "torch"] = "auto",
) -> float:
    """Area under the PRO curve up to ``fpr_limit``, normalised to [0, 1] (Bergmann et al., IJCV 2021).

    Args:
        anomaly_maps: real-valued maps ``(N, H, W)`` (or ``(H, W)``, or a sequence of 2-D maps of varying
            size); numpy array or torch tensor. Must be finite.
        masks: binary ground truth of the same shape; 8-connected components are the GT regions.
            Normal images (all-zero masks) contribute to the FPR.
        fpr_limit: integration limit L on the FPR axis (official: 0.3).
        num_thresholds: number of uniform thresholds for ``mode="binned"`` (implies it; default 1000)
            or ``mode="cflow"`` (default 200).
        mode: ``"exact"`` (default; official, threshold-free), ``"binned"`` or ``"cflow"`` (AnomalyCLIP /
            Crane compatible, see :func:`cflow_aupro`).
        score_range: ``(lo, hi)`` of the binned thresholds; default: min and max of the maps.
        backend: exact mode only. ``"auto"`` uses torch when the maps are a tensor on a non-CPU device.

    Raises:
        ValueError: NaN/inf maps, shape mismatch, non-binary masks, no anomalous pixel (AUPRO undefined)
            or no normal pixel.
    """
    if mode is None:
        mode = "binned" if num_thresholds is not None else "exact"
    fpr_limit = _check_fpr_limit(fpr_limit)
    if mode == "exact":
        if num_thresholds is not None:
            raise ValueError("num_thresholds is only used by mode='binned' or mode='cflow'")
        return _exact_aupro(anomaly_maps, masks, fpr_limit, backend)
    if mode == "cflow":
        return cflow_aupro(anomaly_maps, masks, fpr_limit, 200 if num_thresholds is None else num_thresholds)
    if mode == "binned":
        chunks = as_chunks(anomaly_maps, masks)
        if score_range is None:
            score_range = (
                min(float(m.min()) for m, _ in chunks),
                max(float(m.max()) for m, _ in chunks),
            )
            if not score_range[1] > score_range[0]:
                score_range = (score_range[0], score_range[0] + 1.0)
        counts = BinnedPixelCounts(1000 if num_thresholds is None else num_thresholds, score_range)
        for maps, gts in chunks:
            counts._update_chunk(maps, gts)
        return counts.aupro(fpr_limit)
    raise ValueError(f"mode must be 'exact', 'binned' or 'cflow'; got {mode!r}")
