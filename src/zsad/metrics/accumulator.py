"""Mergeable accumulator for the full ZSAD metric suite (per category + macro average).

Image AUROC / AP / F1-max are always exact (one score per image is cheap to keep). Pixel AUROC / AP /
F1-max / AUPRO are exact in ``aupro_mode="exact"`` and ``"cflow"`` (maps kept on the CPU, masks bit-packed)
and computed from additive integer counts in ``aupro_mode="binned"`` (constant memory; merging processes
sends a few KB per category instead of the maps).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ZSADWarning
from ._utils import (
    UndefinedMetricWarning,
    as_binary,
    as_float_scores,
    orderable_keys,
    sort_keys_desc,
    tie_ends,
    to_numpy,
)
from .aupro import (
    AuproMode,
    BinnedPixelCounts,
    _aupro_from_curve,
    _cflow_from_flat,
    _check_defined,
    _check_fpr_limit,
    _exact_vertices,
    label_regions,
)
from .classification import (
    auroc_from_counts,
    average_precision_from_counts,
    f1_max_from_counts,
)

__all__ = ["AnomalyMetrics", "MetricAccumulator", "IMAGE_METRICS", "PIXEL_METRICS", "METRIC_NAMES"]

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
METRIC_NAMES = IMAGE_METRICS + PIXEL_METRICS


class _SpilledMaps:
    """One batch's maps, written to a file of the accumulator's spill folder instead of kept in memory.

    Read back (memory-mapped) when the metrics are computed; pickled (to merge processes) as the array
    itself, since the file is local to the process that wrote it."""

    def __init__(self, folder: _SpillFolder, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.folder = folder  # kept alive (its files exist) as long as a spilled batch refers to it
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, np.dtype(dtype)

    @classmethod
    def write(cls, folder: _SpillFolder, category: str, maps: np.ndarray) -> _SpilledMaps:
        handle = folder.handle(category)
        offset = handle.tell()
        handle.write(np.ascontiguousarray(maps).tobytes())
        handle.flush()
        return cls(folder, handle.name, offset, maps.shape, maps.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def ravel(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape).ravel()

    def __reduce__(self):
        return (np.array, (self.ravel().reshape(self.shape),))


class _SpillFolder:
    """Files the maps beyond the memory budget go to (one per category); removed with the accumulator."""

    def __init__(self) -> None:
        import tempfile
        import weakref

        self.path = tempfile.mkdtemp(prefix="zsad-metrics-")
        self._handles: dict[str, Any] = {}
        self._finalizer = weakref.finalize(self, _remove_spill_folder, self.path, self._handles)

    def handle(self, category: str):
        if category not in self._handles:
            self._handles[category] = open(f"{self.path}/{len(self._handles)}.f32", "ab")  # noqa: SIM115 (closed on removal)
        return self._handles[category]


def _remove_spill_folder(path: str, handles: dict) -> None:
    import shutil

    for handle in handles.values():
        handle.close()
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class _CategoryState:
    scores: list[np.ndarray] = field(default_factory=list)  # float64 (b,)
    labels: list[np.ndarray] = field(default_factory=list)  # bool (b,)
    maps: list[np.ndarray | _SpilledMaps] = field(default_factory=list)  # exact/cflow: (n, H, W) float32/float64
    masks: list[tuple[np.ndarray, tuple[int, ...]]] = field(default_factory=list)  # (packbits, shape)
    counts: BinnedPixelCounts | None = None  # binned
    num_pixel_images: int = 0


def _field(obj: Any, name: str, required: bool = True) -> Any:
    if isinstance(obj, Mapping):
        value = obj.get(name)
    else:
        value = getattr(obj, name, None)
    if value is None and required:
        raise ValueError(f"missing {name!r}")
    return value


def _warn(message: str) -> None:
    warnings.warn(message, UndefinedMetricWarning, stacklevel=3)


class AnomalyMetrics:
    """Accumulate model outputs batch by batch; ``compute()`` gives per-category and macro-averaged metrics.

    Args:
        aupro_mode: ``"exact"`` (official AUPRO, exact pixel metrics), ``"binned"`` (additive counts at
            ``num_thresholds`` uniform thresholds over ``score_range``) or ``"cflow"`` (AnomalyCLIP/Crane
            AUPRO for paper comparison; other pixel metrics exact).
        fpr_limit: AUPRO integration limit (0.3).
        num_thresholds: binned (default 1000) or cflow (default 200) thresholds.
        score_range: binned mode only: range of the thresholds (pixel scores outside it are clipped to the
            end bins; counted and warned about).
        report_cflow: also report ``pixel_aupro_cflow`` (paper-comparable; 200 thresholds in exact mode,
            ``num_thresholds`` in cflow mode) from the same maps. Not available in binned mode.
        undefined: what ``compute()`` does when a category has pixel ground truth but no anomalous (or no
            normal) pixel: ``"raise"`` a ``ValueError`` (default) or report NaN with a warning.
        max_memory: exact/cflow modes: bytes of anomaly maps kept in memory; the maps beyond it go to
            files in a temporary folder (read back memory-mapped by ``compute()``, removed with the
            accumulator). The results are identical; ``compute()`` then needs one category's maps at a
            time. None (default): everything in memory.

    Usage::

        metrics = AnomalyMetrics()
        for batch in loader:
            metrics.update(model(batch["pixel_values"]), batch)
        metrics = metrics.gather(accelerator)  # multi-process: merge all processes' states
        results = metrics.compute()  # {"per_category": {...}, "macro": {...}, "counts": {...}}
    """

    def __init__(
        self,
        aupro_mode: AuproMode = "exact",
        *,
        fpr_limit: float = 0.3,
        num_thresholds: int | None = None,
        score_range: tuple[float, float] = (0.0, 1.0),
        report_cflow: bool = False,
        undefined: Literal["raise", "nan"] = "raise",
        max_memory: int | None = None,
    ) -> None:
        if aupro_mode not in ("exact", "binned", "cflow"):
            raise ValueError(f"aupro_mode must be 'exact', 'binned' or 'cflow'; got {aupro_mode!r}")
        if undefined not in ("raise", "nan"):
            raise ValueError(f"undefined must be 'raise' or 'nan'; got {undefined!r}")
        if aupro_mode == "exact" and num_thresholds is not None:
            raise ValueError("num_thresholds is only used by aupro_mode='binned' or 'cflow'")
        if report_cflow and aupro_mode == "binned":
            raise ValueError("report_cflow needs the maps, which binned mode does not keep; use aupro_mode='exact'")
        self.aupro_mode = aupro_mode
        self.fpr_limit = _check_fpr_limit(fpr_limit)
        default = {"exact": None, "binned": 1000, "cflow": 200}[aupro_mode]
        self.num_thresholds = default if num_thresholds is None else int(num_thresholds)
        self.score_range = (float(score_range[0]), float(score_range[1]))
        self.report_cflow = bool(report_cflow)
        self.undefined = undefined
        if aupro_mode == "binned":
            BinnedPixelCounts(self.num_thresholds, self.score_range)  # validate the arguments early
        if max_memory is not None and (max_memory < 0 or aupro_mode == "binned"):
            raise ValueError("max_memory must be >= 0 bytes and applies to aupro_mode 'exact' or 'cflow' "
                             f"(binned mode keeps counts only); got {max_memory} with {aupro_mode!r}")
        self.max_memory = max_memory
        self._state: dict[str, _CategoryState] = {}
        self._maps_in_memory = 0
        self._spill: _SpillFolder | None = None

    # ------------------------------------------------------------------------------------------------------
    def _config(self) -> tuple:
        return (self.aupro_mode, self.fpr_limit, self.num_thresholds, self.score_range, self.report_cflow)

    def _new_state(self) -> _CategoryState:
        st = _CategoryState()
        if self.aupro_mode == "binned":
            st.counts = BinnedPixelCounts(self.num_thresholds, self.score_range)
        return st

    def empty_like(self) -> AnomalyMetrics:
        """A new, empty accumulator with the same configuration."""
        new = copy.copy(self)
        new._state, new._maps_in_memory, new._spill = {}, 0, None
        return new

    def reset(self) -> None:
        self._state, self._maps_in_memory, self._spill = {}, 0, None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_spill"] = None  # spilled maps travel as arrays (`_SpilledMaps.__reduce__`)
        return state

    @property
    def spilled_bytes(self) -> int:
        """Bytes of maps written to the spill folder (0 without `max_memory`)."""
        return sum(m.nbytes for st in self._state.values() for m in st.maps if isinstance(m, _SpilledMaps))

    def _keep_maps(self, category: str, maps: np.ndarray) -> np.ndarray | _SpilledMaps:
        if self.max_memory is None or self._maps_in_memory + maps.nbytes <= self.max_memory:
            self._maps_in_memory += maps.nbytes
            return np.ascontiguousarray(maps)
        if self._spill is None:
            self._spill = _SpillFolder()
        return _SpilledMaps.write(self._spill, category, maps)

    @property
    def categories(self) -> list[str]:
        return sorted(self._state)

    @property
    def num_images(self) -> int:
        return sum(sum(s.size for s in st.scores) for st in self._state.values())

    # ------------------------------------------------------------------------------------------------------
    def update(self, output: Any, batch: Mapping[str, Any]) -> None:
        """Add one batch.

        Args:
            output: object (or mapping) with ``pred_scores`` ``(B,)`` and ``anomaly_maps`` ``(B, H, W)``
                (``anomaly_maps`` may be None for image-level-only models).
            batch: mapping with ``labels`` ``(B,)`` (0 normal / 1 anomalous), ``masks`` ``(B, H, W)``
                binary, ``categories`` (B strings) and optionally ``has_mask`` ``(B,)`` bool (False: the
                image has no pixel ground truth and is left out of the pixel metrics).
        """
        scores = to_numpy(_field(output, "pred_scores"))
        labels = to_numpy(_field(batch, "labels"))
        categories = _field(batch, "categories")
        if isinstance(categories, str):
            categories = [categories]
        categories = [str(c) for c in categories]
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape (B,); got {tuple(labels.shape)}")
        b = labels.shape[0]
        if scores.shape != (b,):
            raise ValueError(f"shape mismatch: pred_scores {tuple(scores.shape)} vs labels {tuple(labels.shape)}")
        if len(categories) != b:
            raise ValueError(f"categories has {len(categories)} entries for a batch of {b}")
        scores = as_float_scores(scores, "pred_scores").astype(np.float64)
        labels = as_binary(labels, "labels")

        maps_in = _field(output, "anomaly_maps", required=False)
        masks_in = batch.get("masks")
        has = np.zeros(b, dtype=bool)
        if maps_in is not None and masks_in is not None:
            maps = to_numpy(maps_in)
            masks = to_numpy(masks_in)
            if maps.ndim != 3 or maps.shape[0] != b:
                raise ValueError(f"anomaly_maps must have shape (B, H, W) with B={b}; got {tuple(maps.shape)}")
            if maps.shape != masks.shape:
                raise ValueError(f"shape mismatch: anomaly_maps {tuple(maps.shape)} vs masks {tuple(masks.shape)}")
            maps = as_float_scores(maps, "anomaly_maps")
            masks = as_binary(masks, "masks")
            has_mask = batch.get("has_mask")
            has = np.ones(b, dtype=bool) if has_mask is None else as_binary(to_numpy(has_mask), "has_mask")
            if has.shape != (b,):
                raise ValueError(f"has_mask must have shape ({b},); got {tuple(has.shape)}")
            bad = np.flatnonzero(~labels & has & masks.reshape(b, -1).any(axis=1))
            if bad.size:
                raise ValueError(
                    f"images {bad.tolist()} of the batch are labelled normal (0) but their masks have anomalous pixels"
                )

        order: dict[str, list[int]] = {}
        for i, c in enumerate(categories):
            order.setdefault(c, []).append(i)
        for c, idx_list in order.items():
            idx = np.asarray(idx_list)
            st = self._state.get(c)
            if st is None:
                st = self._state[c] = self._new_state()
            st.scores.append(scores[idx])
            st.labels.append(labels[idx])
            pidx = idx[has[idx]]
            if pidx.size == 0:
                continue
            m, g = maps[pidx], masks[pidx]
            if st.counts is not None:
                st.counts._update_chunk(m, g)
            else:
                if m.dtype != np.float64:
                    m = m.astype(np.float32, copy=False)
                st.maps.append(self._keep_maps(c, m))
                st.masks.append((np.packbits(g, axis=None), g.shape))
            st.num_pixel_images += pidx.size

    # ------------------------------------------------------------------------------------------------------
    def merge(self, other: AnomalyMetrics) -> AnomalyMetrics:
        """Add the state of ``other`` (same configuration) to this accumulator in place; returns ``self``.

        Merging the accumulators of two halves of the data gives exactly the single-pass result.
        """
        if not isinstance(other, AnomalyMetrics):
            raise TypeError(f"can only merge AnomalyMetrics, got {type(other).__name__}")
        if other._config() != self._config():
            raise ValueError(f"cannot merge accumulators with different settings: {self._config()} vs {other._config()}")
        for c, src in other._state.items():
            dst = self._state.get(c)
            if dst is None:
                dst = self._state[c] = self._new_state()
            dst.scores.extend(src.scores)
            dst.labels.extend(src.labels)
            dst.maps.extend(src.maps)
            dst.masks.extend(src.masks)
            if dst.counts is not None:
                dst.counts.merge(src.counts)
            dst.num_pixel_images += src.num_pixel_images
        return self

    def gather(self, accelerator: Any = None) -> AnomalyMetrics:
        """Merge the accumulators of all processes; every process gets the merged result (a new object).

        With an ``accelerate.Accelerator`` this uses ``accelerate.utils.gather_object``; without one, plain
        ``torch.distributed.all_gather_object`` if a process group is initialised (otherwise a copy of
        ``self``). States are merged in rank order. Note: a dataloader prepared with ``even_batches=True``
        (accelerate's default) repeats samples to fill the last batch; those duplicates are counted here.
        Create the ``Accelerator`` with ``DataLoaderConfiguration(even_batches=False)`` for evaluation.
        """
        if accelerator is not None:
            if accelerator.num_processes == 1:
                return self.empty_like().merge(self)
            if getattr(accelerator, "even_batches", False):
                warnings.warn(
                    "AnomalyMetrics.gather: the Accelerator uses even_batches=True, which duplicates samples to "
                    "fill the last batch of some processes; use DataLoaderConfiguration(even_batches=False) for "
                    "exact evaluation",
                    ZSADWarning,
                    stacklevel=2,
                )
            from accelerate.utils import gather_object

            states = gather_object([self])
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, self)
        else:
            states = [self]
        merged = self.empty_like()
        for st in states:
            merged.merge(st)
        return merged

    # ------------------------------------------------------------------------------------------------------
    def compute(self) -> dict[str, dict[str, Any]]:
        """Per-category metrics and their macro average (mean over categories, NaN entries left out).

        Returns ``{"per_category": {cat: {metric: value}}, "macro": {metric: value},
        "counts": {cat: {"images", "anomalous_images", "pixel_images"}}}`` with the metric keys
        :data:`METRIC_NAMES` (plus ``pixel_aupro_cflow`` when ``report_cflow``). Categories are sorted.
        """
        per_category: dict[str, dict[str, float]] = {}
        counts: dict[str, dict[str, int]] = {}
        for c in sorted(self._state):
            st = self._state[c]
            scores = np.concatenate(st.scores)
            labels = np.concatenate(st.labels)
            res = self._image_metrics(c, scores, labels)
            res.update(self._pixel_metrics(c, st))
            per_category[c] = res
            counts[c] = {
                "images": int(labels.size),
                "anomalous_images": int(labels.sum()),
                "pixel_images": int(st.num_pixel_images),
            }
        keys = list(METRIC_NAMES) + (["pixel_aupro_cflow"] if self.report_cflow else [])
        macro = {}
        for k in keys:
            vals = [r[k] for r in per_category.values() if not math.isnan(r[k])]
            macro[k] = float(np.mean(vals)) if vals else float("nan")
        return {"per_category": per_category, "macro": macro, "counts": counts}

    def _image_metrics(self, c: str, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        keys, pos = sort_keys_desc(orderable_keys(scores), labels)
        ends = tie_ends(keys)
        tps = np.cumsum(pos, dtype=np.int64)[ends]
        fps = ends.astype(np.int64) + 1 - tps
        if fps[-1] == 0 or tps[-1] == 0:
            only = "anomalous" if fps[-1] == 0 else "normal"
            _warn(f"category {c!r} has only {only} images: image AUROC is undefined (NaN)")
        return {
            "image_auroc": auroc_from_counts(fps, tps),
            "image_ap": average_precision_from_counts(fps, tps),
            "image_f1_max": f1_max_from_counts(fps, tps),
        }

    def _pixel_metrics(self, c: str, st: _CategoryState) -> dict[str, float]:
        keys = list(PIXEL_METRICS) + (["pixel_aupro_cflow"] if self.report_cflow else [])
        nan = {k: float("nan") for k in keys}
        if st.num_pixel_images == 0:
            _warn(
                f"category {c!r} has no pixel ground truth (no anomaly maps or has_mask all False): "
                "pixel metrics skipped (NaN)"
            )
            return nan
        if st.counts is not None:
            if st.counts.num_out_of_range:
                lo, hi = st.counts.score_range
                warnings.warn(
                    f"category {c!r}: {st.counts.num_out_of_range} pixel scores outside score_range ({lo}, {hi}) "
                    "fall into the end bins of the binned metrics",
                    ZSADWarning,
                    stacklevel=3,
                )
            fps, tps, overlap = st.counts.curve()
            sizes = np.array([fps[-1]] + [1] * st.counts.num_regions)  # only emptiness matters here
            if not self._defined(c, sizes):
                return nan
            return {
                "pixel_auroc": auroc_from_counts(fps, tps),
                "pixel_ap": average_precision_from_counts(fps, tps),
                "pixel_f1_max": f1_max_from_counts(fps, tps),
                "pixel_aupro": _aupro_from_curve(fps / fps[-1], overlap / st.counts.num_regions, self.fpr_limit),
            }
        masks = [np.unpackbits(p, count=math.prod(shape)).reshape(shape).view(bool) for p, shape in st.masks]
        regions = label_regions(masks)
        sizes = regions.sizes
        if not self._defined(c, sizes):
            return nan
        scores = np.concatenate([m.ravel() for m in st.maps]) if len(st.maps) > 1 else st.maps[0].ravel()
        fps, tps, overlap = _exact_vertices(scores, regions, None)
        res = {
            "pixel_auroc": auroc_from_counts(fps, tps),
            "pixel_ap": average_precision_from_counts(fps, tps),
            "pixel_f1_max": f1_max_from_counts(fps, tps),
        }
        n_regions = len(sizes) - 1
        exact = _aupro_from_curve(fps / sizes[0], overlap / n_regions, self.fpr_limit)
        cflow = None
        if self.aupro_mode == "cflow" or self.report_cflow:
            cflow = _cflow_from_flat(scores, regions, self.fpr_limit, self.num_thresholds or 200)
        res["pixel_aupro"] = cflow if self.aupro_mode == "cflow" else exact
        if self.report_cflow:
            res["pixel_aupro_cflow"] = cflow
        return res

    def _defined(self, c: str, sizes: np.ndarray) -> bool:
        try:
            _check_defined(sizes, c)
        except ValueError as err:
            if self.undefined == "raise":
                raise ValueError(
                    f"{err}; mark images without pixel ground truth with has_mask=False, or create the "
                    "accumulator with undefined='nan'"
                ) from None
            _warn(f"{err}: pixel metrics reported as NaN")
            return False
        return True


MetricAccumulator = AnomalyMetrics
