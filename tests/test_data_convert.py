"""Converters: MVTec AD-style (also BTAD), VisA and plain folders -> the anomaly schema; bad input."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from zsad.data import (  # noqa: E402
    FEATURES,
    ConversionError,
    DataWarning,
    convert_folder,
    convert_mvtec,
    convert_visa,
)
from zsad.cli import main  # noqa: E402
from zsad.data.synthetic import add_defect, make_texture  # noqa: E402


# ----------------------------------------------------------------------------------------------- fixtures


def gray_texture(width, height, seed):
    return make_texture("noise", (width, height), seed=seed).convert("L")


def write_mvtec_like(root: Path, category="tile", image_ext=".jpg") -> dict:
    """A magnetic-tile-like MVTec layout: grayscale JPEGs of varying non-square sizes, one empty mask.

    Returns the expected counts {(split, defect_type): n}.
    """
    cat = root / category
    counts = {}

    def save(img, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)

    for i in range(3):
        save(gray_texture(40 + 4 * i, 30 + 2 * i, i), cat / "train" / "good" / f"{i:03d}{image_ext}")
    counts[("train", "good")] = 3
    for i in range(2):
        save(gray_texture(50, 36 + i, 10 + i), cat / "test" / "good" / f"{i:03d}{image_ext}")
    counts[("test", "good")] = 2
    for defect, n, kind in (("crack", 3, "scratch"), ("blowhole", 2, "perlin")):
        for i in range(n):
            clean = gray_texture(44 + 3 * i, 60 - 5 * i, 100 + i)
            image, mask = add_defect(clean, kind, seed=i)
            save(image, cat / "test" / defect / f"{i:03d}{image_ext}")
            save(mask, cat / "ground_truth" / defect / f"{i:03d}_mask.png")
        counts[("test", defect)] = n
    # an anomalous image whose mask is empty (like 4 'uneven' images of magnetic_tile)
    Image.new("L", Image.open(cat / "test" / "blowhole" / f"001{image_ext}").size, 0).save(
        cat / "ground_truth" / "blowhole" / "001_mask.png"
    )
    return counts


def load_out(out: Path, cache: Path):
    return datasets.load_dataset(str(out), cache_dir=str(cache))


def binarised(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 0


@pytest.fixture
def mvtec_src(tmp_path):
    src = tmp_path / "mvtec_like"
    counts = write_mvtec_like(src)
    return src, counts


# --------------------------------------------------------------------------------------------- MVTec AD


def test_mvtec_layout_converts_with_counts_alignment_and_empty_mask_warning(mvtec_src, tmp_path):
    src, counts = mvtec_src
    out = tmp_path / "out"
    with pytest.warns(DataWarning, match=r"1 anomalous images have an empty mask.*tile/test/blowhole/001\.jpg"):
        report = convert_mvtec(src, out)
    assert report.num_rows == sum(counts.values()) == 10
    assert report.split_sizes() == {"train": 3, "test": 7}
    assert report.empty_masks == ["tile/test/blowhole/001.jpg"]

    dd = load_out(out, tmp_path / "cache")
    assert set(dd) == {"train", "test"}
    assert dd["test"].features == FEATURES
    seen = {}
    for split in dd:
        for row in dd[split]:
            key = (split, row["defect_type"])
            seen[key] = seen.get(key, 0) + 1
            source = src / row["image_id"]
            assert source.read_bytes() == src.joinpath(row["image_id"]).read_bytes()
            assert row["category"] == "tile" and row["dataset"] == "mvtec_like"
            np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(Image.open(source)))
            if row["label"] == 0:
                assert row["mask"] is None and row["defect_type"] == "good"
            else:
                mask = row["mask"]
                assert mask.size == row["image"].size
                assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
                source_mask = src / "tile" / "ground_truth" / row["defect_type"] / (source.stem + "_mask.png")
                np.testing.assert_array_equal(np.asarray(mask) > 0, binarised(source_mask))
    assert seen == counts


def test_mvtec_root_with_several_categories_and_category_selection(tmp_path):
    src = tmp_path / "root"
    write_mvtec_like(src, "alpha", image_ext=".png")
    write_mvtec_like(src, "beta", image_ext=".png")
    with pytest.warns(DataWarning):
        report = convert_mvtec(src, tmp_path / "all", dataset_name="toy")
    assert report.num_rows == 20
    with pytest.warns(DataWarning):
        report = convert_mvtec(src, tmp_path / "beta", categories=["beta"])
    assert {category for (_, category, _) in report.counts} == {"beta"}
    with pytest.raises(ConversionError, match=r"unknown category \['gamma'\].*available: \['alpha', 'beta'\]"):
        convert_mvtec(src, tmp_path / "gamma", categories=["gamma"])


def test_btad_layout(tmp_path):
    """BTAD: ok/ko folders, BMP images, masks named like their image (no `_mask`)."""
    src = tmp_path / "BTAD"
    cat = src / "01"
    for split, n in (("train", 2), ("test", 2)):
        (cat / split / "ok").mkdir(parents=True)
        for i in range(n):
            make_texture("stripes", (48, 40), seed=i).save(cat / split / "ok" / f"{i:04d}.bmp")
    (cat / "test" / "ko").mkdir(parents=True)
    (cat / "ground_truth" / "ko").mkdir(parents=True)
    sources = {}
    for i in range(3):
        image, mask = add_defect(make_texture("stripes", (48, 40), seed=10 + i), "cutpaste", seed=i)
        image.save(cat / "test" / "ko" / f"{i:04d}.bmp")
        mask.save(cat / "ground_truth" / "ko" / f"{i:04d}.png")
        sources[f"01/test/ko/{i:04d}.bmp"] = (image, mask)
    report = convert_mvtec(src, tmp_path / "out", dataset_name="btad")
    assert report.split_sizes() == {"train": 2, "test": 5}
    dd = load_out(tmp_path / "out", tmp_path / "cache")
    anomalies = [row for row in dd["test"] if row["label"] == 1]
    assert len(anomalies) == 3
    for row in dd["test"]:
        assert row["image"].format == "PNG"  # BMP is re-encoded losslessly
        if row["label"] == 0:
            assert row["defect_type"] == "good"
    for row in anomalies:
        image, mask = sources[row["image_id"]]
        assert row["defect_type"] == "ko"
        np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(image))
        np.testing.assert_array_equal(np.asarray(row["mask"]), np.asarray(mask))


# ------------------------------------------------------------------------------------------------- VisA


def write_visa_like(root: Path) -> None:
    rows = [("object", "split", "label", "image", "mask")]
    anno = [("image", "label", "mask")]
    for category in ("candle", "pcb1"):
        data = root / category / "Data"
        (data / "Images" / "Normal").mkdir(parents=True)
        (data / "Images" / "Anomaly").mkdir(parents=True)
        (data / "Masks" / "Anomaly").mkdir(parents=True)
        for i in range(3):
            name = f"Images/Normal/{i:04d}.JPG"
            make_texture("dots", (60, 44), seed=i).save(data / name, format="JPEG")
            rows.append((category, "train" if i < 2 else "test", "normal", f"{category}/Data/{name}", ""))
        for i in range(2):
            image, mask = add_defect(make_texture("dots", (60, 44), seed=20 + i), "perlin", seed=i)
            image.save(data / "Images" / "Anomaly" / f"{i:03d}.JPG", format="JPEG")
            # VisA masks store a class index (1, 2, ...) instead of 255
            Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * (i + 1)).save(
                data / "Masks" / "Anomaly" / f"{i:03d}.png"
            )
            rows.append((category, "test", "anomaly", f"{category}/Data/Images/Anomaly/{i:03d}.JPG",
                         f"{category}/Data/Masks/Anomaly/{i:03d}.png"))
            anno.append((f"{category}/Data/Images/Anomaly/{i:03d}.JPG", "chip around" if i else "bent",
                         f"{category}/Data/Masks/Anomaly/{i:03d}.png"))
        with open(root / category / "image_anno.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([anno[0]] + [r for r in anno[1:] if r[0].startswith(category)])
    (root / "split_csv").mkdir()
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_visa_layout(tmp_path):
    src = tmp_path / "VisA"
    write_visa_like(src)
    report = convert_visa(src, tmp_path / "out")
    assert report.split_sizes() == {"train": 4, "test": 6}
    dd = load_out(tmp_path / "out", tmp_path / "cache")
    test = dd["test"]
    assert sorted(set(test["category"])) == ["candle", "pcb1"]
    assert set(test["dataset"]) == {"visa"}
    anomalies = [row for row in test if row["label"] == 1]
    assert sorted(row["defect_type"] for row in anomalies) == ["bent", "bent", "chip around", "chip around"]
    for row in anomalies:
        source_mask = src / row["image_id"].replace("Images", "Masks").replace(".JPG", ".png")
        expected = np.asarray(Image.open(source_mask)) > 0
        assert expected.any()
        np.testing.assert_array_equal(np.asarray(row["mask"]) == 255, expected)  # class-index masks binarised
        assert row["mask"].size == row["image"].size
    assert all(row["mask"] is None for row in dd["train"])
    report = convert_visa(src, tmp_path / "pcb", categories=["pcb1"], format="imagefolder")
    assert {category for (_, category, _) in report.counts} == {"pcb1"}


def test_visa_errors_name_the_path(tmp_path):
    src = tmp_path / "VisA"
    write_visa_like(src)
    (src / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(ConversionError, match=r"unknown layout: .*split_csv/1cls\.csv not found"):
        convert_visa(src, tmp_path / "out")
    write_visa_like(tmp_path / "V2")
    extra = tmp_path / "V2" / "candle" / "Data" / "Masks" / "Anomaly" / "999.png"
    Image.new("L", (60, 44), 255).save(extra)
    with pytest.raises(ConversionError, match=rf"mask without an image: {extra}"):
        convert_visa(tmp_path / "V2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- plain folders


def test_folder_layout_with_defect_subfolders_and_masks(tmp_path):
    src = tmp_path / "widgets"
    (src / "normal").mkdir(parents=True)
    for i in range(3):
        make_texture("grid", 32, seed=i).save(src / "normal" / f"n{i}.png")
    for defect in ("dent", "stain"):
        (src / "anomaly" / defect).mkdir(parents=True)
        (src / "masks" / defect).mkdir(parents=True)
        for i in range(2):
            image, mask = add_defect(make_texture("grid", 32, seed=9 + i), "perlin", seed=i)
            image.save(src / "anomaly" / defect / f"a{i}.png")
            mask.save(src / "masks" / defect / (f"a{i}_mask.png" if i else f"a{i}.png"))
    report = convert_folder(src, tmp_path / "out")
    assert report.split_sizes() == {"test": 7}
    dd = load_out(tmp_path / "out", tmp_path / "cache")
    assert list(dd) == ["test"]
    test = dd["test"]
    assert set(test["category"]) == {"widgets"}
    assert sorted(set(test["defect_type"])) == ["dent", "good", "stain"]
    assert all(row["mask"] is not None for row in test if row["label"] == 1)


def test_folder_layout_image_level_only(tmp_path):
    """No masks at all: converts, says pixel metrics will be skipped, masks stay null."""
    src = tmp_path / "mine"
    (src / "good").mkdir(parents=True)
    (src / "bad").mkdir(parents=True)
    for i in range(2):
        make_texture("dots", 32, seed=i).save(src / "good" / f"{i}.jpg")
        make_texture("dots", 32, seed=5 + i).save(src / "bad" / f"{i}.jpg")
    with pytest.warns(DataWarning, match="image-level labels only.*pixel metrics will be skipped"):
        report = convert_folder(src, tmp_path / "out", category="cookie", split="train")
    assert report.without_mask == ["mine/bad/0.jpg", "mine/bad/1.jpg"]
    dd = load_out(tmp_path / "out", tmp_path / "cache")
    assert list(dd) == ["train"]
    assert dd["train"]["mask"] == [None] * 4
    assert sorted(dd["train"]["label"]) == [0, 0, 1, 1]


def test_folder_layout_unknown(tmp_path):
    src = tmp_path / "random"
    (src / "pictures").mkdir(parents=True)
    make_texture("dots", 16).save(src / "pictures" / "x.png")
    with pytest.raises(ConversionError, match=rf"unknown layout: {src} has no folder of normal images"):
        convert_folder(src, tmp_path / "out")
    with pytest.raises(ConversionError, match=rf"anomaly folder not found: {src / 'nope'}"):
        convert_folder(src, tmp_path / "out", normal_dir="pictures", anomaly_dir="nope")


# ------------------------------------------------------------------------------------------ output formats


def test_imagefolder_output_loads_with_load_dataset_and_imagefolder_builder(mvtec_src, tmp_path):
    src, counts = mvtec_src
    out = tmp_path / "ifolder"
    with pytest.warns(DataWarning):
        convert_mvtec(src, out, format="imagefolder")
    assert (out / "train" / "metadata.parquet").is_file() and (out / "test" / "metadata.parquet").is_file()
    assert (out / "test" / "images" / "tile" / "test" / "crack" / "000.jpg").read_bytes() == (
        src / "tile" / "test" / "crack" / "000.jpg"
    ).read_bytes()
    for dd in (
        load_out(out, tmp_path / "cache"),
        datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache2")),
    ):
        assert {split: dd[split].num_rows for split in dd} == {"train": 3, "test": 7}
        assert dd["test"].features["label"] == FEATURES["label"]
        assert isinstance(dd["test"].features["mask"], datasets.Image)
        masked = [row for row in dd["test"] if row["mask"] is not None]
        assert len(masked) == 5 and all(row["label"] == 1 for row in masked)
        assert all(row["mask"].size == row["image"].size for row in masked)


def test_parquet_shards_keep_features_with_the_parquet_builder(mvtec_src, tmp_path):
    src, _ = mvtec_src
    out = tmp_path / "sharded"
    with pytest.warns(DataWarning):
        convert_mvtec(src, out, max_shard_bytes=4000)
    shards = sorted((out / "data").glob("test-*.parquet"))
    assert len(shards) > 1 and all(f"-of-{len(shards):05d}" in p.name for p in shards)
    ds = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in shards], split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.features == FEATURES and ds.num_rows == 7


# ------------------------------------------------------------------------------------------------ bad input


def expect_failure(src, out, match, **kwargs):
    with pytest.raises(ConversionError, match=match) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            convert_mvtec(src, out, **kwargs)
    leftovers = [p.name for p in Path(out).parent.iterdir() if ".zsad-tmp-" in p.name or ".zsad-old-" in p.name]
    assert leftovers == [], "a failed conversion must not leave temporary folders"
    return info.value


def test_corrupt_image(mvtec_src, tmp_path):
    src, _ = mvtec_src
    bad = src / "tile" / "test" / "crack" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    error = expect_failure(src, tmp_path / "out", rf"corrupt or unreadable image {bad}")
    assert error.path == str(bad)
    assert not (tmp_path / "out").exists()


def test_corrupt_image_can_be_skipped_with_a_warning(mvtec_src, tmp_path):
    src, _ = mvtec_src
    bad = src / "tile" / "test" / "good" / "000.jpg"
    bad.write_bytes(b"not an image at all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = convert_mvtec(src, tmp_path / "out", skip_invalid=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any(m.startswith(f"skipped: corrupt or unreadable image {bad}") for m in messages)
    assert any("1 anomalous images have an empty mask" in m for m in messages)
    assert report.num_rows == 9 and len(report.skipped) == 1


def test_mask_without_image(mvtec_src, tmp_path):
    src, _ = mvtec_src
    orphan = src / "tile" / "ground_truth" / "crack" / "007_mask.png"
    Image.new("L", (10, 10), 255).save(orphan)
    expect_failure(src, tmp_path / "out", rf"mask without an image: {orphan}")


def test_mask_of_another_size(mvtec_src, tmp_path):
    src, _ = mvtec_src
    mask = src / "tile" / "ground_truth" / "crack" / "002_mask.png"
    Image.new("L", (7, 9), 255).save(mask)
    image = src / "tile" / "test" / "crack" / "002.jpg"
    width, height = Image.open(image).size
    expect_failure(src, tmp_path / "out", rf"mask {mask} is 7x9 but its image {image} is {width}x{height}")


def test_empty_category_folder(mvtec_src, tmp_path):
    src, _ = mvtec_src
    (src / "newcat").mkdir()
    expect_failure(src, tmp_path / "out", rf"empty category folder {src / 'newcat'}")
    (src / "newcat").rmdir()
    (src / "tile" / "test" / "scratch").mkdir()
    expect_failure(src, tmp_path / "out", rf"empty folder {src / 'tile' / 'test' / 'scratch'}: no images")


def test_unknown_layout(tmp_path):
    src = tmp_path / "photos"
    (src / "holiday").mkdir(parents=True)
    make_texture("noise", 16).save(src / "holiday" / "a.png")
    expect_failure(src, tmp_path / "out", rf"unknown layout: {src} does not look like an MVTec AD dataset")
    expect_failure(tmp_path / "missing", tmp_path / "out", rf"source folder not found: {tmp_path / 'missing'}")


def test_existing_output_is_never_lost(mvtec_src, tmp_path):
    src, _ = mvtec_src
    out = tmp_path / "out"
    with pytest.warns(DataWarning):
        convert_mvtec(src, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # no --overwrite: a clear error, nothing touched
    expect_failure(src, out, rf"output folder {out} already exists; pass --overwrite")
    # --overwrite but the new conversion fails half-way: the old result is still there, intact
    bad = src / "tile" / "test" / "crack" / "002.jpg"
    bad.write_bytes(b"garbage")
    expect_failure(src, out, "corrupt or unreadable image", overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --overwrite that succeeds replaces it in one step
    bad.unlink()
    (src / "tile" / "ground_truth" / "crack" / "002_mask.png").unlink()
    with pytest.warns(DataWarning):
        report = convert_mvtec(src, out, overwrite=True, format="imagefolder")
    assert report.num_rows == 9 and (out / "test" / "metadata.parquet").is_file() and not (out / "data").exists()


def test_overwrite_refuses_folders_it_did_not_write(mvtec_src, tmp_path):
    src, _ = mvtec_src
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    expect_failure(src, precious, rf"refusing to overwrite {precious}", overwrite=True)
    assert (precious / "thesis.tex").read_text() == "do not delete"
    expect_failure(src, src / "converted", "must not be inside the source folder")


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_convert_success_and_errors(mvtec_src, tmp_path, capsys):
    src, _ = mvtec_src
    out = tmp_path / "cli_out"
    assert main(["convert", "mvtec", str(src), str(out), "--format", "imagefolder", "--name", "mt"]) == 0
    captured = capsys.readouterr()
    assert "wrote 10 rows (train 3, test 7) of 'mt'" in captured.out
    assert "warning: 1 anomalous images have an empty mask" in captured.err
    assert (out / "README.md").is_file()

    assert main(["convert", "mvtec", str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"zsad convert: error: output folder {out} already exists; pass --overwrite (overwrite=True) to replace it"]

    assert main(["convert", "visa", str(src), str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown layout" in err[0] and str(src) in err[0]

    assert main(["convert", "mvtec", str(src), str(tmp_path / "x"), "--split", "train"]) == 2
    assert "--split applies to the folder layout only" in capsys.readouterr().err

    assert main(["convert", "mvtec"]) == 2  # argparse errors: one line too
    assert capsys.readouterr().err.strip().splitlines() == [
        "zsad convert: error: the following arguments are required: src, out (see zsad convert --help)"
    ]


def test_cli_module_entry_point_exits_2_without_traceback(tmp_path):
    src = tmp_path / "nothing_here"
    result = subprocess.run(
        [sys.executable, "-m", "zsad.cli", "convert", "folder", str(src), str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"zsad convert: error: source folder not found: {src}"]
    assert "Traceback" not in result.stderr


def test_existing_empty_output_folder_is_filled(mvtec_src, tmp_path):
    src, _ = mvtec_src
    out = tmp_path / "made_by_hand"
    out.mkdir()
    with pytest.warns(DataWarning):
        report = convert_mvtec(src, out)
    assert report.num_rows == 10 and (out / "README.md").is_file()


def test_cli_skip_invalid_reports_the_skipped_file(mvtec_src, tmp_path, capsys):
    src, _ = mvtec_src
    orphan = src / "tile" / "ground_truth" / "crack" / "042_mask.png"
    Image.new("L", (10, 10), 255).save(orphan)
    assert main(["convert", "mvtec", str(src), str(tmp_path / "out"), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipped: mask without an image: {orphan}" in captured.err
    assert "wrote 10 rows" in captured.out
