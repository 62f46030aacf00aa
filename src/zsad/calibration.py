"""Decision thresholds from data: `calibrate_thresholds` (`zsad calibrate`, `zsad.commands.calibrate`).

Semantics (docs/inference.md, "Thresholds"): an image is anomalous when `pred_score >= image_threshold`,
a pixel when `anomaly_map >= pixel_threshold`.

- Image threshold: with normal *and* anomalous images, the F1-optimal threshold on their scores (exact);
  with normal images only, the (1 - fpr) quantile of their scores: the lowest threshold that at most a
  fraction `fpr` of them reach, so new normal images of the same kind are flagged at a rate of about `fpr`.
- Pixel threshold: with anomalous pixels in the masks, the F1-optimal threshold over the pixels of the
  images with ground truth; otherwise the (1 - fpr) quantile of the normal images' pixel scores. Pixel
  scores are counted in `num_bins` bins over [0, 1] (resolution 1e-4 by default), so memory does not grow
  with the data.

torch, numpy and the metrics are imported when a calibration runs, so that `zsad calibrate --help`
(which shows `DEFAULT_FPR`) imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .file_modes import write_text_atomic

DEFAULT_FPR = 0.01  # target false-positive rate when the data has no anomalies (`zsad calibrate --fpr`)


@dataclass
class Calibration:
    """Thresholds and how they were chosen (`"f1"` or `"fpr"`), with the data they came from."""

    image_threshold: float
    image_method: str
    pixel_threshold: float | None
    pixel_method: str | None
    fpr: float
    num_normal: int
    num_anomalous: int
    num_pixel_images: int
    image_f1: float | None = None
    pixel_f1: float | None = None

    def apply(self, config) -> None:
        """Write the thresholds into a zsad model config."""
        config.image_threshold = self.image_threshold
        config.pixel_threshold = self.pixel_threshold


def calibrate_thresholds(
    model, dataloader: Iterable[dict[str, Any]], *, fpr: float = DEFAULT_FPR, num_bins: int = 10001, show_progress: bool = False
) -> Calibration:
    """Choose `image_threshold` and `pixel_threshold` for `model` on collated batches (`zsad.data.collate_fn`)."""
    import torch

    with torch.inference_mode():
        return _calibrate(model, dataloader, fpr, num_bins, show_progress)


def _calibrate(model, dataloader: Iterable[dict[str, Any]], fpr: float, num_bins: int, show_progress: bool) -> Calibration:
    import numpy as np
    from .progress import progress

    from .metrics import BinnedPixelCounts, binary_clf_curve
    from .metrics.classification import f1_optimal_threshold, fpr_threshold
    from .training import model_inputs

    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be within [0, 1); got {fpr}")
    scores, labels = [], []
    pixels = BinnedPixelCounts(num_bins, (0.0, 1.0))
    num_pixel_images = 0
    model.eval()
    for batch in progress(dataloader, desc="calibrate", unit="batch", disable=not show_progress):
        inputs = model_inputs(batch, with_targets=False)
        output = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(model.device, model.dtype, non_blocking=True)})
        scores.append(output.pred_scores.float().cpu().numpy())
        labels.append(batch["labels"].numpy())
        if output.anomaly_maps is not None:
            has_mask = batch["has_mask"].numpy()
            if has_mask.any():
                maps = output.anomaly_maps.float().cpu().numpy()[has_mask]
                pixels.update(maps, batch["masks"].numpy()[has_mask] > 0.5)
                num_pixel_images += int(has_mask.sum())
    if not scores:
        raise ValueError("no images to calibrate on")
    scores_all, labels_all = np.concatenate(scores).astype(np.float64), np.concatenate(labels).astype(bool)
    num_anomalous = int(labels_all.sum())
    num_normal = labels_all.size - num_anomalous
    if num_normal == 0:
        raise ValueError("calibration needs normal images (all images are labelled anomalous)")

    image_f1 = None
    if num_anomalous:
        fps, tps, thresholds = binary_clf_curve(scores_all, labels_all)
        image_threshold, image_f1 = f1_optimal_threshold(fps, tps, thresholds)
        image_method = "f1"
    else:
        fps, _, thresholds = binary_clf_curve(scores_all, labels_all)
        image_threshold, image_method = fpr_threshold(fps, thresholds, num_normal, fpr), "fpr"

    pixel_threshold = pixel_method = pixel_f1 = None
    if num_pixel_images:
        fps, tps, _ = pixels.curve()
        fps, tps, thresholds = fps[:-1], tps[:-1], pixels.thresholds[::-1]  # drop the -inf end (= t_0 = 0 here)
        if pixels.num_regions:
            pixel_threshold, pixel_f1 = f1_optimal_threshold(fps, tps, thresholds)
            pixel_method = "f1"
        else:
            pixel_threshold, pixel_method = fpr_threshold(fps, thresholds, int(pixels.normal.sum()), fpr), "fpr"
    return Calibration(
        image_threshold=image_threshold,
        image_method=image_method,
        pixel_threshold=pixel_threshold,
        pixel_method=pixel_method,
        fpr=fpr,
        num_normal=num_normal,
        num_anomalous=num_anomalous,
        num_pixel_images=num_pixel_images,
        image_f1=image_f1,
        pixel_f1=pixel_f1,
    )


def calibrate_dataset(
    model,
    source: str,
    *,
    split: str | None = None,
    categories: list[str] | None = None,
    batch_size: int = 8,
    fpr: float = DEFAULT_FPR,
    show_progress: bool = False,
    image_size: int | None = None,
    loading_options: dict | None = None,
    num_workers: int | None = None,
) -> Calibration:
    """`calibrate_thresholds` on anomaly data from anywhere `zsad.data.load_anomaly_dataset` reads (with
    `loading_options`: column, split and label mappings), at `image_size` (default: the model's), decoded
    in `num_workers` DataLoader workers (None: `zsad.data.loader.default_num_workers()`)."""
    from .data import load_anomaly_dataset
    from .data.loader import anomaly_dataloader

    dataset = load_anomaly_dataset(source, split=split, categories=categories, **(loading_options or {}))
    if model.class_aware:
        model.set_class_names(sorted(set(dataset["category"])))
    from .clip.processing import ZSADImageProcessor

    processor = ZSADImageProcessor(image_size=image_size) if image_size else model.image_processor()
    loader = anomaly_dataloader(dataset, processor, batch_size, num_workers=num_workers, device=model.device)
    return calibrate_thresholds(model, loader, fpr=fpr, show_progress=show_progress)


def write_thresholds(checkpoint: str | Path, calibration: Calibration) -> Path:
    """Set the two thresholds in a saved checkpoint's `config.json`, leaving everything else as it is."""
    path = Path(checkpoint) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["image_threshold"] = calibration.image_threshold
    config["pixel_threshold"] = calibration.pixel_threshold
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
