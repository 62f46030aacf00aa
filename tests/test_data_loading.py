"""load_anomaly_dataset, with_transform preprocessing and collate_fn: the round trip into tensors."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import pickle  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from zsad.clip.processing import ZSADImageProcessor  # noqa: E402
from zsad.data import (  # noqa: E402
    FEATURES,
    AnomalyCollator,
    DataError,
    DataWarning,
    SchemaError,
    build_transform,
    collate_fn,
    convert_mvtec,
    load_anomaly_dataset,
    make_synthetic_dataset,
    summarize,
    with_anomaly_transform,
    write_synthetic_mvtec,
)

SIZE = 32


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Synthetic MVTec layout (two textures) converted to parquet and to an imagefolder."""
    root = tmp_path_factory.mktemp("loading")
    src = write_synthetic_mvtec(root / "src", num_train=3, num_normal=2, num_anomalous=3, size=40,
                                textures=("grid", "dots"), seed=3)
    convert_mvtec(src, root / "parquet", dataset_name="syn")
    convert_mvtec(src, root / "imagefolder", dataset_name="syn", format="imagefolder")
    return root


def kwargs(tmp_path):
    return {"cache_dir": str(tmp_path / "hf_cache")}


def check_batch(batch, n, size=SIZE):
    assert set(batch) >= {"pixel_values", "masks", "labels", "categories", "has_mask", "datasets"}
    assert batch["pixel_values"].shape == (n, 3, size, size) and batch["pixel_values"].dtype == torch.float32
    assert batch["masks"].shape == (n, size, size) and batch["masks"].dtype == torch.float32
    assert set(torch.unique(batch["masks"]).tolist()) <= {0.0, 1.0}
    assert batch["labels"].shape == (n,) and batch["labels"].dtype == torch.int64
    assert batch["has_mask"].shape == (n,) and batch["has_mask"].dtype == torch.bool
    assert isinstance(batch["categories"], list) and len(batch["categories"]) == n
    normal = batch["labels"] == 0
    assert torch.all(batch["masks"][normal] == 0), "normal images must have all-zero masks"


def test_round_trip_convert_parquet_load_dataset_collate(converted, tmp_path):
    dd = datasets.load_dataset(str(converted / "parquet"), **kwargs(tmp_path))
    assert {name: part.num_rows for name, part in dd.items()} == {"train": 6, "test": 10}
    test = dd["test"].with_transform(build_transform(ZSADImageProcessor(image_size=SIZE)))
    batches = list(DataLoader(test, batch_size=4, collate_fn=collate_fn))
    assert [b["labels"].shape[0] for b in batches] == [4, 4, 2]
    for batch in batches:
        check_batch(batch, batch["labels"].shape[0])
        assert batch["has_mask"].all()
        assert set(batch["datasets"]) == {"syn"}
    labels = torch.cat([b["labels"] for b in batches])
    assert labels.tolist().count(1) == 6
    anomalous_masks = torch.cat([b["masks"][b["labels"] == 1] for b in batches])
    assert (anomalous_masks.flatten(1).sum(1) > 0).all(), "every synthetic defect survives the resize"
    assert sorted({c for b in batches for c in b["categories"]}) == ["texture_dots", "texture_grid"]


@pytest.mark.parametrize("layout", ["parquet", "imagefolder"])
def test_load_anomaly_dataset_converted_folders(converted, tmp_path, layout):
    dd = load_anomaly_dataset(converted / layout, **kwargs(tmp_path))
    assert isinstance(dd, datasets.DatasetDict) and set(dd) == {"train", "test"}
    test = load_anomaly_dataset(converted / layout, split="test", categories=["texture_dots"], **kwargs(tmp_path))
    assert test.num_rows == 5 and set(test["category"]) == {"texture_dots"}
    assert test.features["label"] == FEATURES["label"]
    info = summarize(test)
    assert info["num_anomalous"] == 3 and info["anomalous_without_mask"] == 0


def test_load_anomaly_dataset_parquet_file_and_save_to_disk(converted, tmp_path):
    shard = next((converted / "parquet" / "data").glob("test-*.parquet"))
    ds = load_anomaly_dataset(shard, split="test", **kwargs(tmp_path))
    assert ds.num_rows == 10 and ds.features == FEATURES
    synthetic = make_synthetic_dataset(2, 2, size=24, seed=1)
    synthetic.save_to_disk(str(tmp_path / "single"))
    assert load_anomaly_dataset(tmp_path / "single").num_rows == 4
    datasets.DatasetDict({"test": synthetic}).save_to_disk(str(tmp_path / "dict"))
    loaded = load_anomaly_dataset(tmp_path / "dict", split="test")
    assert loaded.features == FEATURES and loaded.num_rows == 4


def test_streaming(converted, tmp_path):
    stream = load_anomaly_dataset(converted / "parquet", split="test", streaming=True, **kwargs(tmp_path))
    assert isinstance(stream, datasets.IterableDataset)
    loader = DataLoader(stream, batch_size=5, collate_fn=AnomalyCollator(image_size=SIZE))
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        check_batch(batch, 5)
    mapped = with_anomaly_transform(stream, image_size=SIZE)
    batch = collate_fn(list(mapped.take(3)))
    check_batch(batch, 3)
    filtered = load_anomaly_dataset(converted / "imagefolder", split="test", streaming=True,
                                    categories=["texture_grid"], **kwargs(tmp_path))
    assert {row["category"] for row in filtered} == {"texture_grid"}


def test_user_imagefolder_without_metadata_gets_labels_right(tmp_path):
    """`imagefolder` infers ClassLabel(['anomaly', 'normal']) (alphabetical): 0 would mean anomaly."""
    root = tmp_path / "user"
    for folder, value in (("normal", 60), ("anomaly", 200)):
        (root / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 20), (value, value, value)).save(root / folder / f"{i}.png")
    raw = datasets.load_dataset(str(root), split="train", **kwargs(tmp_path))
    assert raw.features["label"].names == ["anomaly", "normal"]
    with pytest.warns(DataWarning, match="2 of 2 anomalous images .* have no mask"):
        ds = load_anomaly_dataset(root, split="train", **kwargs(tmp_path))
    assert ds.features["label"].names == ["normal", "anomaly"]
    for row in ds:
        brightness = np.asarray(row["image"]).mean()
        assert row["label"] == (1 if brightness > 128 else 0)
    batch = collate_fn([ds.with_transform(build_transform(image_size=SIZE))[i] for i in range(4)])
    check_batch(batch, 4)
    # image-level-only data: anomalous images are flagged so pixel metrics skip them
    assert batch["has_mask"].tolist() == (batch["labels"] == 0).tolist()
    assert batch["categories"] == ["object"] * 4


def test_user_imagefolder_with_metadata_jsonl_and_string_labels(tmp_path):
    root = tmp_path / "meta" / "test"
    root.mkdir(parents=True)
    rows = []
    for i, label in enumerate(["good", "defect", "defect"]):
        Image.new("L", (30, 20), 40 * i).save(root / f"{i}.png")
        mask = None
        if i == 1:
            Image.fromarray(np.pad(np.full((5, 5), 255, np.uint8), ((5, 10), (10, 15)))).save(root / "1_mask.png")
            mask = "1_mask.png"
        rows.append({"file_name": f"{i}.png", "mask_file_name": mask, "label": label, "category": "sheet"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.warns(DataWarning, match="1 of 2 anomalous images"):
        ds = load_anomaly_dataset(tmp_path / "meta", split="test", **kwargs(tmp_path))
    assert ds["label"] == [0, 1, 1]
    batch = AnomalyCollator(image_size=SIZE)([ds[i] for i in range(3)])
    check_batch(batch, 3)
    assert batch["has_mask"].tolist() == [True, True, False]
    assert batch["masks"][1].sum() > 0 and batch["masks"][2].sum() == 0


def test_mask_follows_the_image_through_the_resize():
    """A bright square on a dark, non-square image: after preprocessing the mask marks the bright pixels."""
    image = np.zeros((60, 100), np.uint8)
    image[12:30, 55:85] = 255
    row = {"image": [Image.fromarray(image)], "mask": [Image.fromarray(image)], "label": [1]}
    out = build_transform(image_size=50)(row)
    pixels = out["pixel_values"][0].mean(0)
    mask = out["mask"][0]
    bright = pixels > pixels.mean()
    agreement = (bright == mask.bool()).float().mean().item()
    assert agreement > 0.99
    assert mask.sum() > 0


def test_transform_rejects_a_mask_of_another_size():
    row = {"image": [Image.new("RGB", (40, 30))], "mask": [Image.new("L", (30, 40))], "label": [1],
           "image_id": ["x/y.png"]}
    with pytest.raises(SchemaError, match=r"mask of image 'x/y.png' is 30x40 but the image is 40x30"):
        build_transform(image_size=SIZE)(row)


def test_collate_fn_needs_transformed_examples():
    ds = make_synthetic_dataset(1, 1, size=24)
    with pytest.raises(ValueError, match="collate_fn expects examples from build_transform"):
        collate_fn([ds[0], ds[1]])
    batch = AnomalyCollator(image_size=SIZE)([ds[0], ds[1]])
    check_batch(batch, 2)
    assert batch["has_mask"].tolist() == [True, True]


def test_schema_errors_are_clear(tmp_path):
    no_label = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))]}, features=datasets.Features(
        {"image": datasets.Image()}))
    no_label.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(SchemaError, match=r"has no 'label' column \(columns: image\)"):
        load_anomaly_dataset(tmp_path / "nolabel")
    odd = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8))], "label": [0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}),
    )
    odd.save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(SchemaError, match=r"label names \['cat', 'dog'\] include \['cat', 'dog'\]"):
        load_anomaly_dataset(tmp_path / "odd")
    three = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 2, "label": [0, 2]})
    three.save_to_disk(str(tmp_path / "three"))
    with pytest.raises(SchemaError, match=r"column 'label' holds \[0, 2\]"):
        load_anomaly_dataset(tmp_path / "three")


def test_load_errors_name_the_source(converted, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"has no split 'validation'; available splits: \['train', 'test'\]"):
        load_anomaly_dataset(converted / "parquet", split="validation", **kwargs(tmp_path))
    with pytest.raises(DataError, match=r"has no category \['bottle'\]"):
        load_anomaly_dataset(converted / "parquet", categories=["bottle"], **kwargs(tmp_path))
    with pytest.raises(DataError, match=r"dataset not found: .*nowhere/at/all does not exist"):
        load_anomaly_dataset(tmp_path / "nowhere" / "at" / "all")
    monkeypatch.chdir(tmp_path)  # a mistyped name is first of all a local folder that is not there
    with pytest.raises(DataError, match=rf"dataset not found: there is no local file or folder {tmp_path}/mvtec_typo, "
                                        "and 'mvtec_typo' is not a reachable Hub dataset either"):
        load_anomaly_dataset("mvtec_typo", **kwargs(tmp_path))
    with pytest.raises(DataError, match=r"dataset not found: 'someone/not-a-dataset' is not a reachable Hub dataset "
                                        rf".*, and there is no local file or folder {tmp_path}/someone/not-a-dataset either"):
        load_anomaly_dataset("someone/not-a-dataset", **kwargs(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"single file must be a \.parquet file"):
        load_anomaly_dataset(tmp_path / "notes.txt")


def test_no_image_level_warning_when_masks_are_complete(converted, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        load_anomaly_dataset(converted / "parquet", split="test", **kwargs(tmp_path))


def test_processor_defaults_and_mismatch():
    transform = build_transform()
    assert transform.processor.image_size == 518
    with pytest.raises(ValueError, match="disagrees"):
        build_transform(ZSADImageProcessor(image_size=64), image_size=32)


def test_paths_inside_batches_are_reported(converted, tmp_path):
    ds = load_anomaly_dataset(converted / "parquet", split="test", **kwargs(tmp_path))
    batch = collate_fn([ds.with_transform(build_transform(image_size=SIZE))[i] for i in range(ds.num_rows)])
    assert all((converted / "src" / image_id).is_file() for image_id in batch["image_ids"])
    assert Path(batch["image_ids"][0]).parts[1] == "test"


def test_transform_pickles_for_dataloader_workers():
    ds = make_synthetic_dataset(1, 1, size=24)
    transform = build_transform(image_size=SIZE)
    clone = pickle.loads(pickle.dumps(transform))
    rows = {name: ds[:2][name] for name in ds.column_names}
    first, second = transform(rows), clone(rows)
    for a, b in zip(first["pixel_values"], second["pixel_values"]):
        assert torch.equal(a, b)
    loader = DataLoader(ds.with_transform(transform), batch_size=2, collate_fn=collate_fn, num_workers=1)
    check_batch(next(iter(loader)), 2)


@pytest.mark.parametrize("names, stored, expected", [
    (["good", "defect"], [0, 1, 1], [0, 1, 1]),
    (["anomaly", "normal"], [0, 1, 1], [1, 0, 0]),
    (["NG", "OK"], [1, 0, 0], [0, 1, 1]),
])
@pytest.mark.parametrize("streaming", [False, True])
def test_label_names_are_mapped_onto_normal_anomaly(tmp_path, names, stored, expected, streaming):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [Image.new("L", (8, 8))] * 3, "label": stored}, features=features)
    ds.to_parquet(str(tmp_path / "x.parquet"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        loaded = load_anomaly_dataset(tmp_path / "x.parquet", split="test", streaming=streaming, **kwargs(tmp_path))
    assert loaded.features["label"] == FEATURES["label"]
    assert [row["label"] for row in loaded] == expected


def test_two_converted_folders_of_the_same_name_never_share_a_cache(tmp_path):
    """`datasets` keys the cache of a folder with README configs on its name: a second `same/` elsewhere
    (or a re-conversion in place) must still give its own rows."""
    from zsad.data import convert_folder, load_anomaly_dataset

    def images(root, count):
        import numpy as np
        from PIL import Image

        (root / "normal").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(root / "normal" / f"{i}.png")
        return root

    convert_folder(images(tmp_path / "a_src", 2), tmp_path / "a" / "same")
    convert_folder(images(tmp_path / "b_src", 5), tmp_path / "b" / "same")
    assert len(load_anomaly_dataset(tmp_path / "a" / "same", split="test")) == 2
    assert len(load_anomaly_dataset(tmp_path / "b" / "same", split="test")) == 5
    convert_folder(images(tmp_path / "c_src", 3), tmp_path / "a" / "same", overwrite=True)
    assert len(load_anomaly_dataset(tmp_path / "a" / "same", split="test")) == 3
