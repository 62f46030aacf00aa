"""The `"zero-shot-anomaly-detection"` pipeline: `transformers.pipeline(task, model=...)` for zsad models.

`import zsad` registers it. Per image it returns the image score, a normal/anomalous decision (when the
model's config has `image_threshold`), the anomaly map at the input's original size, as a PIL image and as
a tensor, and the predicted mask (when the config has `pixel_threshold`). See docs/inference.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .clip.processing import ImageInput, load_image, to_rgb
from .few_shot import reference_images
from .modeling_outputs import LABELS, exceeds

TASK = "zero-shot-anomaly-detection"


class ZeroShotAnomalyDetectionPipeline(Pipeline):
    """Anomaly scores, decisions and maps for images (paths, PIL images, `(H, W[, C])` uint8 arrays).

    Call parameters: `categories` (one class name for all images, or one per image; class-aware models
    such as AdaCLIP need it, others ignore it), `batch_size`, and `image_threshold` / `pixel_threshold` to
    override the thresholds in the model's config. Each image gives::

        {"score": float, "label": "normal" | "anomalous" | None,
         "anomaly_map": PIL "L" image (probability x 255) at the original size,
         "predicted_anomaly_map": (height, width) float32 tensor of probabilities at the original size,
         "mask": PIL "L" image (255 = anomalous) or None}
    """

    _load_processor = False
    # None: transformers loads the checkpoint's preprocessor_config.json when there is one (a model object
    # or an older checkpoint has none); otherwise __init__ builds the processor from the model's config.
    _load_image_processor = None
    _load_feature_extractor = False
    _load_tokenizer = False
    # transformers 5 would otherwise look for a video processor, find the checkpoint's `auto_map` (written
    # for trust_remote_code use without zsad) and ask "Do you wish to run the custom code? [y/N]".
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.image_processor is None:
            self.image_processor = self.model.image_processor()

    def __call__(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        categories: str | Sequence[str] | None = None,
        normal_references: str | os.PathLike | Sequence[ImageInput] | None = None,
        class_name: str | None = None,
        **kwargs: Any,
    ):
        """`categories` (one name for all images, or one each) or `class_name` (one name) say what the images
        show; class-aware models (AdaCLIP, ZeroShotCLIP, WinCLIP) prompt with it (`metal_nut` as "metal nut"),
        object-agnostic ones ignore it. `normal_references` (a folder, or a list of images) sets the model's
        few-shot memory before scoring (`model.set_normal_references`; kept for later calls until
        `model.clear_normal_references()`, docs/few_shot.md)."""
        if class_name is not None:
            if categories is not None:
                raise ValueError("pass categories= or class_name=, not both")
            categories = class_name
        if normal_references is not None:
            if isinstance(normal_references, (str, os.PathLike)):
                pixels = reference_images(normal_references, self.image_processor.image_size)
            else:
                pixels = torch.stack([self.image_processor.preprocess_image(image) for image in normal_references])
            shared = categories if isinstance(categories, str) else None
            self.model.set_normal_references(pixels.to(self.model.device, self.model.dtype), shared)
        many = isinstance(inputs, (list, tuple))
        items = list(inputs) if many else [inputs]
        if categories is None or isinstance(categories, str):
            names = [categories] * len(items)
        else:
            names = list(categories)
            if len(names) != len(items):
                raise ValueError(f"categories must be one name, or one per image ({len(items)}); got {len(names)}")
        if getattr(self.model, "class_aware", False) and categories is not None:
            known = list(self.model.config.class_names or [])
            new = [name for name in dict.fromkeys(names) if name not in known]
            if new:
                self.model.set_class_names(known + new)
        wrapped = [{"image": item, "category": name} for item, name in zip(items, names)]
        results = super().__call__(wrapped, **kwargs)
        return results if many else results[0]

    def _sanitize_parameters(
        self, image_threshold: float | None = None, pixel_threshold: float | None = None, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(f"unknown zero-shot-anomaly-detection pipeline argument(s): {', '.join(sorted(kwargs))}")
        postprocess = {}
        if image_threshold is not None:
            postprocess["image_threshold"] = float(image_threshold)
        if pixel_threshold is not None:
            postprocess["pixel_threshold"] = float(pixel_threshold)
        return {}, {}, postprocess

    def preprocess(self, item: dict[str, Any]) -> dict[str, Any]:
        image = to_rgb(load_image(item["image"]))
        pixel_values = self.image_processor(image)["pixel_values"]
        return {"pixel_values": pixel_values, "original_size": (image.height, image.width), "category": item["category"]}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        categories = model_inputs["category"]
        categories = list(categories) if isinstance(categories, list) else [categories]
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        output = self.model(pixel_values=pixel_values, categories=None if all(c is None for c in categories) else categories)
        return {
            "pred_scores": output.pred_scores,
            "anomaly_maps": output.anomaly_maps,
            "original_size": model_inputs["original_size"],
        }

    def postprocess(
        self, model_outputs: dict[str, Any], image_threshold: float | None = None, pixel_threshold: float | None = None
    ) -> dict[str, Any]:
        config = self.model.config
        image_threshold = config.image_threshold if image_threshold is None else image_threshold
        pixel_threshold = config.pixel_threshold if pixel_threshold is None else pixel_threshold
        score = float(model_outputs["pred_scores"].float().reshape(-1)[0])
        size = model_outputs["original_size"]
        maps = model_outputs["anomaly_maps"].reshape(1, *model_outputs["anomaly_maps"].shape[-2:]).cpu()
        anomaly_map = self.image_processor.post_process_anomaly_detection(maps, [size])[0]["anomaly_map"]
        label = None if image_threshold is None else LABELS[int(exceeds(torch.tensor(score), image_threshold))]
        mask = None
        if pixel_threshold is not None:
            mask = Image.fromarray(exceeds(anomaly_map, pixel_threshold).numpy().astype(np.uint8) * 255, mode="L")
        return {
            "score": score,
            "label": label,
            "anomaly_map": Image.fromarray(np.rint(anomaly_map.clamp(0, 1).numpy() * 255).astype(np.uint8), mode="L"),
            "predicted_anomaly_map": anomaly_map,
            "mask": mask,
        }


def register_pipeline() -> None:
    """Register the task with transformers (done by `import zsad`; idempotent)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is not None and registered.get("impl") is ZeroShotAnomalyDetectionPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ZeroShotAnomalyDetectionPipeline, pt_model=AutoModel, type="image")
