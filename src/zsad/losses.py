"""Segmentation and classification losses of the ZSAD methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class probabilities (no alpha), mean over pixels.

    Args:
        probabilities: `(B, C, H, W)` class probabilities (softmax already applied).
        target: `(B, H, W)` integer class map (0 = normal, 1 = anomaly).
    The one-hot target is clamped to `[smooth / (C - 1), 1 - smooth]` and `smooth` is added to p_t
    before the log, as in the reference code.
    """
    classes = probabilities.shape[1]
    one_hot = F.one_hot(target.long(), classes).movedim(-1, 1).to(probabilities.dtype)
    one_hot = one_hot.clamp(smooth / (classes - 1), 1.0 - smooth)
    p_t = (one_hot * probabilities).sum(dim=1) + smooth
    return (-(1.0 - p_t).pow(gamma) * p_t.log()).mean()


def dice_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`1 - (2 sum(p m) + 1) / (sum(p) + sum(m) + 1)` per image, then the batch mean. Shapes `(B, H, W)`."""
    prediction = prediction.flatten(1)
    target = target.flatten(1).to(prediction.dtype)
    intersection = (prediction * target).sum(dim=1)
    return (1.0 - (2.0 * intersection + 1.0) / (prediction.sum(dim=1) + target.sum(dim=1) + 1.0)).mean()


def segmentation_loss(probabilities: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """AnomalyCLIP's local loss: Focal(S, M) + Dice(S_a, M) + Dice(S_n, 1 - M) on `(B, 2, H, W)` maps."""
    return (
        focal_loss(probabilities, masks)
        + dice_loss(probabilities[:, 1], masks)
        + dice_loss(probabilities[:, 0], 1.0 - masks)
    )
