"""Conversion of the real datasets in ../shared/data (magnetic_tile, mpdd_metal_plate); skipped when absent.

The same checks on synthetic layouts always run in test_data_convert.py.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from zsad.data import FEATURES, DataWarning, build_transform, collate_fn, convert_mvtec  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAGNETIC_TILE = SHARED_DATA / "magnetic_tile"
MPDD = SHARED_DATA / "mpdd_metal_plate"

# ../shared/data/README.md
MAGNETIC_TILE_COUNTS = {
    ("train", "good"): 500,
    ("test", "good"): 452,
    ("test", "blowhole"): 115,
    ("test", "break"): 85,
    ("test", "crack"): 57,
    ("test", "fray"): 32,
    ("test", "uneven"): 103,
}


@pytest.fixture(scope="module")
def magnetic_tile(tmp_path_factory):
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"{MAGNETIC_TILE} is absent")
    out = tmp_path_factory.mktemp("real") / "magnetic_tile"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = convert_mvtec(MAGNETIC_TILE, out)
    dd = datasets.load_dataset(str(out), cache_dir=str(out.parent / "cache"))
    return report, dd, [w for w in caught if issubclass(w.category, DataWarning)]


def test_magnetic_tile_rows_and_counts(magnetic_tile):
    report, dd, _ = magnetic_tile
    assert report.num_rows == 1344
    assert sum(part.num_rows for part in dd.values()) == 1344
    assert {name: part.num_rows for name, part in dd.items()} == {"train": 500, "test": 844}
    counts = Counter()
    for name, part in dd.items():
        for label, defect in zip(part["label"], part["defect_type"]):
            counts[(name, defect)] += 1
            assert label == (0 if defect == "good" else 1)
    assert dict(counts) == MAGNETIC_TILE_COUNTS
    assert dd["test"].features == FEATURES
    assert set(dd["test"]["category"]) == {"magnetic_tile"}


def test_magnetic_tile_empty_uneven_masks_are_reported_in_a_warning(magnetic_tile):
    report, _, caught = magnetic_tile
    expected = [f"magnetic_tile/test/uneven/{name}.jpg" for name in ("050", "053", "066", "067")]
    assert report.empty_masks == expected
    messages = [str(w.message) for w in caught if "empty mask" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("4 anomalous images have an empty mask")
    assert all(name in messages[0] for name in expected)


def test_magnetic_tile_masks_are_aligned_with_their_images(magnetic_tile):
    _, dd, _ = magnetic_tile
    test = dd["test"].filter(lambda label: label == 1, input_columns="label")
    assert test.num_rows == 392
    size = 64
    transform = build_transform(image_size=size)
    checked = 0
    for row in test:
        source = MAGNETIC_TILE / row["image_id"]
        image, mask = row["image"], row["mask"]
        # the stored image is the source file, the mask has its size and equals the source mask
        assert image.size == mask.size == Image.open(source).size
        np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(source)))
        source_mask = MAGNETIC_TILE / "magnetic_tile" / "ground_truth" / row["defect_type"] / f"{source.stem}_mask.png"
        binary = np.asarray(mask) > 0
        np.testing.assert_array_equal(binary, np.asarray(Image.open(source_mask)) > 0)
        if not binary.any():
            continue
        # after the resize, every mask pixel lies on the defect: within one output pixel of the source
        # mask's foreground (area-downsampled), i.e. the mask moved with the image
        resized = transform({"image": [image], "mask": [mask], "label": [1]})["mask"][0]
        coverage = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)
        coverage = torch.from_numpy(np.asarray(coverage) > 0).float()[None, None]
        near_defect = torch.nn.functional.max_pool2d(coverage, 3, stride=1, padding=1)[0, 0] > 0
        assert bool(near_defect[resized > 0].all()), row["image_id"]
        checked += int(resized.sum() > 0)
    assert checked > 350  # a few very thin cracks vanish at 64 px (bilinear resize + 0.5 threshold)


def test_magnetic_tile_collates(magnetic_tile):
    _, dd, _ = magnetic_tile
    test = dd["test"].with_transform(build_transform(image_size=32))
    rows = [test[i] for i in (0, 451, 452, 843)]  # both ends of the normal and the anomalous block
    batch = collate_fn(rows)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["labels"].tolist() == [0, 0, 1, 1]
    assert batch["has_mask"].all()


def test_mpdd_metal_plate(tmp_path):
    if not MPDD.is_dir():
        pytest.skip(f"{MPDD} is absent")
    report = convert_mvtec(MPDD, tmp_path / "mpdd", format="imagefolder")
    assert report.num_rows == 161
    dd = datasets.load_dataset(str(tmp_path / "mpdd"), cache_dir=str(tmp_path / "cache"))
    assert list(dd) == ["test"]
    test = dd["test"]
    assert test.num_rows == 161
    assert Counter(test["defect_type"]) == {"good": 80, "defect": 81}
    assert set(test["category"]) == {"metal_plate"}
    masked = test.filter(lambda label: label == 1, input_columns="label")
    for row in masked.select(range(0, 81, 10)):
        assert row["mask"].size == row["image"].size == (512, 512)
        assert (np.asarray(row["mask"]) > 0).any()
