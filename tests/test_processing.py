"""The processor: every PIL mode in, CLIP-normalised RGB out; masks resized and binarised."""

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.clip.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageLoadError, ZSADImageProcessor, to_rgb


def _sample(mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    rgb = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    return rgb.convert(mode) if mode != "P" else rgb.convert("P", palette=Image.Palette.ADAPTIVE)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "RGBA", "I;16", "CMYK", "I", "F"])
def test_every_mode_becomes_normalised_rgb(mode):
    image = _sample(mode) if mode not in ("I", "F") else _sample("L").convert(mode)
    processor = ZSADImageProcessor(image_size=28)
    pixels = processor(image)["pixel_values"]
    assert pixels.shape == (1, 3, 28, 28) and pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all()


def test_normalisation_and_bicubic_resize():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    pixels = ZSADImageProcessor(image_size=32).preprocess_image(image)
    resized = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    expected = (resized - np.array(OPENAI_CLIP_MEAN, dtype=np.float32)) / np.array(OPENAI_CLIP_STD, dtype=np.float32)
    np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_sixteen_bit_images_use_their_full_range():
    image = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(to_rgb(image)).min() == 255
    image = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert np.asarray(to_rgb(image)).max() == 128


def test_masks_are_resized_and_binarised():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[10:30, 0:20] = 255
    processed = ZSADImageProcessor(image_size=20).preprocess_mask(Image.fromarray(mask))
    assert set(processed.unique().tolist()) <= {0.0, 1.0}
    assert processed[5:15, 0:10].all() and processed[:, 12:].sum() == 0
    assert ZSADImageProcessor(image_size=20).preprocess_mask(None).sum() == 0
    sixteen_bit = ZSADImageProcessor(image_size=20).preprocess_mask(Image.fromarray(mask.astype(np.uint16)))
    assert torch.equal(sixteen_bit, processed)


def test_batch_with_masks_and_bad_input(tmp_path):
    processor = ZSADImageProcessor(image_size=16)
    images = [_sample("RGB"), _sample("L")]
    batch = processor(images, masks=[None, Image.new("L", (30, 20), 255)])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["masks"].shape == (2, 16, 16)
    assert batch["masks"][0].sum() == 0 and batch["masks"][1].all()
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        processor(images, masks=[None])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageLoadError, match="broken.png"):
        processor([broken])
    with pytest.raises(ImageLoadError, match="not found: .*missing.png"):
        processor([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="no images"):
        processor([])
