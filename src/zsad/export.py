"""Deployment exports: `export_onnx(model, folder)` and `export_openvino(model, folder)` (`zsad export`).

The graph maps `pixel_values (batch, 3, S, S)` (the `ZSADImageProcessor` output) and two scalar
thresholds to `pred_scores (batch,)`, `anomaly_maps (batch, S, S)`, `pred_labels (batch,)` (int64, 1 =
anomalous) and `pred_masks (batch, S, S)` (bool): the vision pass, the similarities, the upsampling, the
Gaussian blur and the decisions (`>= threshold`, as `AnomalyDetectionOutput`) are inside it. The
thresholds are graph inputs whose defaults are the model's calibrated `image_threshold` /
`pixel_threshold` (ONNX initializers of the same name, which a caller may override per run); an
uncalibrated threshold is a required input.

Text that is the same for every image is computed once and baked in as a constant; text that depends
on the image (AdaCLIP's dynamic prompts, Crane's conditioned prompts, DA-CLIP's routed deep text tokens)
puts the text tower into the graph. A class-aware model is exported for one category (`class_name`).
The batch axis is dynamic, the image size fixed. `dtype="float16"` runs the towers in half precision
behind float32 inputs and outputs. Needs the `export` extra (onnx, onnxscript, onnxruntime; openvino).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers.utils import IMAGE_PROCESSOR_NAME

from .modeling_outputs import exceeds

ONNX_NAME = "model.onnx"
OPENVINO_NAME = "openvino_model.xml"
EXPORT_CONFIG_NAMES = {"onnx": "onnx_config.json", "openvino": "openvino_config.json"}
INPUT_NAMES = ["pixel_values", "image_threshold", "pixel_threshold"]
OUTPUT_NAMES = ["pred_scores", "anomaly_maps", "pred_labels", "pred_masks"]
DTYPES = {"float32": torch.float32, "float16": torch.float16}
# Above this many bytes of weights, they go to an external data file (a single ONNX file is limited to 2 GB).
SINGLE_FILE_LIMIT = 1_800_000_000


class ExportError(ValueError):
    """The model cannot be exported as asked (the message says why)."""


class ExportableDetector(nn.Module):
    """`model` as `(pixel_values, image_threshold, pixel_threshold) -> (scores, maps, labels, masks)`, with
    its text frozen into a buffer when it does not depend on the image."""

    def __init__(self, model, class_name: str | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.class_name = class_name
        self.dtype = dtype
        with torch.no_grad():
            text = model.constant_text_features(class_name)
        self.register_buffer("text_features", None if text is None else text.detach().float().clone())

    def forward(
        self, pixel_values: torch.Tensor, image_threshold: torch.Tensor, pixel_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        scored = self.model.score_images(
            pixel_values.to(self.dtype), categories=self.class_name, text_features=self.text_features
        )
        scores, maps = scored.pred_scores.float(), scored.anomaly_maps.float()
        return scores, maps, exceeds(scores, image_threshold).long(), exceeds(maps, pixel_threshold)


def _prepared(model, dtype: torch.dtype, class_name: str | None):
    """`model` in eval mode on the CPU in `dtype`, with prompts for `class_name`; a copy when it must be
    moved, cast or given a new class (the caller's model is left as it was)."""
    if class_name is not None and not model.class_aware:
        raise ExportError(f"{type(model).__name__} is object-agnostic: a class name does not apply (leave it out)")
    new_class = class_name is not None and class_name not in (getattr(model.config, "class_names", None) or [])
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != dtype or new_class:
        model = copy.deepcopy(model).to(device="cpu", dtype=dtype)
    if new_class:
        model.set_class_names([class_name])
    return model.eval()


def _set_threshold_defaults(path: Path, defaults: dict[str, float | None]) -> None:
    """Give the threshold inputs their calibrated values as defaults: an initializer of the same name as a
    graph input is that input's default (ONNX IR >= 4); onnxruntime lets a caller override it."""
    import onnx
    from onnx import numpy_helper
    import numpy as np

    graph_model = onnx.load(str(path), load_external_data=False)
    for name, value in defaults.items():
        if value is not None:
            graph_model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    onnx.save(graph_model, str(path))


def export_onnx(
    model,
    folder: str | Path,
    *,
    class_name: str | None = None,
    dtype: str = "float32",
    opset_version: int | None = None,
    thresholds_as_defaults: bool = True,
) -> Path:
    """Export `model` (eval mode, on the CPU) to `<folder>/model.onnx`; returns that path.

    Also writes `preprocessor_config.json` (the image processor) and `onnx_config.json` (inputs and
    outputs, image size, dtype, class name, the thresholds). Raises `ExportError` for an export that
    cannot be made as asked, `ImportError` when onnx / onnxscript are missing.
    """
    import onnx  # noqa: F401  (the exporter needs it; fail early with the package name)
    import onnxscript  # noqa: F401

    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    model = _prepared(model, DTYPES[dtype], class_name)
    detector = ExportableDetector(model, class_name, DTYPES[dtype]).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = model.config.image_size
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    path = folder / ONNX_NAME
    example = (torch.zeros(2, 3, size, size), torch.tensor(0.5), torch.tensor(0.5))
    with torch.no_grad():
        try:  # an eager run first: a model that cannot run as asked fails with its own message
            detector(*example)
        except ValueError as error:
            raise ExportError(f"{type(model).__name__} cannot be exported as asked: {error}") from error
        torch.onnx.export(
            detector,
            example,
            path,
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}, "image_threshold": None, "pixel_threshold": None},
            opset_version=opset_version,
            external_data=weight_bytes > SINGLE_FILE_LIMIT,
            verbose=False,
        )
    thresholds = {"image_threshold": model.config.image_threshold, "pixel_threshold": model.config.pixel_threshold}
    if thresholds_as_defaults:
        _set_threshold_defaults(path, thresholds)
    model.image_processor().save_pretrained(folder)
    metadata = {
        "format": "onnx",
        "model_type": model.config.model_type,
        "image_size": size,
        "dtype": dtype,
        "class_name": class_name,
        "text_in_graph": detector.text_features is None,
        "inputs": {"pixel_values": ["batch", 3, size, size], "image_threshold": [], "pixel_threshold": []},
        "outputs": {
            "pred_scores": ["batch"],
            "anomaly_maps": ["batch", size, size],
            "pred_labels": ["batch"],
            "pred_masks": ["batch", size, size],
        },
        **thresholds,
    }
    _write_metadata(folder, metadata)
    return path


def export_openvino(
    model, folder: str | Path, *, class_name: str | None = None, dtype: str = "float32", opset_version: int | None = None
) -> Path:
    """Export `model` to an OpenVINO IR (`<folder>/openvino_model.xml` + `.bin`), converted from its ONNX
    graph; returns the `.xml` path. OpenVINO reads an ONNX input that has a default as a constant, so
    the IR's thresholds are plain inputs (the calibrated values are in `openvino_config.json`)."""
    import openvino as ov

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="zsad-openvino-") as scratch:
        onnx_path = export_onnx(model, scratch, class_name=class_name, dtype=dtype, opset_version=opset_version,
                                thresholds_as_defaults=False)
        converted = ov.convert_model(str(onnx_path))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / OPENVINO_NAME
        # compress_to_fp16=False: the IR keeps the precision asked for (fp16 weights only with dtype="float16").
        ov.save_model(converted, str(path), compress_to_fp16=False)
        # The ONNX export's processor settings and metadata, as this folder's.
        shutil.copy(Path(scratch) / IMAGE_PROCESSOR_NAME, folder / IMAGE_PROCESSOR_NAME)
        metadata = json.loads((Path(scratch) / EXPORT_CONFIG_NAMES["onnx"]).read_text(encoding="utf-8"))
    _write_metadata(folder, {**metadata, "format": "openvino"})
    return path


def _write_metadata(folder: Path, metadata: dict) -> None:
    path = folder / EXPORT_CONFIG_NAMES[metadata["format"]]
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
