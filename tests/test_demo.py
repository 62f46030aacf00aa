"""`zsad.demo` without a browser: what the app shows for an image, and the Space's app.py building it
(the browser test is tests/test_browser.py)."""

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zsad import AnomalyCLIPModel
from zsad.cli import main
from zsad.demo import AnomalyDemo

ROOT = Path(__file__).resolve().parents[1]


def test_analysis_mask_and_download(tiny_backbone, tmp_path):
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    image = Image.open(ROOT / "examples" / "images" / "grid_defect.png").convert("RGB").resize((40, 30))
    demo = AnomalyDemo(model)
    analysis = demo.analyse(image)
    # Independently: the processor's input, the model's map, bilinear resize to the image's (H, W).
    pixels = torch.from_numpy(np.asarray(image.resize((28, 28), Image.Resampling.BICUBIC), dtype=np.float32) / 255)
    mean = torch.tensor(demo.processor.image_mean)[:, None, None]
    std = torch.tensor(demo.processor.image_std)[:, None, None]
    with torch.no_grad():
        out = model(pixel_values=((pixels.permute(2, 0, 1) - mean) / std)[None])
    expected = F.interpolate(out.anomaly_maps[None], size=(30, 40), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert analysis.anomaly_map.shape == (30, 40)
    assert np.abs(analysis.anomaly_map - expected).max() < 1e-4
    assert analysis.score == pytest.approx(float(out.pred_scores[0]), abs=1e-5)
    assert analysis.label.startswith("no decision")  # uncalibrated
    model.config.image_threshold = analysis.score
    assert demo.analyse(image).label == "anomalous"

    threshold = float(np.median(analysis.anomaly_map))
    mask = np.asarray(demo.mask(analysis, threshold))
    assert mask.shape == (30, 40) and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask == 255, analysis.anomaly_map >= threshold)
    assert demo.overlay(analysis, threshold).size == (40, 30)
    saved = demo.save_map(analysis, tmp_path)
    assert np.array_equal(np.load(saved), analysis.anomaly_map)


def test_space_app_builds_the_demo(tiny_backbone, tmp_path, monkeypatch):
    gradio = pytest.importorskip("gradio", reason="the demo needs the demo extra (pip install 'zsad[demo]')")
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28)
    model.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setenv("ZSAD_MODEL", str(tmp_path / "ckpt"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    space = runpy.run_path(str(ROOT / "examples" / "space" / "app.py"), run_name="space")  # not __main__: no launch
    assert isinstance(space["demo"], gradio.Blocks) and len(space["EXAMPLES"]) == 2
    assert isinstance(space["model"], AnomalyCLIPModel)


def test_demo_command_refuses_bad_input_before_loading(tmp_path, capsys):
    assert main(["demo", "--examples", str(tmp_path / "missing.png")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--examples: no such file" in err[0]
    assert main(["demo", "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
