"""zsad.data.synthetic: procedural textures and defects with exact masks, deterministic by seed."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from zsad.data import FEATURES, synthetic  # noqa: E402
from zsad.data.synthetic import DEFECTS, TEXTURES, add_defect, make_synthetic_dataset, make_texture  # noqa: E402


def changed_pixels(before: Image.Image, after: Image.Image) -> np.ndarray:
    a = np.asarray(before).astype(np.int16)
    b = np.asarray(after).astype(np.int16)
    diff = a != b
    return diff if diff.ndim == 2 else diff.any(axis=-1)


@pytest.mark.parametrize("kind", DEFECTS)
@pytest.mark.parametrize("texture", TEXTURES)
def test_mask_is_exactly_the_changed_pixels(kind, texture):
    for seed in range(6):
        clean = make_texture(texture, (72, 56), seed=seed)
        defective, mask = add_defect(clean, kind, seed=seed)
        assert defective.size == clean.size == mask.size
        assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
        region = np.asarray(mask) == 255
        assert region.any(), "a defect must change at least one pixel"
        assert not region.all()
        np.testing.assert_array_equal(region, changed_pixels(clean, defective))


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(DEFECTS),
    width=st.integers(8, 90),
    height=st.integers(8, 90),
    gray=st.booleans(),
    flat=st.integers(-1, 255),
)
def test_mask_exactness_property(seed, kind, width, height, gray, flat):
    """Any size, grey or colour, textured or a flat colour (including saturated 0/255) keeps the contract."""
    if flat >= 0:
        clean = Image.new("L" if gray else "RGB", (width, height), flat if gray else (flat, flat, 255 - flat))
    else:
        clean = make_texture("noise", (width, height), seed=seed)
        clean = clean.convert("L") if gray else clean
    defective, mask = add_defect(clean, kind, seed=seed)
    assert defective.mode == ("L" if gray else "RGB")
    region = np.asarray(mask) > 0
    assert region.any()
    np.testing.assert_array_equal(region, changed_pixels(clean, defective))


def test_add_defect_accepts_numpy_arrays_and_leaves_input_untouched():
    clean = np.asarray(make_texture("grid", 64, seed=3)).copy()
    keep = clean.copy()
    defective, mask = add_defect(clean, "scratch", seed=1)
    np.testing.assert_array_equal(clean, keep)
    np.testing.assert_array_equal(np.asarray(mask) > 0, changed_pixels(Image.fromarray(clean), defective))


def test_same_seed_same_output_and_different_seed_different_output():
    for kind in TEXTURES:
        assert make_texture(kind, 64, seed=5).tobytes() == make_texture(kind, 64, seed=5).tobytes()
        assert make_texture(kind, 64, seed=5).tobytes() != make_texture(kind, 64, seed=6).tobytes()
    clean = make_texture("stripes", 64, seed=0)
    for kind in DEFECTS:
        first = add_defect(clean, kind, seed=11)
        second = add_defect(clean, kind, seed=11)
        assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()
        assert add_defect(clean, kind, seed=12)[1].tobytes() != first[1].tobytes()
    # the random kind choice is deterministic too
    assert add_defect(clean, None, seed=4)[0].tobytes() == add_defect(clean, None, seed=4)[0].tobytes()


def test_style_seed_keeps_a_product_look():
    """Images of one style share colours; different styles differ a lot more than images of one style."""
    a = np.asarray(make_texture("dots", 64, seed=1, style_seed=9), dtype=float)
    b = np.asarray(make_texture("dots", 64, seed=2, style_seed=9), dtype=float)
    c = np.asarray(make_texture("dots", 64, seed=1, style_seed=10), dtype=float)
    assert not np.array_equal(a, b)
    same_style = np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max()
    other_style = np.abs(a.mean(axis=(0, 1)) - c.mean(axis=(0, 1))).max()
    assert same_style < other_style


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown texture kind 'marble'"):
        make_texture("marble")
    with pytest.raises(ValueError, match="unknown defect kind 'dent'"):
        add_defect(make_texture("noise", 32), "dent")
    with pytest.raises(ValueError, match="at least 8x8"):
        add_defect(np.zeros((4, 4), np.uint8), "perlin")
    with pytest.raises(ValueError, match="uint8"):
        add_defect(np.zeros((16, 16), np.float32), "perlin")
    with pytest.raises(ValueError, match="unknown texture"):
        make_synthetic_dataset(1, 1, textures=["noise", "wood"])


def test_make_synthetic_dataset_follows_the_schema():
    ds = make_synthetic_dataset(3, 5, size=48, textures=["grid", "dots"], seed=2)
    assert ds.features == FEATURES
    assert ds.num_rows == 16
    assert sorted(set(ds["category"])) == ["texture_dots", "texture_grid"]
    for row in ds:
        assert row["image"].size == (48, 48)
        if row["label"] == 0:
            assert row["mask"] is None and row["defect_type"] == "good"
        else:
            assert row["defect_type"] in DEFECTS
            assert row["mask"].size == row["image"].size
            assert (np.asarray(row["mask"]) > 0).any()
    assert len(set(ds["image_id"])) == ds.num_rows
    assert ds["label"].count(1) == 10 and ds["label"].count(0) == 6


def test_make_synthetic_dataset_is_deterministic():
    first = make_synthetic_dataset(2, 3, size=32, textures=["stripes"], seed=7)
    second = make_synthetic_dataset(2, 3, size=32, textures=["stripes"], seed=7)
    other = make_synthetic_dataset(2, 3, size=32, textures=["stripes"], seed=8)
    for a, b in zip(first, second):
        assert a["image"].tobytes() == b["image"].tobytes()
        assert (a["mask"] is None) == (b["mask"] is None)
        if a["mask"] is not None:
            assert a["mask"].tobytes() == b["mask"].tobytes()
    assert first[0]["image"].tobytes() != other[0]["image"].tobytes()


def test_defects_on_your_own_images():
    base = [Image.new("L", (40, 30), 90), Image.new("L", (40, 30), 200)]
    ds = make_synthetic_dataset(2, 3, base_images=base, category="plate", seed=1)
    assert set(ds["category"]) == {"plate"}
    normals = [row["image"] for row in ds if row["label"] == 0]
    assert [np.asarray(im).tolist() for im in normals] == [np.asarray(im).tolist() for im in base]
    for row in ds:
        if row["label"] == 1:
            clean = base[(2 + int(row["image_id"][-7:-4])) % 2]
            np.testing.assert_array_equal(np.asarray(row["mask"]) > 0, changed_pixels(clean, row["image"]))


def test_write_synthetic_mvtec_layout(tmp_path):
    root = synthetic.write_synthetic_mvtec(tmp_path / "syn", num_train=2, num_normal=1, num_anomalous=3, size=32)
    category = root / "texture_noise"
    assert len(list((category / "train" / "good").iterdir())) == 2
    assert len(list((category / "test" / "good").iterdir())) == 1
    for kind in DEFECTS:
        images = sorted((category / "test" / kind).iterdir())
        masks = sorted((category / "ground_truth" / kind).iterdir())
        assert len(images) == len(masks) == 1
        assert masks[0].name == images[0].stem + "_mask.png"
