"""Inference API: the `zero-shot-anomaly-detection` pipeline, the image processor round trip and
`post_process_anomaly_detection`, thresholds -> `pred_labels` / `pred_masks` (docs/inference.md)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, pipeline

import zsad
from zsad import AdaCLIPModel, ZSADImageProcessor
from zsad.testing import save_tiny_backbone

TOL = 1e-6


def random_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def reference(model, image: Image.Image, categories=None) -> tuple[float, torch.Tensor]:
    """Score and map of the model's own forward, the map resized to the image size with plain F.interpolate."""
    pixels = ZSADImageProcessor(image_size=model.config.image_size)(image.convert("RGB"))["pixel_values"]
    with torch.no_grad():
        output = model(pixel_values=pixels, categories=categories)
    resized = F.interpolate(output.anomaly_maps[:, None], size=(image.height, image.width), mode="bilinear", align_corners=False)
    return float(output.pred_scores[0]), resized[0, 0]


@pytest.fixture(scope="module")
def checkpoint(tiny_anomalyclip, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("anomalyclip-ckpt")
    tiny_anomalyclip.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def detector(checkpoint):
    return pipeline("zero-shot-anomaly-detection", model=checkpoint)


def check_result(result, model, image: Image.Image, categories=None) -> None:
    score, anomaly_map = reference(model, image, categories)
    assert abs(result["score"] - score) <= TOL
    assert result["predicted_anomaly_map"].shape == (image.height, image.width)
    assert torch.allclose(result["predicted_anomaly_map"], anomaly_map, atol=TOL, rtol=0)
    assert result["anomaly_map"].size == image.size and result["anomaly_map"].mode == "L"
    expected = np.rint(anomaly_map.clamp(0, 1).numpy() * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(result["anomaly_map"]), expected)


def test_import_registers_the_task():
    from transformers.pipelines import PIPELINE_REGISTRY

    assert "zero-shot-anomaly-detection" in PIPELINE_REGISTRY.get_supported_tasks()


@pytest.mark.parametrize("kind", ["path", "pil", "numpy_rgb", "numpy_gray"])
def test_every_input_kind_equals_the_forward(detector, tiny_anomalyclip, tmp_path, kind):
    image = random_image(45, 30, seed=1, mode="L" if kind == "numpy_gray" else "RGB")
    if kind == "path":
        image.save(tmp_path / "part.png")
        given = str(tmp_path / "part.png")
    else:
        given = image if kind == "pil" else np.asarray(image)
    result = detector(given)
    check_result(result, tiny_anomalyclip, image)
    assert result["label"] is None and result["mask"] is None  # the checkpoint has no thresholds


def test_lists_and_batches_keep_order_and_values(detector, tiny_anomalyclip):
    images = [random_image(28 + 7 * i, 60 - 9 * i, seed=10 + i) for i in range(5)]
    one_by_one = detector(images)
    batched = detector(images, batch_size=3)
    assert len(one_by_one) == len(batched) == 5
    for image, single, batch in zip(images, one_by_one, batched):
        check_result(batch, tiny_anomalyclip, image)
        assert abs(single["score"] - batch["score"]) <= TOL
        assert torch.allclose(single["predicted_anomaly_map"], batch["predicted_anomaly_map"], atol=TOL, rtol=0)


def test_thresholds_give_labels_and_masks(tiny_anomalyclip, tmp_path):
    images = [random_image(40, 32, seed=20 + i) for i in range(4)]
    scores = [reference(tiny_anomalyclip, image)[0] for image in images]
    maps = [reference(tiny_anomalyclip, image)[1] for image in images]
    image_threshold = float(np.median(scores))  # two images on each side
    pixel_threshold = float(torch.cat([m.flatten() for m in maps]).median())
    tiny_anomalyclip.config.image_threshold, tiny_anomalyclip.config.pixel_threshold = image_threshold, pixel_threshold
    try:
        tiny_anomalyclip.save_pretrained(tmp_path)
    finally:
        tiny_anomalyclip.config.image_threshold = tiny_anomalyclip.config.pixel_threshold = None
    results = pipeline("zero-shot-anomaly-detection", model=str(tmp_path))(images, batch_size=2)
    labels = [r["label"] for r in results]
    assert labels == ["anomalous" if s >= image_threshold else "normal" for s in scores]
    assert set(labels) == {"normal", "anomalous"}
    for result, anomaly_map in zip(results, maps):
        mask = np.asarray(result["mask"])
        assert result["mask"].size == (40, 32) and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, (anomaly_map >= pixel_threshold).numpy())
    overridden = pipeline("zero-shot-anomaly-detection", model=str(tmp_path))(images[0], image_threshold=2.0)
    assert overridden["label"] == "normal"
    with pytest.raises(TypeError, match="unknown zero-shot-anomaly-detection pipeline argument"):
        pipeline("zero-shot-anomaly-detection", model=str(tmp_path))(images[0], image_treshold=0.5)


def test_forward_adds_pred_labels_and_pred_masks_only_with_thresholds(tiny_anomalyclip):
    pixels = ZSADImageProcessor(image_size=56)([random_image(56, 56, seed=s) for s in range(3)])["pixel_values"]
    with torch.no_grad():
        plain = tiny_anomalyclip(pixel_values=pixels)
        assert plain.pred_labels is None and plain.pred_masks is None
        tiny_anomalyclip.config.image_threshold = float(plain.pred_scores.median())
        tiny_anomalyclip.config.pixel_threshold = 0.5
        try:
            decided = tiny_anomalyclip(pixel_values=pixels)
        finally:
            tiny_anomalyclip.config.image_threshold = tiny_anomalyclip.config.pixel_threshold = None
    expected_labels = [int(s >= float(plain.pred_scores.median())) for s in plain.pred_scores.tolist()]
    assert decided.pred_labels.dtype == torch.long and decided.pred_labels.tolist() == expected_labels
    assert decided.pred_masks.dtype == torch.bool
    assert torch.equal(decided.pred_masks, plain.anomaly_maps >= 0.5)


def test_class_aware_models_take_categories(tmp_path_factory):
    backbone = str(save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip-8"), vision_layers=8, text_layers=4))
    torch.manual_seed(0)
    model = AdaCLIPModel.from_backbone(backbone, image_size=56, class_names=["pcb"])
    with torch.no_grad():  # stand-in for training, so the class prompts change the output
        model.text_prompts.static.normal_(std=0.5)
    model.eval()
    detector = pipeline("zero-shot-anomaly-detection", model=model)
    images = [random_image(50, 40, seed=30 + i) for i in range(3)]
    categories = ["pcb", "candle", "pcb"]  # "candle" is new: the pipeline adds its prompts
    results = detector(images, categories=categories, batch_size=2)
    assert model.config.class_names == ["pcb", "candle"]
    for image, category, result in zip(images, categories, results):
        check_result(result, model, image, categories=[category])
    candle = detector(images[0], categories="candle")
    assert abs(candle["score"] - results[0]["score"]) > 1e-4  # the category reaches the prompts
    with pytest.raises(ValueError, match="one per image"):
        detector(images, categories=["pcb"])


def test_auto_image_processor_round_trip(checkpoint, tiny_anomalyclip):
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    assert type(processor) is ZSADImageProcessor
    assert processor.image_size == tiny_anomalyclip.config.image_size == 56
    image = random_image(33, 47, seed=3)
    direct = ZSADImageProcessor(image_size=56)(image)["pixel_values"]
    assert torch.equal(processor(image)["pixel_values"], direct)
    processor.save_pretrained(checkpoint + "-copy")
    again = AutoImageProcessor.from_pretrained(checkpoint + "-copy", image_size=28)
    assert type(again) is ZSADImageProcessor and again.image_size == 28 and again.image_mean == processor.image_mean


def test_post_process_anomaly_detection_follows_transformers_convention():
    """A list of dicts, one per image (issue 27); target_sizes optional; labels and masks from thresholds."""
    processor = ZSADImageProcessor(image_size=8)
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = zsad.AnomalyDetectionOutput(anomaly_maps=maps, pred_scores=torch.tensor([0.2, 0.7]))
    results = processor.post_process_anomaly_detection(outputs, target_sizes=[(30, 20), (8, 8)])
    assert [sorted(r) for r in results] == [["anomaly_map", "pred_score"]] * 2
    assert [tuple(r["anomaly_map"].shape) for r in results] == [(30, 20), (8, 8)]
    assert torch.equal(results[1]["anomaly_map"], maps[1])  # same size: unchanged
    expected = F.interpolate(maps[:1, None], size=(30, 20), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(results[0]["anomaly_map"], expected)
    assert [r["pred_score"] for r in results] == pytest.approx([0.2, 0.7])
    at_input = processor.post_process_anomaly_detection(outputs)  # no target_sizes: the input size
    assert torch.equal(at_input[0]["anomaly_map"], maps[0])
    decided = processor.post_process_anomaly_detection(outputs, [(30, 20), (8, 8)], image_threshold=0.5, pixel_threshold=0.5)
    assert [r["pred_label"] for r in decided] == [0, 1]
    assert torch.equal(decided[0]["pred_mask"], expected >= 0.5)
    with pytest.raises(ValueError, match="2 anomaly maps but 1 target sizes"):
        processor.post_process_anomaly_detection(outputs, target_sizes=[(4, 4)])


def test_post_process_anomaly_maps_is_deprecated_but_still_works():
    processor = ZSADImageProcessor(image_size=8)
    maps = torch.rand(2, 8, 8)
    with pytest.warns(FutureWarning, match="post_process_anomaly_detection"):
        resized = processor.post_process_anomaly_maps(zsad.AnomalyDetectionOutput(anomaly_maps=maps), [(30, 20), (8, 8)])
    assert [tuple(r.shape) for r in resized] == [(30, 20), (8, 8)] and torch.equal(resized[1], maps[1])


def test_auto_image_processor_with_remote_code_needs_no_import(checkpoint, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    assert json.loads((Path(checkpoint) / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoImageProcessor": "modeling_zsad.ZSADImageProcessor"
    }
    script = (
        "import sys\n"
        "from transformers import AutoImageProcessor\n"
        "assert 'zsad' not in sys.modules\n"
        f"processor = AutoImageProcessor.from_pretrained({checkpoint!r}, trust_remote_code=True)\n"
        "print(type(processor).__name__, processor.image_size)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["ZSADImageProcessor", "56"]
