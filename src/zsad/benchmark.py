"""The papers' tables in one command: released models evaluated with their authors' protocol, next to the
numbers the authors report (`zsad benchmark`, docs/released_weights.md).

The protocol of the AnomalyCLIP and Crane test scripts: zero-shot, so a dataset a model was trained on is
left out; image AUROC, pixel AUROC and AUPRO per category, then their mean over the categories; the
paper-compatible AUPRO (`cflow`, 200 thresholds, as the authors' code computes it) beside the exact one.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .file_modes import write_text_atomic

# `--dataset KEY=PATH`: the key names the dataset of the papers' tables.
DATASET_NAMES = {
    "mvtec": "MVTec AD", "visa": "VisA", "mpdd": "MPDD", "btad": "BTAD", "sdd": "SDD", "dagm": "DAGM",
    "dtd": "DTD-Synthetic", "headct": "HeadCT", "brainmri": "BrainMRI", "br35h": "Br35H", "covid19": "COVID-19",
    "isic": "ISIC", "colondb": "CVC-ColonDB", "clinicdb": "CVC-ClinicDB", "kvasir": "Kvasir", "endo": "Endo",
    "tn3k": "TN3K",
}
# The training data of a registry entry, as dataset keys (left out: the protocol is zero-shot).
TRAINING_KEYS = {"mvtec": ("mvtec",), "visa": ("visa",), "mvtec+colondb": ("mvtec", "colondb"),
                 "visa+clinicdb": ("visa", "clinicdb")}
METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "AUPRO (exact)"),
           ("pixel_aupro_cflow", "AUPRO (paper-compatible)"))
# Where each metric sits in a `ReportedRow`: (image or pixel, index), for the paper column.
PAPER_POSITIONS = {"image_auroc": ("image", 0), "pixel_auroc": ("pixel", 0), "pixel_aupro_cflow": ("pixel", 1)}


@dataclass
class BenchmarkRow:
    """One line of the table: a category's (or the mean's) metrics in %, with the paper's where it reports them."""

    model: str
    dataset: str
    category: str
    values: dict[str, float]
    paper: dict[str, float]


def parse_datasets(items: list[str]) -> dict[str, str]:
    """`["mvtec=PATH", ...]` -> `{"mvtec": PATH}`; ValueError naming the item for anything else."""
    datasets = {}
    for item in items:
        key, sep, path = item.partition("=")
        key = key.strip().lower()
        if not sep or not path:
            raise ValueError(f"--dataset {item!r} must look like NAME=PATH, e.g. mvtec=data/mvtec_ad")
        if key not in DATASET_NAMES:
            raise ValueError(f"--dataset {item!r}: unknown dataset name {key!r}; use one of {', '.join(DATASET_NAMES)}")
        if key in datasets:
            raise ValueError(f"--dataset {key} is given twice")
        datasets[key] = path
    return datasets


def _percent(value) -> float:
    return float("nan") if value is None or (isinstance(value, float) and math.isnan(value)) else 100.0 * float(value)


def benchmark_model(model, name: str, datasets: dict[str, str], output_dir: str | os.PathLike, *, trained_on: str | None,
                    reported: dict[str, object], batch_size: int = 8, image_size: int | None = None,
                    categories: list[str] | None = None, log=print) -> tuple[list[BenchmarkRow], list[str]]:
    """Evaluate `model` (registry name `name`) on `datasets` with the authors' protocol; returns the rows and
    the keys of the datasets left out because the model was trained on them. `reported` maps a paper
    dataset name to its `ReportedRow`."""
    from .evaluation import evaluate_datasets

    skipped = [key for key in datasets if key in TRAINING_KEYS.get(trained_on or "", ())]
    rows = []
    for key, path in datasets.items():
        if key in skipped:
            continue
        results = evaluate_datasets(
            model, [path], output_dir=Path(output_dir) / name / key, categories=categories, image_size=image_size,
            batch_size=batch_size, aupro_mode="exact", report_cflow=True, model_name=name, log=lambda *_: None,
        )[path]
        paper_row = reported.get(DATASET_NAMES[key])
        paper = {}
        for metric, (level, index) in PAPER_POSITIONS.items():
            values = getattr(paper_row, level) if paper_row is not None else None
            if values is not None:
                paper[metric] = float(values[index])
        for category, metrics in sorted(results["per_category"].items()):
            rows.append(BenchmarkRow(name, key, category, {m: _percent(metrics.get(m)) for m, _ in METRICS}, {}))
        rows.append(BenchmarkRow(name, key, "mean", {m: _percent(results["macro"].get(m)) for m, _ in METRICS}, paper))
        log(f"{name} on {DATASET_NAMES[key]}: image AUROC {rows[-1].values['image_auroc']:.1f}")
    return rows, skipped


def _cell(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.1f}"


def write_tables(rows: list[BenchmarkRow], output_dir: str | os.PathLike, notes: list[str] = ()) -> tuple[Path, Path]:
    """`benchmark.csv` (every value, the paper's and the difference) and `benchmark.md` (the same table)."""
    header = ["model", "dataset", "category"]
    for metric, title in METRICS:
        header.append(title)
        if metric in PAPER_POSITIONS:
            header += [f"{title} paper", f"{title} difference"]
    table = []
    for row in rows:
        line = [row.model, DATASET_NAMES[row.dataset], row.category]
        for metric, _ in METRICS:
            line.append(_cell(row.values[metric]))
            if metric in PAPER_POSITIONS:
                paper = row.paper.get(metric)
                line.append(_cell(paper))
                line.append("" if paper is None or math.isnan(row.values[metric]) else f"{row.values[metric] - paper:+.1f}")
        table.append(line)
    folder = Path(output_dir)
    csv_path, md_path = folder / "benchmark.csv", folder / "benchmark.md"
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(table)
    write_text_atomic(csv_path, text.getvalue())
    lines = ["# zsad benchmark", "", "Values in %. Paper: the number the authors report for this very file; "
             "difference: zsad minus paper. AUPRO (paper-compatible) is the 200-threshold AUPRO of the authors' "
             "code, which the papers report.", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in table]
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path
