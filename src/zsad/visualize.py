"""Pictures of anomaly maps (PIL + numpy only): overlays, colour bars and the panels `zsad detect` and
`zsad evaluate` write.

Map normalisation is an explicit choice (`MAP_SCALES`, docs/inference.md):

- `absolute`: colours are probabilities, 0 -> blue, 1 -> red; comparable across images and runs (default);
- `image`: each map is stretched from its own minimum to its maximum (shows structure, hides the level);
- `run`: one range for all maps shown together (min..max over them); comparable within the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

if TYPE_CHECKING:
    import torch

MapLike = Union["torch.Tensor", np.ndarray]  # torch is not imported here: `zsad --help` stays fast

MAP_SCALES = ("absolute", "image", "run")

# Anchor colours of a perceptually ordered blue -> cyan -> yellow -> red ramp ("jet"-like, without matplotlib).
_RAMP = np.array(
    [[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]
)
CONTOUR_COLOUR = (0, 255, 0)  # ground-truth outline
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_LABEL_COLOURS = {"anomalous": (200, 30, 30), "normal": (30, 130, 60)}


def colorize(values: np.ndarray) -> np.ndarray:
    """`(H, W)` values in [0, 1] -> `(H, W, 3)` uint8 colours."""
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(values).astype(int).clip(0, len(_RAMP) - 2)
    frac = (values - low)[..., None]
    colours = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return np.rint(colours * 255).astype(np.uint8)


def _as_array(anomaly_map: MapLike) -> np.ndarray:
    if hasattr(anomaly_map, "detach"):  # a torch tensor
        values = anomaly_map.detach().float().cpu().numpy()
    else:
        values = np.asarray(anomaly_map, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"anomaly_map must be (H, W); got shape {values.shape}")
    return values


def map_value_ranges(maps: Sequence[MapLike], scale: str = "absolute") -> list[tuple[float, float]]:
    """The colour range of each map under `scale` (one of `MAP_SCALES`)."""
    if scale not in MAP_SCALES:
        raise ValueError(f"scale must be one of {MAP_SCALES}; got {scale!r}")
    arrays = [_as_array(m) for m in maps]
    if scale == "absolute":
        return [(0.0, 1.0)] * len(arrays)
    if scale == "image":
        return [(float(a.min()), float(a.max())) for a in arrays]
    if not arrays:
        return []
    shared = (min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays))
    return [shared] * len(arrays)


# Panels of smaller images are enlarged to this long side, so that a 56 px input still gives a readable picture.
MIN_PANEL_SIDE = 256


def overlay_anomaly_map(
    image: Image.Image,
    anomaly_map: MapLike,
    *,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> Image.Image:
    """Blend the colour-coded `anomaly_map` over `image` at the image's own resolution.

    `value_range` maps scores to colours (default: probabilities in [0, 1], comparable across images);
    `None` stretches the map to its own min..max (the `image` scale).
    """
    values = _as_array(anomaly_map)
    low, high = value_range if value_range is not None else (float(values.min()), float(values.max()))
    scaled = (values - low) / max(high - low, 1e-12)
    resized = np.asarray(Image.fromarray(scaled.astype(np.float32), mode="F").resize(image.size, Image.Resampling.BILINEAR))
    heat = Image.fromarray(colorize(resized))
    return Image.blend(image.convert("RGB"), heat, alpha)


def draw_contour(image: Image.Image, mask: MapLike, colour: tuple[int, int, int] = CONTOUR_COLOUR) -> Image.Image:
    """`image` with the outline of the binary `mask` (any size; resized to the image) drawn in `colour`."""
    values = _as_array(mask) > 0.5
    region = Image.fromarray(values.astype(np.uint8) * 255, mode="L").resize(image.size, Image.Resampling.NEAREST)
    width = max(1, round(max(image.size) / 256))
    inner = region.filter(ImageFilter.MinFilter(2 * width + 1))
    outline = np.asarray(region) > np.asarray(inner)
    out = np.array(image.convert("RGB"))
    out[outline] = colour
    return Image.fromarray(out)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def colour_bar(height: int, value_range: tuple[float, float], width: int = 16) -> Image.Image:
    """A vertical colour bar (high values on top) with its range and midpoint written beside it."""
    font = _font(max(10, height // 22))
    low, high = value_range
    labels = [f"{v:.3g}" for v in (high, (low + high) / 2, low)]
    text_width = max(int(font.getlength(text)) for text in labels) + 6
    bar = Image.new("RGB", (width + text_width, height), _BACKGROUND)
    ramp = colorize(np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1))
    bar.paste(Image.fromarray(ramp), (0, 0))
    draw = ImageDraw.Draw(bar)
    ascent = font.getbbox("0")[3]
    for text, y in zip(labels, (0, height // 2 - ascent // 2, height - ascent - 2)):
        draw.text((width + 4, max(0, y)), text, fill=_TEXT, font=font)
    return bar


def anomaly_panel(
    image: Image.Image,
    anomaly_map: MapLike,
    *,
    score: float | None = None,
    label: str | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    ground_truth: MapLike | None = None,
    title: str | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """The original image beside its heat-map overlay and a colour bar, under a line with the title, the
    score and the decision; the ground-truth outline (green) on the overlay when `ground_truth` is given.
    An image smaller than `MIN_PANEL_SIDE` on its long side is enlarged to it (bicubic) so that the panel
    stays readable, and the panel is as wide as its header line."""
    rgb = image.convert("RGB")
    if max(rgb.size) < MIN_PANEL_SIDE:
        factor = MIN_PANEL_SIDE / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))), Image.Resampling.BICUBIC)
    overlay = overlay_anomaly_map(rgb, anomaly_map, alpha=alpha, value_range=value_range)
    if ground_truth is not None:
        overlay = draw_contour(overlay, ground_truth)
    gap = max(4, rgb.width // 40)
    bar = colour_bar(rgb.height, value_range)
    font = _font(max(12, min(rgb.height // 14, 28)))
    header = font.getbbox("Ag")[3] + 2 * gap
    texts = [(f"{title}   " if title else "", _TEXT), (f"score {score:.4f}   " if score is not None else "", _TEXT),
             (label or "", _LABEL_COLOURS.get(label or "", _TEXT))]
    width = max(2 * rgb.width + bar.width + 3 * gap, sum(int(font.getlength(text)) for text, _ in texts) + gap)
    panel = Image.new("RGB", (width, rgb.height + header), _BACKGROUND)
    panel.paste(rgb, (0, header))
    panel.paste(overlay, (rgb.width + gap, header))
    panel.paste(bar, (2 * rgb.width + 2 * gap, header))
    draw = ImageDraw.Draw(panel)
    x = 0
    for text, colour in texts:
        if text:
            draw.text((x, gap), text, fill=colour, font=font)
            x += int(font.getlength(text))
    return panel
