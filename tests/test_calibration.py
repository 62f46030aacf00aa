"""Threshold calibration (`zsad.calibration`, `zsad calibrate`): the FPR quantile holds on held-out normal
images within binomial sampling error; F1-optimal thresholds equal a brute-force search."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zsad import ZeroShotCLIPModel
from zsad.calibration import calibrate_thresholds
from zsad.cli import main
from zsad.data import collate_fn, convert_mvtec, make_synthetic_dataset, with_anomaly_transform
from zsad.data.synthetic import write_synthetic_mvtec

SIZE = 32


@pytest.fixture(scope="module")
def model(tiny_backbone):
    return ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=SIZE).eval()


def loader(model, dataset, batch_size=100):
    return DataLoader(with_anomaly_transform(dataset, model.image_processor()), batch_size=batch_size, collate_fn=collate_fn)


@torch.inference_mode()
def run(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and anomaly maps of the whole dataset (each image prompted with its category, as
    calibration does for a class-aware model)."""
    scores, maps = [], []
    for batch in loader(model, dataset):
        output = model(pixel_values=batch["pixel_values"], categories=batch["categories"])
        scores.append(output.pred_scores.numpy())
        maps.append(output.anomaly_maps.numpy())
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps)


def test_fpr_threshold_holds_on_held_out_normals(model):
    fpr, n = 0.1, 400
    # 2n normal textures of one style; even indices calibrate, odd ones are held out (exchangeable samples)
    normals = make_synthetic_dataset(num_normal=2 * n, num_anomalous=0, size=SIZE, seed=5)
    calibration_set, held_out = normals.select(range(0, 2 * n, 2)), normals.select(range(1, 2 * n, 2))
    result = calibrate_thresholds(model, loader(model, calibration_set), fpr=fpr)
    assert (result.image_method, result.pixel_method) == ("fpr", "fpr")
    assert (result.num_normal, result.num_anomalous, result.num_pixel_images) == (n, 0, n)

    # On the calibration set: the lowest score value that at most fpr * n normals reach.
    cal_scores, cal_maps = run(model, calibration_set)
    below = np.unique(cal_scores[cal_scores < result.image_threshold]).max()
    assert np.sum(cal_scores >= result.image_threshold) <= fpr * n < np.sum(cal_scores >= below)
    assert result.image_threshold in cal_scores.astype(np.float64)

    # Held out: the threshold's true exceedance probability and the held-out rate each carry binomial
    # error (the first ~ p(1-p)/n_cal for an empirical quantile, the second p(1-p)/n_held_out), plus the
    # <= 1/n rounding of fpr * n down to a count. 4 sigma: a false alarm once in ~16,000 runs.
    held_scores, _ = run(model, held_out)
    sigma = math.sqrt(fpr * (1 - fpr) * (1 / n + 1 / n))
    measured = np.mean(held_scores >= result.image_threshold)
    assert abs(measured - fpr) <= 4 * sigma + 1 / n, (measured, fpr, sigma)
    model.config.image_threshold = result.image_threshold
    try:
        batch = next(iter(loader(model, held_out, batch_size=n)))
        with torch.inference_mode():
            labels = model(pixel_values=batch["pixel_values"], categories=batch["categories"]).pred_labels
    finally:
        model.config.image_threshold = None
    assert labels.float().mean().item() == pytest.approx(measured)

    # Pixels: the lowest of the 10001 grid thresholds that at most fpr of the calibration pixels reach.
    step = 1 / 10000
    assert np.mean(cal_maps >= result.pixel_threshold) <= fpr < np.mean(cal_maps >= result.pixel_threshold - step)


def brute_force_f1(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    f1 = []
    for t in thresholds:
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        fp = np.sum(predicted & ~labels)
        fn = np.sum(~predicted & labels)
        f1.append(2 * tp / (2 * tp + fp + fn))
    return np.array(f1)


def test_f1_optimal_thresholds_equal_brute_force(model):
    dataset = make_synthetic_dataset(num_normal=30, num_anomalous=30, size=SIZE, seed=2)
    result = calibrate_thresholds(model, loader(model, dataset, batch_size=16), num_bins=101)
    assert (result.image_method, result.pixel_method) == ("f1", "f1")
    scores, maps = run(model, dataset)
    labels = np.array(dataset["label"]) == 1
    image_f1 = brute_force_f1(scores, labels, np.unique(scores))
    assert result.image_f1 == pytest.approx(image_f1.max())
    assert brute_force_f1(scores, labels, [result.image_threshold])[0] == pytest.approx(image_f1.max())

    masks = np.stack([
        np.zeros((SIZE, SIZE), bool) if m is None else np.asarray(m.convert("L").resize((SIZE, SIZE))) > 127
        for m in dataset["mask"]
    ])
    grid = np.linspace(0.0, 1.0, 101)
    pixel_f1 = brute_force_f1(maps.ravel(), masks.ravel(), grid)
    assert result.pixel_f1 == pytest.approx(pixel_f1.max())
    assert result.pixel_threshold == pytest.approx(grid[np.argmax(pixel_f1)])


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate-data")
    src = write_synthetic_mvtec(root / "src", num_train=6, num_normal=4, num_anomalous=6, size=SIZE, seed=1)
    convert_mvtec(src, root / "parquet", dataset_name="syn")
    return str(root / "parquet")


def test_calibrate_command_updates_the_checkpoint(model, parquet_data, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    before = json.loads((checkpoint / "config.json").read_text())
    assert main(["calibrate", parquet_data, "--model", str(checkpoint), "--split", "train", "--fpr", "0.2", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.split("\nthresholds written")[0])
    after = json.loads((checkpoint / "config.json").read_text())
    assert report["image_method"] == "fpr" and report["num_normal"] == 6
    assert after["image_threshold"] == report["image_threshold"] and after["pixel_threshold"] == report["pixel_threshold"]
    assert {k: v for k, v in after.items() if not k.endswith("_threshold")} == {
        k: v for k, v in before.items() if not k.endswith("_threshold")
    }
    loaded = ZeroShotCLIPModel.from_pretrained(checkpoint)
    assert loaded.config.image_threshold == report["image_threshold"]

    out = tmp_path / "calibrated"
    assert main(["calibrate", parquet_data, "--model", str(checkpoint), "--out", str(out), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.split("\nthresholds written")[0])
    assert (report["image_method"], report["pixel_method"]) == ("f1", "f1")
    assert json.loads((out / "config.json").read_text())["pixel_threshold"] == report["pixel_threshold"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fpr", "1.5"], "--fpr must be within [0, 1)"),
        (["--split", "validation"], "validation"),
    ],
)
def test_calibrate_errors_are_one_line(model, parquet_data, tmp_path, capsys, extra, message):
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["calibrate", parquet_data, "--model", str(tmp_path / "ckpt"), "--quiet", *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("zsad calibrate: error:") and message in err[0]


def test_calibrate_needs_out_for_hub_ids(capsys):
    assert main(["calibrate", "data", "--model", "org/some-model"]) == 2
    assert "--out is needed" in capsys.readouterr().err
