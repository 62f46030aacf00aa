"""ONNX export: `export_onnx(model, folder)` (`zsad export --format onnx MODEL OUT`, in `zsad.commands.export`).

The graph maps `pixel_values (batch, 3, S, S)` (the `ZSADImageProcessor` output) to `pred_scores (batch,)`
and `anomaly_maps (batch, S, S)`: the vision pass, the similarities, the upsampling and the Gaussian blur
are inside it; the text features are computed once and baked in as constants; the batch axis is dynamic,
the image size fixed. Models whose text depends on the image or its category cannot be exported
(`ZSADPreTrainedModel.onnx_export_blocker`). Needs the `export` extra (onnx, onnxscript, onnxruntime to run it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

ONNX_NAME = "model.onnx"
EXPORT_CONFIG_NAME = "onnx_config.json"
INPUT_NAMES = ["pixel_values"]
OUTPUT_NAMES = ["pred_scores", "anomaly_maps"]
# Above this many bytes of weights, they go to an external data file (a single ONNX file is limited to 2 GB).
SINGLE_FILE_LIMIT = 1_800_000_000


class ExportError(ValueError):
    """The model cannot be exported (the message says why)."""


class ExportableDetector(nn.Module):
    """`model` with its text features frozen into a buffer: `pixel_values -> (pred_scores, anomaly_maps)`."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("text_features", model.text_features().detach().clone())

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scored = self.model.score_images(pixel_values, text_features=self.text_features)
        return scored.pred_scores, scored.anomaly_maps


def export_onnx(model, folder: str | Path, *, opset_version: int | None = None) -> Path:
    """Export `model` (float32, on the CPU, eval mode) to `<folder>/model.onnx`; returns that path.

    Also writes `preprocessor_config.json` (the image processor) and `onnx_config.json` (input/output
    names, image size, the config's decision thresholds). Raises `ExportError` for models that cannot be
    exported, `ImportError` when onnx / onnxscript are missing.
    """
    import onnx  # noqa: F401  (the exporter needs it; fail early with the package name)
    import onnxscript  # noqa: F401

    model = model.float().cpu().eval()
    reason = model.onnx_export_blocker()
    if reason is not None:
        raise ExportError(f"{type(model).__name__} cannot be exported to ONNX: {reason}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = model.config.image_size
    example = torch.zeros(2, 3, size, size)
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    path = folder / ONNX_NAME
    torch.onnx.export(
        ExportableDetector(model).eval(),
        (example,),
        path,
        dynamo=True,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
        opset_version=opset_version,
        external_data=weight_bytes > SINGLE_FILE_LIMIT,
        verbose=False,
    )
    model.image_processor().save_pretrained(folder)
    metadata = {
        "model_type": model.config.model_type,
        "image_size": size,
        "inputs": {"pixel_values": ["batch", 3, size, size]},
        "outputs": {"pred_scores": ["batch"], "anomaly_maps": ["batch", size, size]},
        "image_threshold": model.config.image_threshold,
        "pixel_threshold": model.config.pixel_threshold,
    }
    (folder / EXPORT_CONFIG_NAME).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path
