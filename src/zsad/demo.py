"""The web demo a model repository on the Hub would have (`zsad demo`, `examples/space/app.py`).

`AnomalyDemo` does the work without any UI (score an image, draw the heat map, threshold the map), so it
is usable and testable on its own; `build_demo` wraps it in a Gradio app: an image (upload or an
example) -> the score, the decision, the heat-map overlay, the mask at a threshold slider that redraws it
without scoring again, and the map as a `.npy` download. Needs the `demo` extra (gradio).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .clip.processing import ZSADImageProcessor, to_rgb
from .visualize import draw_contour, overlay_anomaly_map

# Decision thresholds of an uncalibrated model: the slider starts here (maps are probabilities in [0, 1]).
UNCALIBRATED_PIXEL_THRESHOLD = 0.5


@dataclass
class Analysis:
    """One scored image: the anomaly map at the image's own size, the score and the decision."""

    image: Image.Image
    anomaly_map: np.ndarray
    score: float
    label: str


class AnomalyDemo:
    """Scores single images with `model` and renders what the demo shows."""

    def __init__(self, model, image_size: int | None = None, class_name: str | None = None) -> None:
        self.model = model.eval()
        self.processor = ZSADImageProcessor(image_size=image_size or model.config.image_size)
        self.class_name = class_name
        if class_name is not None:
            model.set_class_names([class_name])

    @property
    def pixel_threshold(self) -> float:
        threshold = self.model.config.pixel_threshold
        return UNCALIBRATED_PIXEL_THRESHOLD if threshold is None else float(threshold)

    @torch.no_grad()
    def analyse(self, image: Image.Image) -> Analysis:
        image = to_rgb(image, name="the uploaded image")
        pixels = self.processor(image)["pixel_values"].to(self.model.device, self.model.dtype)
        outputs = self.model(pixel_values=pixels, categories=self.class_name)
        result = self.processor.post_process_anomaly_detection(outputs, target_sizes=[image.size[::-1]])[0]
        threshold = self.model.config.image_threshold
        if threshold is None:
            label = "no decision (the model has no calibrated image threshold: zsad calibrate)"
        else:
            label = "anomalous" if result["pred_score"] >= threshold else "normal"
        return Analysis(image, np.asarray(result["anomaly_map"], dtype=np.float32), result["pred_score"], label)

    @staticmethod
    def overlay(analysis: Analysis, threshold: float) -> Image.Image:
        """The heat map over the image, with the outline of the mask at `threshold`."""
        return draw_contour(overlay_anomaly_map(analysis.image, analysis.anomaly_map), analysis.anomaly_map >= threshold)

    @staticmethod
    def mask(analysis: Analysis, threshold: float) -> Image.Image:
        """The binary mask `anomaly_map >= threshold` (white = anomalous), at the image's size."""
        return Image.fromarray((analysis.anomaly_map >= threshold).astype(np.uint8) * 255)

    @staticmethod
    def save_map(analysis: Analysis, folder: str | Path) -> Path:
        """The anomaly map as `anomaly_map.npy` (float32, the image's height x width) in a new folder under `folder`."""
        path = Path(tempfile.mkdtemp(dir=folder)) / "anomaly_map.npy"
        np.save(path, analysis.anomaly_map)
        return path


def build_demo(model, *, title: str = "zsad", examples: Sequence[str] = (), image_size: int | None = None,
               class_name: str | None = None):
    """A `gradio.Blocks` app around `AnomalyDemo` (launch it with `.launch()`)."""
    import gradio as gr

    demo = AnomalyDemo(model, image_size=image_size, class_name=class_name)
    downloads = tempfile.mkdtemp(prefix="zsad-demo-")

    def analyse(image, threshold):
        if image is None:
            return None, "", None, None, None, None
        analysis = demo.analyse(image)
        return (round(analysis.score, 4), analysis.label, demo.overlay(analysis, threshold), demo.mask(analysis, threshold),
                str(demo.save_map(analysis, downloads)), analysis)

    def redraw(analysis, threshold):
        if analysis is None:
            return None, None
        return demo.overlay(analysis, threshold), demo.mask(analysis, threshold)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nUpload an image (or pick an example): the anomaly score, the heat map and the mask "
                    "at the pixel threshold, which the slider moves without scoring again.")
        state = gr.State(None)
        with gr.Row():
            image = gr.Image(type="pil", label="image", elem_id="zsad-input", sources=["upload"])
            with gr.Column():
                score = gr.Number(label="anomaly score", elem_id="zsad-score", interactive=False)
                decision = gr.Textbox(label="decision", elem_id="zsad-decision", interactive=False)
                threshold = gr.Slider(0.0, 1.0, value=demo.pixel_threshold, step=0.001, label="pixel threshold",
                                      elem_id="zsad-threshold")
                download = gr.File(label="anomaly map (.npy)", elem_id="zsad-download")
        with gr.Row():
            overlay = gr.Image(type="pil", label="heat map", elem_id="zsad-overlay", format="png", interactive=False)
            mask = gr.Image(type="pil", label="mask at the threshold", elem_id="zsad-mask", format="png", interactive=False)
        if examples:
            gr.Examples(list(examples), inputs=image)
        image.change(analyse, [image, threshold], [score, decision, overlay, mask, download, state])
        threshold.change(redraw, [state, threshold], [overlay, mask])
    return app
