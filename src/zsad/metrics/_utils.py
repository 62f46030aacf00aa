"""Input validation and sorting helpers shared by the metric functions (internal)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ZSADWarning

__all__ = ["UndefinedMetricWarning"]


class UndefinedMetricWarning(ZSADWarning):
    """A metric is undefined for the given data (e.g. AUROC with a single class) and is reported as NaN."""


def warn_undefined(message: str) -> None:
    warnings.warn(message, UndefinedMetricWarning, stacklevel=3)


def to_numpy(x: Any) -> np.ndarray:
    """Convert a tensor / array / nested list to a numpy array (CPU, no autograd)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def as_float_scores(x: np.ndarray, name: str) -> np.ndarray:
    """Return a contiguous float32/float64 array of finite scores, or raise a clear ``ValueError``."""
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    elif x.dtype.kind in "biu":
        x = x.astype(np.float64)
    elif x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be real-valued; got dtype {x.dtype}")
    x = np.ascontiguousarray(x)
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        parts = []
        if n_nan:
            parts.append(f"{n_nan} NaN values")
        if n_inf:
            parts.append(f"{n_inf} infinite values")
        raise ValueError(f"{name} contains {' and '.join(parts)}")
    return x


def _format_values(values: np.ndarray) -> str:
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in values.tolist()[:5]]
    more = ", ..." if values.size > 5 else ""
    return "{" + ", ".join(shown) + more + "}"


def as_binary(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a bool array, raising if it contains values other than 0 and 1."""
    if x.dtype == np.bool_:
        return np.ascontiguousarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be binary (0/1); got dtype {x.dtype}")
    ok = (x == 0) | (x == 1)
    if not ok.all():
        bad = np.unique(x[~ok])
        raise ValueError(f"{name} must be binary (0/1); found values {_format_values(bad)}")
    return np.ascontiguousarray(x != 0)


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {name_a} {tuple(a.shape)} vs {name_b} {tuple(b.shape)}")


def as_chunks(
    anomaly_maps: Any, masks: Any, maps_name: str = "anomaly_maps", masks_name: str = "masks"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate maps/masks and return a list of ``(maps (n, H, W) float, masks (n, H, W) bool)`` chunks.

    Accepts arrays/tensors of shape ``(N, H, W)`` or ``(H, W)``, or sequences of 2-D maps (which may differ
    in size from image to image).
    """
    if _is_sequence_of_arrays(anomaly_maps):
        if not _is_sequence_of_arrays(masks) or len(masks) != len(anomaly_maps):
            n_masks = len(masks) if isinstance(masks, Sequence) else "an array"
            raise ValueError(
                f"{maps_name} is a sequence of {len(anomaly_maps)} maps; {masks_name} must be a sequence of "
                f"the same length (got {n_masks})"
            )
        pairs = list(zip(anomaly_maps, masks))
    else:
        pairs = [(anomaly_maps, masks)]
    chunks = []
    total = 0
    for i, (m, g) in enumerate(pairs):
        m = to_numpy(m)
        g = to_numpy(g)
        where = f"[{i}]" if len(pairs) > 1 else ""
        if m.ndim == 2:
            m = m[None]
        if g.ndim == 2:
            g = g[None]
        if m.ndim != 3:
            raise ValueError(f"{maps_name}{where} must have shape (N, H, W) or (H, W); got {tuple(m.shape)}")
        check_same_shape(m, g, maps_name + where, masks_name + where)
        if m.size == 0:
            continue
        chunks.append((as_float_scores(m, maps_name + where), as_binary(g, masks_name + where)))
        total += m.size
    if total == 0:
        raise ValueError(f"{maps_name} is empty")
    return chunks


def _is_sequence_of_arrays(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (np.ndarray, torch.Tensor))


# ----------------------------------------------------------------------------------------------------------
# Sorting: order-preserving integer keys for floats, and a fast "sort scores, carry a small payload" helper.
# ----------------------------------------------------------------------------------------------------------


def orderable_keys(x: np.ndarray) -> np.ndarray:
    """Map finite float32/float64 values to int32/int64 keys with the same order (-0.0 and +0.0 are equal)."""
    if x.dtype == np.float32:
        i = x.view(np.int32)
        low = np.int32(0x7FFFFFFF)
    elif x.dtype == np.float64:
        i = x.view(np.int64)
        low = np.int64(0x7FFFFFFFFFFFFFFF)
    else:  # pragma: no cover - callers convert first
        raise TypeError(x.dtype)
    sign = i >> (i.dtype.itemsize * 8 - 1)  # 0 for x >= 0, -1 for x < 0
    return ((i & low) ^ sign) - sign


def keys_to_float(k: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`orderable_keys`."""
    k = np.asarray(k, dtype=np.int32 if dtype == np.float32 else np.int64)
    bits = k.dtype.itemsize * 8
    neg = k < 0
    out = np.where(neg, (-k) | (np.array(1, dtype=k.dtype) << (bits - 1)), k)
    return out.view(dtype)


def sort_keys_desc(keys: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort :func:`orderable_keys` in descending order and carry ``payload`` (ints in [0, 2**32)) along.

    Returns ``(keys_desc, payload_desc)``. For int32 keys (float32 scores) the key and the payload are packed
    into one int64 and sorted with torch's radix sort, several times faster than ``np.argsort`` on large
    arrays; float64 scores fall back to a stable ``np.argsort``.
    """
    if keys.dtype == np.int32:
        packed = (keys.astype(np.int64) << 32) | payload.astype(np.int64, copy=False)
        packed = torch.sort(torch.from_numpy(packed)).values.numpy()[::-1]
        return (packed >> 32).astype(np.int32), packed & 0xFFFFFFFF
    order = np.argsort(keys, kind="stable")[::-1]
    return keys[order], payload[order].astype(np.int64, copy=False)


def sort_keys(keys: np.ndarray) -> np.ndarray:
    """Ascending sort of int32/int64 keys (numpy's SIMD sort for int32, torch's radix sort for int64)."""
    if keys.dtype == np.int32:
        return np.sort(keys)
    return torch.sort(torch.from_numpy(np.ascontiguousarray(keys))).values.numpy()


def curve_vertices(
    neg_keys: np.ndarray,
    pos_keys: np.ndarray,
    pos_payload: np.ndarray | None = None,
    payload_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices of the exact, threshold-free curve of cumulative counts (predict positive iff key >= t).

    For every distinct positive key ``a`` (in decreasing order) two vertices, "key > a" then "key >= a",
    followed by a final vertex counting every sample. Between consecutive vertices only negatives change
    (the curve is a straight horizontal line in ROC / PRO space) or the vertex pair spans one tied score (a
    straight segment), so trapezoid areas, AP and F1-max over these vertices equal those over all distinct
    thresholds, while only the negatives need a plain sort (no payload) and the positives a small one.

    Returns ``(fps, tps, wsum)``: cumulative negative and positive counts (int64) and, if
    ``payload_weights`` is given, the cumulative sum of ``payload_weights[payload]`` over the positives.
    """
    neg = sort_keys(neg_keys)
    n_neg = np.int64(neg.size)
    if pos_keys.size == 0:
        return np.array([n_neg]), np.zeros(1, np.int64), (np.zeros(1) if payload_weights is not None else None)
    if pos_payload is None:
        pos = sort_keys(pos_keys)[::-1]
    else:
        pos, payload = sort_keys_desc(pos_keys, pos_payload)
    ends = tie_ends(pos)
    a = pos[ends][::-1]  # distinct positive keys, increasing (fast path of searchsorted)
    m = a.size
    fp_ge = (n_neg - np.searchsorted(neg, a, side="left"))[::-1]
    fp_gt = (n_neg - np.searchsorted(neg, a, side="right"))[::-1]
    tp_ge = ends.astype(np.int64) + 1

    def interleave(gt: np.ndarray, ge: np.ndarray, last: Any) -> np.ndarray:
        out = np.empty(2 * m + 1, dtype=ge.dtype)
        out[0 : 2 * m : 2] = gt
        out[1 : 2 * m : 2] = ge
        out[-1] = last
        return out

    fps = interleave(fp_gt, fp_ge, n_neg)
    tps = interleave(np.concatenate(([0], tp_ge[:-1])), tp_ge, pos.size)
    wsum = None
    if payload_weights is not None:
        cw = np.cumsum(payload_weights[payload])
        ov_ge = cw[ends]
        wsum = interleave(np.concatenate(([0.0], ov_ge[:-1])), ov_ge, cw[-1])
    return fps, tps, wsum


def tie_ends(keys_desc: np.ndarray) -> np.ndarray:
    """Indices of the last element of each run of equal keys in a sorted array."""
    ends = np.flatnonzero(keys_desc[1:] != keys_desc[:-1])
    return np.append(ends, keys_desc.size - 1)
