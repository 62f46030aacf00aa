"""Markdown tables and flat logging dicts for :meth:`AnomalyMetrics.compute` results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_markdown", "flatten_results", "METRIC_TITLES"]

METRIC_TITLES = {
    "image_auroc": "Image AUROC",
    "image_ap": "Image AP",
    "image_f1_max": "Image F1-max",
    "pixel_auroc": "Pixel AUROC",
    "pixel_ap": "Pixel AP",
    "pixel_f1_max": "Pixel F1-max",
    "pixel_aupro": "Pixel AUPRO",
    "pixel_aupro_cflow": "Pixel AUPRO (cflow)",
}


def _fmt(value: float, scale: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"


def format_markdown(
    results: dict[str, Any],
    metrics: Sequence[str] | None = None,
    *,
    scale: float = 100.0,
    digits: int = 1,
    mean_label: str = "**mean**",
) -> str:
    """Markdown table: one row per category, then the macro average; NaN (undefined/skipped) shows as ``-``.

    ``results`` is the dict returned by :meth:`AnomalyMetrics.compute`; values are multiplied by ``scale``
    (percent by default).
    """
    per_category: dict[str, dict[str, float]] = results["per_category"]
    macro: dict[str, float] = results["macro"]
    if metrics is None:
        metrics = list(macro)
    unknown = [m for m in metrics if m not in macro]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; available: {list(macro)}")
    header = "| Category | " + " | ".join(METRIC_TITLES.get(m, m) for m in metrics) + " |"
    sep = "|---|" + "---:|" * len(metrics)
    rows = [header, sep]
    for cat, res in per_category.items():
        rows.append(f"| {cat} | " + " | ".join(_fmt(res[m], scale, digits) for m in metrics) + " |")
    rows.append(f"| {mean_label} | " + " | ".join(_fmt(macro[m], scale, digits) for m in metrics) + " |")
    return "\n".join(rows) + "\n"


def flatten_results(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"<prefix>macro/image_auroc": v, "<prefix><category>/image_auroc": v, ...}`` for ``accelerator.log``."""
    flat = {f"{prefix}macro/{k}": v for k, v in results["macro"].items()}
    for cat, res in results["per_category"].items():
        flat.update({f"{prefix}{cat}/{k}": v for k, v in res.items()})
    return flat
