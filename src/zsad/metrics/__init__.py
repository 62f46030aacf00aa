"""Metrics for zero-shot anomaly detection: exact/binned/cflow AUPRO, AUROC, AP, F1-max, accumulators.

See docs/metrics.md for definitions and for which AUPRO variant tables report.
"""

from pathlib import Path

from ._utils import UndefinedMetricWarning
from .accumulator import IMAGE_METRICS, METRIC_NAMES, PIXEL_METRICS, AnomalyMetrics, MetricAccumulator
from .aupro import AuproMode, BinnedPixelCounts, aupro, cflow_aupro, label_regions, pro_curve
from .classification import auroc, average_precision, binary_clf_curve, f1_max
from .report import METRIC_TITLES, flatten_results, format_markdown


def evaluate_module_path() -> str:
    """Folder of the ``evaluate`` AUPRO module: ``evaluate.load(zsad.metrics.evaluate_module_path())``."""
    return str(Path(__file__).resolve().parent / "evaluate_module" / "aupro")


__all__ = [
    "AnomalyMetrics",
    "AuproMode",
    "BinnedPixelCounts",
    "IMAGE_METRICS",
    "METRIC_NAMES",
    "METRIC_TITLES",
    "MetricAccumulator",
    "PIXEL_METRICS",
    "UndefinedMetricWarning",
    "aupro",
    "auroc",
    "average_precision",
    "binary_clf_curve",
    "cflow_aupro",
    "evaluate_module_path",
    "f1_max",
    "flatten_results",
    "format_markdown",
    "label_regions",
    "pro_curve",
]
