"""What a zsad forward returns: `AnomalyDetectionOutput`, the decision rule of thresholds, `ScoredImages`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .clip.vision import VisionFeatures

LABELS = ("normal", "anomalous")  # the names of the decisions 0 and 1 (`pred_labels`)


def exceeds(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """The decision rule of every threshold in zsad: anomalous where `values >= threshold`."""
    return values >= threshold


@dataclass
class AnomalyDetectionOutput(ModelOutput):
    """Outputs of every zsad model (names follow anomalib's `pred_score` / `anomaly_map`, batched).

    Args:
        loss: training loss, when `labels` and/or `masks` were given.
        pred_scores: `(B,)` image-level anomaly probability in [0, 1].
        anomaly_maps: `(B, H, W)` pixel-level anomaly probability at the input resolution.
        patch_logits: per feature layer, `(B, N, 2)` normal/anomaly logits of the patch tokens.
        image_logits: `(B, 2)` normal/anomaly logits of the global embedding.
        pred_labels: `(B,)` int64, 1 = anomalous (`pred_scores >= config.image_threshold`); only when the
            threshold is set.
        pred_masks: `(B, H, W)` bool (`anomaly_maps >= config.pixel_threshold`); only when the threshold is set.
    """

    loss: torch.FloatTensor | None = None
    pred_scores: torch.FloatTensor | None = None
    anomaly_maps: torch.FloatTensor | None = None
    patch_logits: tuple[torch.FloatTensor, ...] | None = None
    image_logits: torch.FloatTensor | None = None
    pred_labels: torch.LongTensor | None = None
    pred_masks: torch.BoolTensor | None = None


@dataclass
class ScoredImages:
    """Everything `ZSADPreTrainedModel.score_images` computes on the way to the scores and maps."""

    features: VisionFeatures
    patch_logits: list[torch.Tensor]
    image_logits: torch.Tensor
    map_probabilities: list[torch.Tensor]
    anomaly_maps: torch.Tensor
    pred_scores: torch.Tensor
