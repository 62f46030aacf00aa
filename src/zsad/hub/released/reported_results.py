"""Numbers the authors report for their released weights, for `model-index` entries of imported cards.

They are the papers' tables as printed (values in %), never measurements by zsad:
- AnomalyCLIP (Zhou et al., ICLR 2024), Tables 1 and 2: image (AUROC, AP), pixel (AUROC, AUPRO).
- Crane / Crane+ (Salehi et al., arXiv 2504.11055 v2), Table 1: image (AUROC, AP, F1-max), pixel
  (AUROC, AUPRO, F1-max).
A dataset without image-level (or pixel-level) numbers in the table has none here.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_METRICS_ANOMALYCLIP = ("roc_auc", "average_precision")
PIXEL_METRICS_ANOMALYCLIP = ("roc_auc", "aupro")
IMAGE_METRICS_CRANE = ("roc_auc", "average_precision", "f1_max")
PIXEL_METRICS_CRANE = ("roc_auc", "aupro", "f1_max")

METRIC_NAMES = {"roc_auc": "AUROC", "average_precision": "AP", "aupro": "AUPRO", "f1_max": "F1-max"}


@dataclass(frozen=True)
class ReportedRow:
    """One dataset's row of a paper table (values in %)."""

    dataset: str
    image: tuple[float, ...] | None
    pixel: tuple[float, ...] | None


def _rows(table: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None]]) -> dict[str, ReportedRow]:
    return {name: ReportedRow(name, image, pixel) for name, (image, pixel) in table.items()}


# AnomalyCLIP paper, Table 1 (industrial) and Table 2 (medical), the AnomalyCLIP column.
ANOMALYCLIP_TABLE = _rows({
    "MVTec AD": ((91.5, 96.2), (91.1, 81.4)),
    "VisA": ((82.1, 85.4), (95.5, 87.0)),
    "MPDD": ((77.0, 82.0), (96.5, 88.7)),
    "BTAD": ((88.3, 87.3), (94.2, 74.8)),
    "SDD": ((84.7, 80.0), (90.6, 67.8)),
    "DAGM": ((97.5, 92.3), (95.6, 91.0)),
    "DTD-Synthetic": ((93.5, 97.0), (97.9, 92.3)),
    "HeadCT": ((93.4, 91.6), None),
    "BrainMRI": ((90.3, 92.2), None),
    "Br35H": ((94.6, 94.7), None),
    "COVID-19": ((80.1, 58.7), None),
    "ISIC": (None, (89.7, 78.4)),
    "CVC-ColonDB": (None, (81.9, 71.3)),
    "CVC-ClinicDB": (None, (82.9, 67.8)),
    "Kvasir": (None, (78.9, 45.6)),
    "Endo": (None, (84.1, 63.6)),
    "TN3K": (None, (81.5, 50.4)),
})

# Crane paper, Table 1, the Crane and Crane+ columns.
CRANE_TABLE = _rows({
    "MVTec AD": ((93.8, 97.5, 93.8), (91.3, 84.6, 41.3)),
    "VisA": ((85.3, 87.9, 82.6), (95.1, 87.5, 30.9)),
    "MPDD": ((81.4, 84.8, 81.6), (97.0, 89.3, 38.2)),
    "BTAD": ((94.4, 95.9, 91.7), (96.6, 81.3, 56.9)),
    "SDD": ((97.8, 94.3, 91.6), (97.9, 95.9, 60.2)),
    "DAGM": ((99.2, 97.4, 95.8), (96.3, 91.2, 67.2)),
    "DTD-Synthetic": ((96.3, 98.5, 95.3), (98.3, 93.3, 68.8)),
    "HeadCT": ((95.3, 95.7, 91.1), None),
    "BrainMRI": ((95.4, 96.1, 93.9), None),
    "Br35H": ((96.3, 96.8, 91.7), None),
    "ISIC": (None, (88.1, 75.3, 69.8)),
    "CVC-ColonDB": (None, (82.5, 73.0, 36.0)),
    "CVC-ClinicDB": (None, (84.0, 69.3, 42.5)),
    "TN3K": (None, (79.4, 48.8, 44.7)),
})
CRANE_PLUS_TABLE = _rows({
    "MVTec AD": ((93.9, 97.6, 93.6), (91.2, 88.1, 43.8)),
    "VisA": ((83.6, 86.7, 81.2), (95.3, 90.6, 30.2)),
    "MPDD": ((81.0, 84.1, 83.0), (97.6, 93.2, 42.0)),
    "BTAD": ((96.3, 97.0, 93.7), (96.7, 86.8, 61.1)),
    "SDD": ((97.8, 94.5, 89.7), (99.2, 97.4, 62.4)),
    "DAGM": ((98.9, 96.1, 94.7), (96.2, 93.8, 66.8)),
    "DTD-Synthetic": ((95.8, 98.2, 94.6), (98.8, 96.0, 71.8)),
    "HeadCT": ((94.6, 95.4, 89.7), None),
    "BrainMRI": ((96.3, 97.4, 93.5), None),
    "Br35H": ((96.4, 97.2, 91.0), None),
    "ISIC": (None, (90.6, 83.2, 73.4)),
    "CVC-ColonDB": (None, (86.0, 78.6, 40.2)),
    "CVC-ClinicDB": (None, (88.3, 74.5, 47.9)),
    "TN3K": (None, (80.4, 51.7, 45.5)),
})

INDUSTRIAL = ("VisA", "MPDD", "BTAD", "SDD", "DAGM", "DTD-Synthetic")
MEDICAL_ANOMALYCLIP = ("HeadCT", "BrainMRI", "Br35H", "COVID-19", "ISIC", "CVC-ColonDB", "CVC-ClinicDB", "Kvasir", "Endo", "TN3K")
MEDICAL_CRANE = ("HeadCT", "BrainMRI", "Br35H", "ISIC", "CVC-ColonDB", "CVC-ClinicDB", "TN3K")
