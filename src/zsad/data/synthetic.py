"""Procedural textures and defects with exact masks, deterministic by seed.

- `make_texture(kind, size, seed)`: "noise" (Perlin clouds), "stripes", "grid", "dots".
- `add_defect(image, kind, seed) -> (image, mask)`: "perlin" (a Perlin-noise-shaped blend of another
  texture, as in DRAEM), "cutpaste" (a patch of the image pasted elsewhere with a brightness change),
  "scratch" (a thin curved stroke). The mask is exactly the set of changed pixels: every pixel of the
  defect region differs from the input, every pixel outside it is untouched.
- `make_synthetic_dataset(...)`: a `datasets.Dataset` in the anomaly schema (one category per
  texture), and `write_synthetic_mvtec(...)`: the same in MVTec AD layout on disk.

Everything is numpy + PIL, runs in milliseconds at 64-128 px, and the same seed gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import datasets
import numpy as np
from PIL import Image, ImageDraw

from .errors import PathLike
from .schema import ANOMALY, FEATURES, NORMAL, NORMAL_DEFECT_TYPE

TEXTURES: tuple[str, ...] = ("noise", "stripes", "grid", "dots")
DEFECTS: tuple[str, ...] = ("perlin", "cutpaste", "scratch")
_FORCED_DELTA = 48  # shift applied to defect pixels that the defect left unchanged

Size = Union[int, tuple[int, int]]


def _size(size: Size) -> tuple[int, int]:
    """int or (width, height) -> (width, height), checked."""
    width, height = (size, size) if isinstance(size, (int, np.integer)) else size
    if int(width) < 8 or int(height) < 8:
        raise ValueError(f"synthetic images need at least 8x8 pixels, got {width}x{height}")
    return int(width), int(height)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def perlin_noise(
    height: int, width: int, scale: tuple[int, int], rng: np.random.Generator, octaves: int = 1
) -> np.ndarray:
    """Gradient (Perlin) noise, `(height, width)` float64 in about [-1, 1].

    `scale` = number of lattice cells (rows, cols) of the first octave; each further octave doubles the
    frequency and halves the amplitude.
    """
    total = np.zeros((height, width))
    amplitude, norm = 1.0, 0.0
    cells_y, cells_x = max(1, int(scale[0])), max(1, int(scale[1]))
    for _ in range(max(1, octaves)):
        angles = rng.uniform(0.0, 2.0 * math.pi, size=(cells_y + 1, cells_x + 1))
        grad_y, grad_x = np.sin(angles), np.cos(angles)
        ys = (np.arange(height) + 0.5) * cells_y / height
        xs = (np.arange(width) + 0.5) * cells_x / width
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        Y0, X0 = y0[:, None], x0[None, :]

        def corner(dy: int, dx: int) -> np.ndarray:
            gy, gx = grad_y[Y0 + dy, X0 + dx], grad_x[Y0 + dy, X0 + dx]
            return gy * (fy - dy) + gx * (fx - dx)

        def fade(t: np.ndarray) -> np.ndarray:
            return t * t * t * (t * (t * 6 - 15) + 10)

        u, v = fade(fx), fade(fy)
        top = corner(0, 0) * (1 - u) + corner(0, 1) * u
        bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
        total += amplitude * ((top * (1 - v) + bottom * v) * math.sqrt(2))
        norm += amplitude
        amplitude *= 0.5
        cells_y, cells_x = cells_y * 2, cells_x * 2
    return total / norm


def _palette(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    low = rng.uniform(30, 120, size=3)
    high = np.clip(low + rng.uniform(60, 130, size=3), 0, 255)
    return low, high


def make_texture(kind: str = "noise", size: Size = 64, seed: int = 0, style_seed: Optional[int] = None) -> Image.Image:
    """A procedural RGB texture. `style_seed` fixes colours and frequencies (default: `seed`), `seed`
    the per-image variation (phase, noise), so images of one style look like one product."""
    if kind not in TEXTURES:
        raise ValueError(f"unknown texture kind {kind!r}; choose one of {list(TEXTURES)}")
    width, height = _size(size)
    kind_id = TEXTURES.index(kind)
    style = _rng(style_seed if style_seed is not None else seed, kind_id, 1)
    rng = _rng(seed, kind_id, 2)
    low, high = _palette(style)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    grain = perlin_noise(height, width, (max(2, height // 8), max(2, width // 8)), rng) * 0.08
    if kind == "noise":
        cells = int(style.integers(2, 6))
        field = perlin_noise(height, width, (cells, cells), rng, octaves=3)
        value = (field - field.min()) / max(float(field.max() - field.min()), 1e-9)
    elif kind == "stripes":
        angle = style.uniform(0, math.pi)
        periods = style.uniform(4, 9)
        phase = rng.uniform(0, 2 * math.pi)
        coordinate = (x * math.cos(angle) + y * math.sin(angle)) / max(width, height)
        value = 0.5 + 0.5 * np.sin(2 * math.pi * periods * coordinate + phase)
    elif kind == "grid":
        period = max(4, int(min(width, height) / style.integers(4, 8)))
        thickness = max(1, period // int(style.integers(4, 7)))
        offset_y, offset_x = rng.integers(0, period, size=2)
        lines = (((y + offset_y) % period) < thickness) | (((x + offset_x) % period) < thickness)
        value = np.where(lines, 1.0, 0.15)
    else:  # dots
        period = max(5, int(min(width, height) / style.integers(4, 8)))
        radius = period * style.uniform(0.2, 0.35)
        offset_y, offset_x = rng.uniform(0, period, size=2)
        dy = (y + offset_y) % period - period / 2
        dx = (x + offset_x) % period - period / 2
        value = np.clip(1.5 - np.sqrt(dy * dy + dx * dx) / radius, 0.0, 1.0)
    value = np.clip(value + grain, 0.0, 1.0)[..., None]
    pixels = low * (1.0 - value) + high * value
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


# ------------------------------------------------------------------------------------------------ defects


def _as_array(image: Union[Image.Image, np.ndarray]) -> tuple[np.ndarray, str]:
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
            raise ValueError(f"expected a uint8 HxW or HxWx3 array, got {array.dtype} {array.shape}")
        return array.copy(), "L" if array.ndim == 2 else "RGB"
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    mode = "L" if image.mode in ("L", "1", "I;16", "I", "F") else "RGB"
    return np.array(image.convert(mode), dtype=np.uint8), mode


def _perlin_region(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    cells = (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
    field = perlin_noise(height, width, cells, rng, octaves=2)
    fraction = rng.uniform(0.03, 0.15)
    threshold = np.quantile(field, 1.0 - fraction)
    return field > threshold


def _defect_perlin(array: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = array.shape[:2]
    region = _perlin_region(height, width, rng)
    source_kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    source = np.asarray(make_texture(source_kind, (width, height), int(rng.integers(2**31))), dtype=np.float64)
    if array.ndim == 2:
        source = source.mean(axis=-1)
    beta = rng.uniform(0.5, 1.0)
    blended = np.clip(np.rint((1 - beta) * array + beta * source), 0, 255).astype(np.uint8)
    return region, blended


def _defect_cutpaste(array: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = array.shape[:2]
    patch_h = int(rng.integers(max(2, height // 8), max(3, height // 3) + 1))
    patch_w = int(rng.integers(max(2, width // 8), max(3, width // 3) + 1))
    src_y, src_x = int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1))
    dst_y, dst_x = int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1))
    patch = array[src_y : src_y + patch_h, src_x : src_x + patch_w].astype(np.float64)
    if rng.random() < 0.5:
        patch = patch[::-1]  # flip so that a patch pasted near its origin still looks foreign
    factor = rng.choice([rng.uniform(0.6, 0.85), rng.uniform(1.15, 1.4)])
    candidate = array.copy()
    candidate[dst_y : dst_y + patch_h, dst_x : dst_x + patch_w] = np.clip(np.rint(patch * factor), 0, 255)
    region = np.zeros((height, width), dtype=bool)
    region[dst_y : dst_y + patch_h, dst_x : dst_x + patch_w] = True
    return region, candidate


def _defect_scratch(array: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = array.shape[:2]
    canvas = Image.new("L", (width, height), 0)
    points = [(float(rng.uniform(0.2, 0.8) * (width - 1)), float(rng.uniform(0.2, 0.8) * (height - 1)))]
    length = rng.uniform(0.3, 0.7) * max(width, height)
    heading = rng.uniform(0, 2 * math.pi)
    steps = int(rng.integers(3, 7))
    for _ in range(steps):
        heading += rng.normal(0, 0.4)
        x = min(max(points[-1][0] + math.cos(heading) * length / steps, 0), width - 1)
        y = min(max(points[-1][1] + math.sin(heading) * length / steps, 0), height - 1)
        points.append((x, y))
    line_width = int(rng.integers(1, max(2, min(width, height) // 32) + 1))
    ImageDraw.Draw(canvas).line(points, fill=255, width=line_width, joint="curve")
    region = np.asarray(canvas) > 0
    tone = rng.uniform(0, 40) if rng.random() < 0.5 else rng.uniform(215, 255)
    candidate = array.copy()
    candidate[region] = np.uint8(round(tone))
    return region, candidate


_DEFECT_FUNCTIONS = {"perlin": _defect_perlin, "cutpaste": _defect_cutpaste, "scratch": _defect_scratch}


def add_defect(
    image: Union[Image.Image, np.ndarray], kind: Optional[str] = None, seed: int = 0
) -> tuple[Image.Image, Image.Image]:
    """Add one synthetic defect; return `(defective image, mask)`.

    `kind` is one of `DEFECTS` (None: chosen by `seed`). The image keeps its size; L images stay L,
    anything else becomes RGB. The mask is an L image, 255 exactly where the returned image differs
    from the input (in any channel) and 0 elsewhere.
    """
    array, mode = _as_array(image)
    height, width = array.shape[:2]
    if height < 8 or width < 8:
        raise ValueError(f"add_defect needs at least 8x8 pixels, got {width}x{height}")
    rng = _rng(seed, 7919)
    if kind is None:
        kind = DEFECTS[int(rng.integers(len(DEFECTS)))]
    if kind not in _DEFECT_FUNCTIONS:
        raise ValueError(f"unknown defect kind {kind!r}; choose one of {list(DEFECTS)}")
    region, candidate = _DEFECT_FUNCTIONS[kind](array, rng)
    if not region.any():  # cannot happen with the generators above, but keep the contract
        region[height // 2, width // 2] = True
    out = array.copy()
    new_values = candidate[region].astype(np.int16)
    old_values = array[region].astype(np.int16)
    unchanged = new_values == old_values if array.ndim == 2 else (new_values == old_values).all(axis=-1)
    if unchanged.any():
        stuck = old_values[unchanged]
        brightness = stuck if array.ndim == 2 else stuck.mean(axis=-1, keepdims=True)
        shift = np.where(brightness < 128, _FORCED_DELTA, -_FORCED_DELTA)
        new_values[unchanged] = np.clip(stuck + shift, 0, 255)
    out[region] = new_values.astype(np.uint8)
    mask = Image.fromarray(region.astype(np.uint8) * 255, mode="L")
    return Image.fromarray(out, mode=mode), mask


# ------------------------------------------------------------------------------------------------ datasets


def _check_kinds(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    values = [values] if isinstance(values, str) else list(values)
    if not values:
        raise ValueError(f"need at least one {what}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {list(allowed)}")
    return values


def iter_synthetic_samples(
    num_normal: int,
    num_anomalous: int,
    size: Size = 64,
    textures: Sequence[str] = ("noise",),
    defects: Sequence[str] = DEFECTS,
    seed: int = 0,
    base_images: Optional[Sequence[Image.Image]] = None,
    category: Optional[str] = None,
):
    """Yield `(category, defect_type, label, image, mask_or_None, index)` for every synthetic sample.

    Without `base_images`, each texture kind is one category ("texture_<kind>") with `num_normal`
    normal and `num_anomalous` anomalous images. With `base_images` (normal images of your own), there
    is one category (`category`, default "custom"): normals are the base images (cycled), anomalies are
    defects added to them. Defect kinds cycle through `defects`.
    """
    if num_normal < 0 or num_anomalous < 0:
        raise ValueError(f"counts must be >= 0, got num_normal={num_normal}, num_anomalous={num_anomalous}")
    defects = _check_kinds(defects, DEFECTS, "defect kind")
    if base_images is not None:
        if len(base_images) == 0:
            raise ValueError("base_images is empty")
        groups = [(category or "custom", None)]
    else:
        groups = [(category or f"texture_{kind}", kind) for kind in _check_kinds(textures, TEXTURES, "texture")]
    for group_index, (name, kind) in enumerate(groups):
        style_seed = int(_rng(seed, group_index, 11).integers(2**31))

        def base(i: int) -> Image.Image:
            if kind is None:
                return base_images[i % len(base_images)]  # type: ignore[index]
            return make_texture(kind, size, seed=int(_rng(seed, group_index, i, 13).integers(2**31)), style_seed=style_seed)

        for i in range(num_normal):
            yield name, NORMAL_DEFECT_TYPE, NORMAL, base(i), None, i
        for j in range(num_anomalous):
            defect = defects[j % len(defects)]
            clean = base(num_normal + j)
            image, mask = add_defect(clean, defect, seed=int(_rng(seed, group_index, j, 17).integers(2**31)))
            yield name, defect, ANOMALY, image, mask, j


def make_synthetic_dataset(
    num_normal: int = 8,
    num_anomalous: int = 8,
    size: Size = 64,
    textures: Sequence[str] = ("noise",),
    defects: Sequence[str] = DEFECTS,
    seed: int = 0,
    *,
    base_images: Optional[Sequence[Image.Image]] = None,
    category: Optional[str] = None,
    dataset_name: str = "synthetic",
) -> datasets.Dataset:
    """A `datasets.Dataset` in the anomaly schema; see `iter_synthetic_samples` for the content.

    Example: train on `make_synthetic_dataset(16, 16, textures=["grid"])`, test on `textures=["dots"]`.
    """
    columns: dict[str, list] = {name: [] for name in FEATURES}
    for name, defect, label, image, mask, index in iter_synthetic_samples(
        num_normal, num_anomalous, size, textures, defects, seed, base_images, category
    ):
        columns["image"].append(image)
        columns["mask"].append(mask)
        columns["label"].append(label)
        columns["category"].append(name)
        columns["defect_type"].append(defect)
        columns["dataset"].append(dataset_name)
        columns["image_id"].append(f"{name}/test/{defect}/{index:03d}.png")
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def write_synthetic_mvtec(
    root: PathLike,
    num_train: int = 4,
    num_normal: int = 4,
    num_anomalous: int = 6,
    size: Size = 64,
    textures: Sequence[str] = ("noise",),
    defects: Sequence[str] = DEFECTS,
    seed: int = 0,
    image_format: str = "png",
) -> Path:
    """Write synthetic data in MVTec AD layout under `root` (one category per texture); returns `root`.

    `<cat>/train/good/NNN.<ext>` (`num_train`), `<cat>/test/good/` (`num_normal`), `<cat>/test/<defect>/`
    and `<cat>/ground_truth/<defect>/NNN_mask.png`. `image_format` is "png" or "jpg".
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    root = Path(root)
    save_kwargs = {"quality": 95} if image_format == "jpg" else {}
    train = iter_synthetic_samples(num_train, 0, size, textures, defects, seed + 1)
    test = iter_synthetic_samples(num_normal, num_anomalous, size, textures, defects, seed)
    for split, samples in (("train", train), ("test", test)):
        for name, defect, label, image, mask, index in samples:
            folder = root / name / split / defect
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index:03d}.{image_format}", **save_kwargs)
            if mask is not None:
                mask_folder = root / name / "ground_truth" / defect
                mask_folder.mkdir(parents=True, exist_ok=True)
                mask.save(mask_folder / f"{index:03d}_mask.png")
    return root
