"""Make the pictures of docs/inference.md: a panel with a ground-truth outline, and a screenshot of the HTML
report of `zsad detect` taken by headless Chromium.

    python examples/inference_figures.py --backbone BACKBONE --out docs/images [--chromium chromium]

Offline: the images are synthetic defects (`zsad.data.synthetic`); without `--backbone` a random tiny CLIP is
used, so the heat maps show the layout of the pictures, not detection quality.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zsad import ZeroShotCLIPModel
from zsad.cli import main as zsad_main
from zsad.data.synthetic import add_defect, make_texture
from zsad.modeling_outputs import LABELS
from zsad.testing import save_tiny_backbone
from zsad.visualize import anomaly_panel


def write_images(folder: Path, count: int, size: int) -> list[tuple[Path, object]]:
    """Synthetic textures, every other one with a defect; returns (path, mask or None)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        image = make_texture(("noise", "grid", "dots", "stripes")[index % 4], size, seed=index)
        mask = None
        if index % 2:
            image, mask = add_defect(image, ("perlin", "cutpaste", "scratch")[index % 3], seed=index)
        path = folder / f"part_{index:02d}.png"
        image.save(path)
        written.append((path, mask))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", help="CLIP backbone (default: a random tiny one)")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--chromium", default="chromium", help="headless browser for the report screenshot")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # relative paths in the report's title and captions
        work = Path(".")
        backbone = args.backbone or str(save_tiny_backbone(work / "tiny-clip"))
        model = ZeroShotCLIPModel.from_backbone(backbone, image_size=56).eval()
        model.config.image_threshold = 0.5
        model.save_pretrained(work / "model")
        images = write_images(work / "images", 12, 160)

        path, mask = images[1]
        image = Image.open(path).convert("RGB")
        processor = model.image_processor()
        with torch.no_grad():
            output = model(**processor(image))
        anomaly_map = processor.post_process_anomaly_detection(output, [image.size[::-1]])[0]["anomaly_map"]
        anomaly_panel(image, anomaly_map, score=float(output.pred_scores[0]), label=LABELS[int(output.pred_labels[0])],
                      ground_truth=np.asarray(mask) > 0, title=path.name).save(out / "panel.png")

        report_dir = work / "report"
        assert zsad_main(["detect", "images", "--model", "model", "--out", str(report_dir), "--quiet"]) == 0
        screenshot = out / "report.png"
        subprocess.run(
            [shutil.which(args.chromium) or args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--screenshot={screenshot.resolve()}", "--window-size=1100,760", (report_dir / "report.html").resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )
        Image.open(screenshot).convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(screenshot, optimize=True)  # a small PNG for the docs
        os.chdir(here)
    print(f"wrote {out / 'panel.png'} and {screenshot}")


if __name__ == "__main__":
    main()
