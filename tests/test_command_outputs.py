"""What the commands write equals the model's outputs and the metric functions called directly on the same
inputs (issue 29, point 3): values, order and categories, so that a bug between the model and the file shows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from zsad import ZeroShotCLIPModel, ZSADImageProcessor
from zsad.cli import main
from zsad.data import load_anomaly_dataset, make_synthetic_dataset
from zsad.metrics import aupro, auroc

SIZE = 28


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outputs") / "parts"
    make_synthetic_dataset(3, 3, size=32, textures=["grid", "dots"], seed=4).save_to_disk(str(folder))
    return folder


def direct(tiny_backbone, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The model on every row, through the processor, each image prompted with its category."""
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=SIZE).eval()
    processor = ZSADImageProcessor(image_size=SIZE)
    with torch.no_grad():
        out = model(processor(list(dataset["image"]))["pixel_values"], categories=list(dataset["category"]))
    return out.pred_scores.numpy().astype(np.float64), out.anomaly_maps.numpy()


def test_evaluate_tables_equal_the_metrics_of_the_model_outputs(tiny_backbone, two_categories, tmp_path):
    assert main(["evaluate", str(two_categories), "--model", "zero-shot-clip", "--backbone", tiny_backbone,
                 "--image-size", str(SIZE), "--batch-size", "5", "--out", str(tmp_path / "eval")]) == 0
    written = json.loads((tmp_path / "eval" / "parts" / "metrics.json").read_text())
    dataset = load_anomaly_dataset(two_categories, split="test")
    scores, maps = direct(tiny_backbone, dataset)
    processor = ZSADImageProcessor(image_size=SIZE)
    masks = np.stack([processor.preprocess_mask(m).numpy() for m in dataset["mask"]]) > 0.5
    labels = np.asarray(dataset["label"])
    categories = np.asarray(dataset["category"])
    assert sorted(written["per_category"]) == sorted(set(categories)) == ["texture_dots", "texture_grid"]
    expected = {}
    for category in sorted(set(categories)):
        rows = categories == category
        expected[category] = {
            "image_auroc": auroc(scores[rows], labels[rows]),
            "pixel_auroc": auroc(maps[rows].ravel(), masks[rows].ravel()),
            "pixel_aupro": aupro(maps[rows], masks[rows]),
        }
        for metric, value in expected[category].items():
            assert written["per_category"][category][metric] == pytest.approx(value, abs=1e-9), (category, metric)
    for metric in ("image_auroc", "pixel_auroc", "pixel_aupro"):  # the macro average of the categories
        assert written["macro"][metric] == pytest.approx(np.mean([expected[c][metric] for c in expected]), abs=1e-9)


def test_detect_scores_csv_is_the_model_in_input_order(tiny_backbone, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = ["b.png", "a.png", "c.png"]
    for i, name in enumerate(names):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (36, 30, 3), dtype=np.uint8)).save(images / name)
    assert main(["detect", str(images / "c.png"), str(images / "a.png"), str(images / "b.png"), "--model",
                 "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", str(SIZE), "--batch-size", "2",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == [str(images / n) for n in ("c.png", "a.png", "b.png")]  # as given
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=SIZE).eval()
    pixels = ZSADImageProcessor(image_size=SIZE)([Image.open(row["image"]) for row in rows])["pixel_values"]
    with torch.no_grad():
        expected = model(pixels).pred_scores.tolist()
    assert [float(row["score"]) for row in rows] == pytest.approx(expected, abs=1e-6)
    summary = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert [r["score"] for r in summary["results"]] == pytest.approx(expected, abs=1e-6)


def test_calibrated_thresholds_are_the_f1_optimal_scores_of_the_data(tiny_backbone, two_categories, tmp_path):
    assert main(["calibrate", str(two_categories), "--model", "zero-shot-clip", "--backbone", tiny_backbone,
                 "--image-size", str(SIZE), "--out", str(tmp_path / "calibrated"), "--quiet"]) == 0
    config = json.loads((tmp_path / "calibrated" / "config.json").read_text())
    scores, _ = direct(tiny_backbone, load_anomaly_dataset(two_categories, split="test"))
    labels = np.asarray(load_anomaly_dataset(two_categories, split="test")["label"])

    def f1(threshold):  # anomalous when score >= threshold
        predicted = scores >= threshold
        tp = np.sum(predicted & (labels == 1))
        return 2 * tp / (predicted.sum() + labels.sum())

    best = max(sorted(set(scores)), key=lambda t: (f1(t), t))
    assert config["image_threshold"] == pytest.approx(best, abs=1e-6)
    assert f1(config["image_threshold"]) == pytest.approx(max(f1(t) for t in scores))
