"""Image and mask preprocessing for CLIP-based anomaly detection, without torchvision.

Images are resized to a square with bicubic interpolation (the aspect ratio is *not* kept, as in the
reference code) and normalised with the OpenAI CLIP mean/std. Masks follow the same resize (bilinear,
as the reference code's default) and are binarised at 0.5.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs

from ..errors import ZSADWarning

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# PIL modes holding more than 8 bits per pixel; their full range is mapped onto 0..255.
_WIDE_INTEGER_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


class ImageLoadError(ValueError):
    """An image or mask file could not be read; the message names the file."""


def load_image(source: ImageInput, *, max_side: int | None = None) -> Image.Image:
    """Open `source` (path, PIL image or HxW[xC] uint8 array) fully into memory, upright.

    Files are turned to their display orientation (EXIF `Orientation`, as phone cameras write it).
    With `max_side`, a JPEG is decoded at the smallest reduced scale (1/2, 1/4, 1/8) that still covers
    `max_side`, so huge photos never reach memory at full size. Raises `ImageLoadError` naming the file
    when it is missing, truncated or not an image.
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    path = os.fspath(source)
    try:
        with Image.open(path) as image:
            if max_side is not None and image.format == "JPEG":
                image.draft(image.mode, (max_side, max_side))
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright is not image:
                return upright if upright.mode != "P" else upright.convert("RGBA")
            return image.copy() if image.mode != "P" else image.convert("RGBA")
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from error


def load_rgb(path: str | os.PathLike, *, max_side: int | None = None) -> Image.Image:
    """An image file as upright 8-bit RGB, shrunk to fit `max_side` (aspect ratio kept) when larger."""
    image = to_rgb(load_image(path, max_side=max_side), name=os.fspath(path))
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _float_to_unit(array: np.ndarray, name: str | None, low_ok: float, high_ok: float) -> np.ndarray:
    """Values of a float/wide image as [0, 1]: NaN/inf refused, a range beyond [low_ok, high_ok] rescaled
    from its own min..max with a warning (never clipped silently)."""
    what = name or "image"
    if not np.isfinite(array).all():
        raise ImageLoadError(f"{what} has NaN or infinite pixel values; fix or remove it")
    low, high = float(array.min()), float(array.max())
    if low >= low_ok and high <= high_ok:
        return (array - low_ok) / (high_ok - low_ok)
    warnings.warn(f"{what}: pixel values span [{low:g}, {high:g}], outside [{low_ok:g}, {high_ok:g}]; "
                  "rescaled from its own minimum..maximum", ZSADWarning, stacklevel=3)
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def to_rgb(image: Image.Image, name: str | None = None) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB.

    16-bit images are rescaled from their 16-bit range; float images are taken to be in [0, 1] and
    32-bit integer images in the 16-bit range, and are rescaled from their own min..max with a warning
    when they are not. NaN or infinite values raise `ImageLoadError` naming `name`. Alpha channels are
    dropped (no compositing), like PIL's own `convert("RGB")` used by the reference code.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        high = 1.0 if image.mode == "F" else float(_WIDE_INTEGER_MODES[image.mode])
        unit = _float_to_unit(array, name, 0.0, high)
        return Image.fromarray(np.rint(unit * 255.0).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def mask_to_binary(mask: Image.Image, *, lossy: bool = False) -> np.ndarray:
    """A ground-truth mask image -> `(H, W)` bool, anomalous where non-zero. 8-bit and colour masks (L, 1,
    P, RGB, RGBA, ...) go through `convert("L") > 0` as the AnomalyCLIP/AdaCLIP datasets do (alpha
    ignored); 16-bit, 32-bit and float masks are read by value, so 0/1 masks count. `lossy` (a JPEG mask,
    whose compression smears the edges) counts only grey levels above 127."""
    if mask.mode in _WIDE_INTEGER_MODES or mask.mode == "F":
        return np.asarray(mask) > 0
    return np.asarray(mask.convert("L")) > (127 if lossy else 0)


class ZSADImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of `ZSADImageProcessor` beyond transformers' `ImagesKwargs`."""

    image_size: int
    mask_threshold: float


class ZSADImageProcessor(BaseImageProcessor):
    """Turns images (and optional masks) into model inputs; maps back to the original image sizes.

    `processor(images, masks=None)` returns a `BatchFeature` with `pixel_values (B, 3, S, S)` float32
    and, when masks are given, `masks (B, S, S)` float32 in {0, 1}. A `None` mask stands for a normal
    image (all zeros). It is a transformers image processor: `save_pretrained` writes
    `preprocessor_config.json` and `AutoImageProcessor.from_pretrained` loads it back (zsad checkpoints
    carry one). The resizing is PIL + torch, without torchvision.
    """

    valid_kwargs = ZSADImageProcessorKwargs
    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 518,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        mask_threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel")
        self.image_size = int(image_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.mask_threshold = float(mask_threshold)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, image_mean={self.image_mean}, "
            f"image_std={self.image_std}, mask_threshold={self.mask_threshold})"
        )

    def preprocess_image(self, image: ImageInput) -> torch.Tensor:
        """One image -> normalised `(3, S, S)` float32 tensor."""
        rgb = to_rgb(load_image(image))
        resized = rgb.resize((self.image_size, self.image_size), resample=Image.Resampling.BICUBIC)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (tensor - mean) / std

    def preprocess_mask(self, mask: ImageInput | None) -> torch.Tensor:
        """One mask -> `(S, S)` float32 tensor in {0, 1}, as the reference datasets prepare ground truth:
        binarised at full size by `mask_to_binary` (every non-zero pixel anomalous), as 0/255, then a
        bilinear resize to S x S and `> mask_threshold` (of 255)."""
        if mask is None:
            return torch.zeros(self.image_size, self.image_size)
        binary = Image.fromarray(mask_to_binary(load_image(mask)).astype(np.uint8) * 255, mode="L")
        resized = binary.resize((self.image_size, self.image_size), resample=Image.Resampling.BILINEAR)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        return torch.from_numpy((array > self.mask_threshold).astype(np.float32))

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        masks: ImageInput | None | Sequence[ImageInput | None] = None,
    ) -> BatchFeature:
        single = not isinstance(images, (list, tuple))
        image_list = [images] if single else list(images)
        if not image_list:
            raise ValueError("no images given to the processor")
        batch = {"pixel_values": torch.stack([self.preprocess_image(image) for image in image_list])}
        if masks is not None:
            mask_list = [masks] if single else list(masks)
            if len(mask_list) != len(image_list):
                raise ValueError(f"got {len(image_list)} images but {len(mask_list)} masks")
            batch["masks"] = torch.stack([self.preprocess_mask(mask) for mask in mask_list])
        return BatchFeature(data=batch)

    preprocess = __call__

    def post_process_anomaly_detection(
        self,
        outputs: Any,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        *,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per image, as transformers' `post_process_*` methods return them:

        - `anomaly_map`: `(height, width)` float32 probabilities, bilinearly resized to the image's
          `target_sizes` entry (`(height, width)`; PIL's `image.size[::-1]`), or at the model's input size
          when `target_sizes` is None;
        - `pred_score`: the image's anomaly probability (a float);
        - `pred_label` (0 normal / 1 anomalous) when `image_threshold` is given or the output has
          `pred_labels` (a model whose config has a threshold);
        - `pred_mask`: `(height, width)` bool, the resized map `>= pixel_threshold`, when `pixel_threshold` is
          given or the output has `pred_masks` (then their nearest-neighbour resize).
        """
        from ..modeling_outputs import exceeds

        maps = outputs if isinstance(outputs, torch.Tensor) else outputs.anomaly_maps
        if maps.dim() != 3:
            raise ValueError(f"anomaly_maps must have shape (B, H, W); got {tuple(maps.shape)}")
        sizes = [tuple(maps.shape[-2:])] * maps.shape[0] if target_sizes is None else [tuple(int(v) for v in size) for size in target_sizes]
        if len(sizes) != maps.shape[0]:
            raise ValueError(f"got {maps.shape[0]} anomaly maps but {len(sizes)} target sizes")
        scores = getattr(outputs, "pred_scores", None)
        labels = getattr(outputs, "pred_labels", None)
        masks = getattr(outputs, "pred_masks", None)
        results = []
        for index, (anomaly_map, size) in enumerate(zip(maps, sizes)):
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"target sizes must be (height, width) pairs of positive integers; got {size}")
            result: dict[str, Any] = {"anomaly_map": resize_map(anomaly_map, size)}
            if scores is not None:
                result["pred_score"] = float(scores[index])
                if image_threshold is not None:
                    result["pred_label"] = int(exceeds(scores[index], image_threshold))
            if labels is not None and "pred_label" not in result:
                result["pred_label"] = int(labels[index])
            if pixel_threshold is not None:
                result["pred_mask"] = exceeds(result["anomaly_map"], pixel_threshold)
            elif masks is not None:
                mask = masks[index].float()[None, None]
                result["pred_mask"] = F.interpolate(mask, size=size, mode="nearest")[0, 0] > 0.5
            results.append(result)
        return results

    def post_process_anomaly_maps(
        self, outputs: Any, target_sizes: Sequence[tuple[int, int]] | torch.Tensor
    ) -> list[torch.Tensor]:
        """Deprecated (kept for this release): the `anomaly_map` entries of `post_process_anomaly_detection`."""
        warnings.warn("post_process_anomaly_maps is deprecated and will be removed in the next release: use "
                      "post_process_anomaly_detection(outputs, target_sizes), which returns one dict per image "
                      "(anomaly_map, pred_score, pred_label, pred_mask) like transformers' post_process_* methods",
                      FutureWarning, stacklevel=2)
        if target_sizes is None:
            raise ValueError("post_process_anomaly_maps needs target_sizes")
        return [result["anomaly_map"] for result in self.post_process_anomaly_detection(outputs, target_sizes)]


def resize_map(anomaly_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(H, W)` map -> `(height, width)` float32 map, bilinear (`align_corners=False`)."""
    values = anomaly_map.detach().float()[None, None]
    if tuple(values.shape[-2:]) != tuple(size):
        values = F.interpolate(values, size=tuple(size), mode="bilinear", align_corners=False)
    return values[0, 0]


def check_pixel_values(pixel_values: torch.Tensor, patch_size: int, name: str = "pixel_values") -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor of RGB images; got shape {shape}")
    height, width = pixel_values.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"{name}: height and width must be multiples of the patch size {patch_size}; got {height}x{width}")
