"""Heat-map overlays of anomaly maps on the original images (PIL + numpy only)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Anchor colours of a perceptually ordered blue -> cyan -> yellow -> red ramp ("jet"-like, without matplotlib).
_RAMP = np.array(
    [[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]
)


def colorize(values: np.ndarray) -> np.ndarray:
    """`(H, W)` values in [0, 1] -> `(H, W, 3)` uint8 colours."""
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(values).astype(int).clip(0, len(_RAMP) - 2)
    frac = (values - low)[..., None]
    colours = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return np.rint(colours * 255).astype(np.uint8)


def overlay_anomaly_map(
    image: Image.Image,
    anomaly_map: torch.Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> Image.Image:
    """Blend the colour-coded `anomaly_map` over `image` at the image's own resolution.

    `value_range` maps scores to colours (default: probabilities in [0, 1], comparable across images);
    `None` stretches each map to its own min..max (shows structure, not absolute level).
    """
    values = anomaly_map.detach().float().cpu().numpy() if isinstance(anomaly_map, torch.Tensor) else np.asarray(anomaly_map, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"anomaly_map must be (H, W); got shape {values.shape}")
    low, high = value_range if value_range is not None else (float(values.min()), float(values.max()))
    scaled = (values - low) / max(high - low, 1e-12)
    resized = np.asarray(Image.fromarray(scaled.astype(np.float32), mode="F").resize(image.size, Image.Resampling.BILINEAR))
    heat = Image.fromarray(colorize(resized))
    return Image.blend(image.convert("RGB"), heat, alpha)
