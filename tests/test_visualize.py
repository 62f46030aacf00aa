"""Pictures: map scales, panels (original | overlay | colour bar), ground-truth outlines, and the HTML
report of `zsad detect` (sorted by score, every link resolving to a file, labels with a threshold)."""

import csv
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from zsad import ZeroShotCLIPModel
from zsad.cli import main
from zsad.visualize import anomaly_panel, colorize, draw_contour, map_value_ranges, overlay_anomaly_map


def test_map_scales():
    maps = [torch.tensor([[0.2, 0.4], [0.3, 0.25]]), np.array([[0.6, 0.7], [0.65, 0.9]])]
    assert map_value_ranges(maps, "absolute") == [(0.0, 1.0), (0.0, 1.0)]
    assert np.allclose(map_value_ranges(maps, "image"), [(0.2, 0.4), (0.6, 0.9)])
    assert np.allclose(map_value_ranges(maps, "run"), [(0.2, 0.9), (0.2, 0.9)])
    with pytest.raises(ValueError, match="scale must be one of"):
        map_value_ranges(maps, "global")


def test_panel_shows_the_image_the_overlay_and_a_colour_bar():
    """An image of at least MIN_PANEL_SIDE (256) is shown unchanged (smaller ones are enlarged: test_hardening)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8))
    anomaly_map = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    panel = np.asarray(anomaly_panel(image, anomaly_map, score=0.8765, label="anomalous", title="x.png"))
    header = panel.shape[0] - 260
    assert header > 0 and panel.shape[1] > 2 * 300
    assert np.array_equal(panel[header:, :300], np.asarray(image))  # the original, unchanged
    overlay = np.asarray(overlay_anomaly_map(image, anomaly_map))
    start = next(x for x in range(300, panel.shape[1]) if np.array_equal(panel[header:, x], overlay[:, 0]))
    assert np.array_equal(panel[header:, start:start + 300], overlay)
    bar = panel[header:, start + 300 + 1:]
    bar_column = bar[:, np.argmax((bar != 255).any(axis=(0, 2)))]
    assert np.array_equal(bar_column[0], colorize(np.array([[1.0]]))[0, 0])  # high values on top
    assert np.array_equal(bar_column[-1], colorize(np.array([[0.0]]))[0, 0])
    assert (panel[:header] != 255).any()  # the title / score / label line


def test_contour_is_the_mask_boundary():
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:24] = True
    green = np.all(np.asarray(draw_contour(image, mask)) == (0, 255, 0), axis=-1)
    boundary = mask & ~ndimage.binary_erosion(mask)
    assert np.array_equal(green, boundary)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images, self.captions = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.links.append(unquote(attrs["href"]))
        if tag == "img":
            self.images.append(unquote(attrs["src"]))

    def handle_data(self, data):
        if re.fullmatch(r"\d+\. .+", data.strip()):
            self.captions.append(data.strip().split(". ", 1)[1])


@pytest.mark.parametrize("scale", ["absolute", "run"])
def test_detect_writes_an_html_report_sorted_by_score(tiny_backbone, tmp_path, scale):
    rng = np.random.default_rng(1)
    folder = tmp_path / "images with spaces"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (30 + 4 * i, 36, 3), dtype=np.uint8)).save(folder / f"part #{i}.png")
    checkpoint = tmp_path / "ckpt"
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28)
    model.config.image_threshold = 0.5
    model.save_pretrained(checkpoint)
    out = tmp_path / "out"
    assert main(["detect", str(folder), "--model", str(checkpoint), "--out", str(out), "--map-scale", scale, "--quiet"]) == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == ["anomalous" if float(r["score"]) >= 0.5 else "normal" for r in rows]
    page = (out / "report.html").read_text()
    parser = _Links()
    parser.feed(page)
    ranked = [Path(r["image"]).name for r in sorted(rows, key=lambda r: -float(r["score"]))]
    assert parser.captions == ranked
    assert len(parser.links) == len(parser.images) == 5
    for link in parser.links + parser.images:  # relative links that resolve without a server
        assert not link.startswith(("/", "http")) and (out / link).is_file()
    assert {Path(link).name for link in parser.links} == {Path(r["overlay"]).name for r in rows}
    assert "<script" not in page


def test_evaluate_heat_maps_outline_the_ground_truth(tiny_backbone, tmp_path):
    from zsad.data import convert_mvtec
    from zsad.data.synthetic import write_synthetic_mvtec

    src = write_synthetic_mvtec(tmp_path / "src", num_train=1, num_normal=1, num_anomalous=2, size=28, seed=4)
    convert_mvtec(src, tmp_path / "data", dataset_name="syn")
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "data"), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", "28",
                 "--heatmaps-per-category", "3", "--out", str(out)]) == 0
    panels = sorted((out / "data" / "heatmaps" / "texture_noise").iterdir())
    assert len(panels) == 3
    for panel in panels:
        green = np.all(np.asarray(Image.open(panel).convert("RGB")) == (0, 255, 0), axis=-1).any()
        assert green == panel.name.startswith("anomaly_"), panel.name  # outlines only where there is a defect
