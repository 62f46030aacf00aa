"""Segmentation and classification losses of the ZSAD methods (METHODS.md §2.5)."""

from __future__ import annotations

import torch


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Two-class focal loss on class probabilities (no alpha), mean over pixels.

    Args:
        probabilities: `(B, 2, H, W)` [normal, anomaly] probabilities (softmax already applied).
        target: `(B, H, W)` anomaly target in [0, 1] (1 = anomaly).
    The target distribution `[1 - t, t]` is clamped to `[smooth, 1 - smooth]` and `smooth` is added to
    p_t before the log, as in the reference code. For binary targets this is the reference's one-hot;
    a fractional target is used as is, never truncated to a class index.
    """
    if probabilities.shape[1] != 2:
        raise ValueError(f"focal_loss expects (B, 2, H, W) [normal, anomaly] probabilities; got {tuple(probabilities.shape)}")
    target = target.to(probabilities.dtype)
    distribution = torch.stack([1.0 - target, target], dim=1).clamp(smooth, 1.0 - smooth)
    p_t = (distribution * probabilities).sum(dim=1) + smooth
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
