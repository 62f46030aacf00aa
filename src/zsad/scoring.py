"""Similarities -> anomaly maps and scores (METHODS.md §2.4): upsampling and Gaussian smoothing on the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


JOINT_SCORE_POOLINGS = ("max", "topk_mean")


def similarity_logits(embeds: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """`cos(embeds, text) / temperature`: `(B, D)` or `(B, N, D)` embeddings against `(C, D)` text shared
    by the batch or `(B, C, D)` per-image text -> `(B, C)` or `(B, N, C)` logits.

    Computed in float32 whatever the model's dtype, so that softmax, maps, blur and losses downstream
    are float32 under bf16/fp16 too (a bf16 cosine / 0.07 would move probabilities by about 1e-2).
    """
    with torch.autocast(embeds.device.type, enabled=False):
        embeds = F.normalize(embeds.float(), dim=-1)
        text = text.float()
        if text.dim() == 2:
            return embeds @ text.t() / temperature
        if embeds.dim() == 2:
            return (embeds.unsqueeze(1) @ text.transpose(1, 2)).squeeze(1) / temperature
        return embeds @ text.transpose(1, 2) / temperature


def pool_anomaly_maps(maps: torch.Tensor, pooling: str = "max", topk_fraction: float = 0.01) -> torch.Tensor:
    """`(B, H, W)` maps -> `(B,)`: the maximum, or the mean of the top `topk_fraction` of the pixels
    (at least one)."""
    flat = maps.flatten(1)
    if pooling == "max":
        return flat.amax(dim=1)
    if pooling == "topk_mean":
        count = max(1, int(round(topk_fraction * flat.shape[1])))
        return flat.topk(count, dim=1).values.mean(dim=1)
    raise ValueError(f"pooling must be one of {JOINT_SCORE_POOLINGS}; got {pooling!r}")


def joint_anomaly_scores(
    global_scores: torch.Tensor,
    maps: torch.Tensor,
    alpha: float = 0.5,
    pooling: str = "max",
    topk_fraction: float = 0.01,
) -> torch.Tensor:
    """HeadCLIP's joint anomaly score (METHODS.md §4.2): `alpha * p_global + (1 - alpha) * pool(map)`."""
    pooled = pool_anomaly_maps(maps, pooling, topk_fraction).to(global_scores.dtype)
    return alpha * global_scores + (1.0 - alpha) * pooled


def upsample_patch_scores(
    scores: torch.Tensor,
    grid_size: tuple[int, int],
    size: tuple[int, int],
    mode: str = "bilinear",
    align_corners: bool = False,
) -> torch.Tensor:
    """`(B, N, C)` per-patch scores (probabilities or logits) -> `(B, C, H, W)` maps at `size`.

    `mode="bilinear"` with `align_corners=False` as AnomalyCLIP/Crane, `align_corners=True` as AdaCLIP,
    `mode="nearest"` as Crane's training maps.
    """
    batch, _, channels = scores.shape
    grid = scores.transpose(1, 2).reshape(batch, channels, *grid_size)
    if mode == "nearest":
        return F.interpolate(grid, size=tuple(size), mode="nearest")
    return F.interpolate(grid, size=tuple(size), mode=mode, align_corners=align_corners)


def anomaly_maps_from_probabilities(pixel_probabilities: Sequence[torch.Tensor], sigma: float) -> torch.Tensor:
    """Mean over layers of `(p_a + 1 - p_n) / 2`, smoothed: `(B, H, W)` in [0, 1].

    The reference code sums the layers; the mean differs by a constant factor (ranking metrics are
    unchanged) and keeps maps in [0, 1]. With one layer both are the same.
    """
    maps = torch.stack([(p[:, 1] + 1 - p[:, 0]) / 2 for p in pixel_probabilities]).mean(0)
    return gaussian_blur(maps, sigma)


def gaussian_kernel(sigma: float, truncate: float = 4.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius `int(truncate * sigma + 0.5)` (scipy.ndimage's kernel)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def _reflect_indices(length: int, radius: int, device) -> torch.Tensor:
    """Indices of a signal padded by `radius` with half-sample symmetric reflection (`d c b a | a b c d`)."""
    index = torch.arange(-radius, length + radius, device=device)
    period = 2 * length
    index = torch.remainder(index, period)
    return torch.where(index >= length, period - 1 - index, index)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian filter of `(B, H, W)` maps on their device.

    Equals `scipy.ndimage.gaussian_filter(m, sigma, mode="reflect", truncate=4.0)` per map (the filter
    used by the reference code), computed in float32 (or the maps' dtype if wider), also under autocast.
    """
    if sigma <= 0:
        return maps
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W); got {tuple(maps.shape)}")
    with torch.autocast(maps.device.type, enabled=False):
        return _separable_blur(maps, sigma, truncate)


def _separable_blur(maps: torch.Tensor, sigma: float, truncate: float) -> torch.Tensor:
    dtype = torch.promote_types(maps.dtype, torch.float32)
    kernel = gaussian_kernel(sigma, truncate, maps.device, dtype)
    radius = (kernel.numel() - 1) // 2
    batch, height, width = maps.shape
    x = maps.to(dtype)
    x = x.index_select(2, _reflect_indices(width, radius, maps.device))
    x = F.conv1d(x.reshape(batch * height, 1, -1), kernel.view(1, 1, -1)).view(batch, height, width)
    x = x.transpose(1, 2).index_select(2, _reflect_indices(height, radius, maps.device))
    x = F.conv1d(x.reshape(batch * width, 1, -1), kernel.view(1, 1, -1)).view(batch, width, height)
    return x.transpose(1, 2).contiguous().to(maps.dtype if maps.dtype.is_floating_point else dtype)

