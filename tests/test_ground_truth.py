"""Ground truth as the reference protocol prepares it (METHODS.md section 1).

The AnomalyCLIP/AdaCLIP datasets read a mask with `convert("L") > 0` (every non-black pixel is anomalous),
store it as 0/255, resize it to S x S with torchvision's `Resize` on the PIL image (PIL's bilinear
filter, which widens with the downscale factor) and binarise at 0.5. The expected masks here are built
from the pixels each test painted and a bilinear resize written out in numpy, never from zsad's or PIL's
resize. PIL rounds to 8 bits after each of its two passes, so pixels whose exact value lies within one
grey level of the threshold may fall either way; every other pixel must match exactly.
"""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from zsad.clip.processing import ZSADImageProcessor  # noqa: E402
from zsad.data import build_transform, convert_mvtec, load_anomaly_dataset  # noqa: E402

# The input sizes of the methods: 224 (ViT-B/16 WinCLIP, ZeroShotCLIP), 240 (WinCLIP's paper setting),
# 336 (ViT-L/14-336 at native size), 518 (AnomalyCLIP, AdaCLIP, Crane, DA-CLIP, HeadCLIP).
IMAGE_SIZES = (224, 240, 336, 518)
# (height, width): wider and taller than square, up- and down-sampled, none a divisor of the sizes.
MASK_SHAPES = ((61, 97), (173, 300), (700, 1024), (1000, 13))
THRESHOLD = 127.5  # 0.5 of 255
ROUNDING = 1.01  # PIL's two 8-bit roundings move a value by at most one grey level


def triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """`(out_size, in_size)` weights of an antialiased bilinear resize: output pixel j is centred at
    (j + 0.5) * scale in input coordinates; input pixel i (centre i + 0.5) weighs 1 - |distance| / width,
    where width = max(scale, 1) so that a downscale averages every input pixel it covers."""
    scale = in_size / out_size
    width = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    distance = (np.arange(in_size) + 0.5)[None, :] - centres[:, None]
    weights = np.clip(1.0 - np.abs(distance) / width, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def exact_resized(binary: np.ndarray, size: int) -> np.ndarray:
    """The 0/255 mask resized to size x size without intermediate rounding (grey levels, float64)."""
    height, width = binary.shape
    return triangle_weights(height, size) @ (binary * 255.0) @ triangle_weights(width, size).T


def assert_ground_truth(processed, binary: np.ndarray, size: int) -> None:
    values = exact_resized(binary, size)
    decided = np.abs(values - THRESHOLD) > ROUNDING
    processed = np.asarray(processed)
    assert processed.shape == (size, size) and set(np.unique(processed)) <= {0.0, 1.0}
    wrong = (processed[decided] > 0.5) != (values[decided] > THRESHOLD)
    assert not wrong.any(), f"{int(wrong.sum())} pixels differ from the reference ground truth at {size}"
    assert (~decided).mean() < 0.01, "the test mask should leave almost no pixel on the threshold"


def painted(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A bool mask with rectangles and an ellipse at off-grid positions (edges between resize samples)."""
    rng = np.random.default_rng(seed)
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    for _ in range(3):
        top, left = rng.integers(0, height), rng.integers(0, width)
        mask[top : top + rng.integers(1, height // 3 + 2), left : left + rng.integers(1, width // 3 + 2)] = True
    rows, cols = np.ogrid[:height, :width]
    centre_y, centre_x = height * 0.61, width * 0.37
    mask |= ((rows - centre_y) / (height * 0.17)) ** 2 + ((cols - centre_x) / (width * 0.13)) ** 2 <= 1.0
    return mask


@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_masks_follow_the_reference_resize_at_every_method_size(shape):
    binary = painted(shape, seed=sum(shape))
    source = Image.fromarray(binary.astype(np.uint8) * 255)
    for size in IMAGE_SIZES:
        assert_ground_truth(ZSADImageProcessor(image_size=size).preprocess_mask(source), binary, size)


def encodings(binary: np.ndarray) -> dict[str, Image.Image]:
    """The same ground truth stored the ways datasets store masks."""
    as_uint8 = binary.astype(np.uint8)
    palette = Image.fromarray(as_uint8 * 2)  # putpalette makes it P: index 0 black, 2 dark red
    palette.putpalette([0, 0, 0, 255, 255, 255, 90, 0, 0] + [0] * (256 * 3 - 9))
    rgb = np.zeros((*binary.shape, 3), dtype=np.uint8)
    rgb[binary] = (200, 0, 0)  # red defects on black: L = 60, still anomalous
    rgba = np.concatenate([rgb, np.where(binary, 0, 255).astype(np.uint8)[..., None]], axis=-1)
    grey_edges = as_uint8 * 255
    grey_edges[binary & (np.arange(binary.shape[1]) % 2 == 0)] = 40  # anti-aliased or annotated in grey
    return {
        "L 0/255": Image.fromarray(as_uint8 * 255),
        "L 0/1": Image.fromarray(as_uint8),
        "L grey levels": Image.fromarray(grey_edges),
        "1 bilevel": Image.fromarray(binary),
        "P palette": palette,
        "RGB colour": Image.fromarray(rgb),
        "RGBA transparent defects": Image.fromarray(rgba),
        "I;16 0/1": Image.fromarray(binary.astype(np.uint16)),
        "I;16 0/65535": Image.fromarray(binary.astype(np.uint16) * 65535),
        "F 0/0.25": Image.fromarray(binary.astype(np.float32) * 0.25),
    }


@pytest.mark.parametrize("encoding", list(encodings(np.zeros((2, 2), dtype=bool))))
def test_every_mask_encoding_gives_the_same_ground_truth(encoding):
    binary = painted((173, 300), seed=11)
    mask = encodings(binary)[encoding]
    assert_ground_truth(ZSADImageProcessor(image_size=240).preprocess_mask(mask), binary, 240)


def test_converted_mvtec_masks_reach_the_batch_as_the_reference_prepares_them(tmp_path):
    """The whole data path: a raw MVTec layout with 16-bit 0/1 and palette masks of odd sizes -> `zsad
    convert` -> `load_anomaly_dataset` -> the transform; labels as the folders say."""
    category = tmp_path / "src" / "plate"
    truths = {}
    for index, (shape, store) in enumerate((((61, 97), "I;16"), ((173, 300), "P"))):
        binary = painted(shape, seed=index)
        name = f"{index:03d}"
        (category / "test" / "scratch").mkdir(parents=True, exist_ok=True)
        (category / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*shape, 3), 128, dtype=np.uint8)).save(category / "test" / "scratch" / f"{name}.png")
        mask = encodings(binary)["I;16 0/1" if store == "I;16" else "P palette"]
        mask.save(category / "ground_truth" / "scratch" / f"{name}_mask.png")
        truths[f"scratch/{name}"] = binary
    for folder in ("test/good", "train/good"):
        (category / folder).mkdir(parents=True)
        Image.fromarray(np.full((50, 70, 3), 90, dtype=np.uint8)).save(category / folder / "000.png")
    convert_mvtec(tmp_path / "src", tmp_path / "out", dataset_name="plates")
    test = load_anomaly_dataset(tmp_path / "out", split="test", cache_dir=str(tmp_path / "cache"))
    examples = test.with_transform(build_transform(image_size=224))
    seen = {}
    for example in examples:
        key = "/".join(example["image_id"].split("/")[-2:]).rsplit(".", 1)[0]
        seen[key] = example["label"]
        if key in truths:
            assert_ground_truth(example["mask"], truths[key], 224)
        else:
            assert not np.asarray(example["mask"]).any()
    assert seen == {"scratch/000": 1, "scratch/001": 1, "good/000": 0}


def test_labels_in_every_stored_form_reach_the_batch_as_written():
    """Datasets store labels as ints, bools (e.g. an `anomaly` column) or names in any case; the transform
    must give 0 for normal and 1 for anomalous in every form."""
    stored = [True, False, 1, 0, np.int64(1), np.int64(0), "good", "OK", " Anomaly ", "ng", "defect", "normal"]
    expected = [1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0]
    image = Image.fromarray(np.full((20, 30, 3), 90, dtype=np.uint8))
    batch = build_transform(image_size=16)({"image": [image] * len(stored), "label": stored})
    assert batch["label"] == expected
