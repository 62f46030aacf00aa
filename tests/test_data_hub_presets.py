"""The Hub's MVTec AD / VisA copies by id (`zsad.data.mapping.PRESETS`) and the column, split and label
mappings. Each preset is tested on a small local copy built here with that dataset's schema and file
layout (parquet files named per split, the card's `configs`), loaded through `datasets.load_dataset`
with the Hub id redirected to the copy, so the code path is the one a Hub id takes."""

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from zsad.cli import main
from zsad.data import load_anomaly_dataset


def png(value: int, size=(8, 8), mode="RGB") -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3) if mode == "RGB" else size, value, dtype=np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_hub_copy(root, features: datasets.Features, splits: dict[str, list[dict]]) -> str:
    """A dataset repository as the Hub holds it: data/<split>-00000-of-00001.parquet + a card whose
    `configs` list the splits (split names such as `candle.test` come from the card, not the file names)."""
    (root / "data").mkdir(parents=True)
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for name, rows in splits.items():
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
        lines += [f"  - split: {name}", f"    path: data/{name}-*"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]), encoding="utf-8")
    return str(root)


@pytest.fixture
def hub_ids(monkeypatch):
    """Redirect chosen Hub ids to local copies inside `datasets.load_dataset`."""
    copies: dict[str, str] = {}
    original = datasets.load_dataset

    def load_dataset(path, *args, **kwargs):
        return original(copies.get(path, path), *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return copies


def test_dddraxxx_visa_by_id(tmp_path, hub_ids, tiny_backbone):
    # The card's schema: image, mask, image_id, anomaly (bool), vis_mask; one split per category.
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(), "image_id": datasets.Value("string"),
                                  "anomaly": datasets.Value("bool"), "vis_mask": datasets.Image()})
    rows = {
        category: [{"image": png(10 * i), "mask": png(255 * (i % 2), mode="L"), "image_id": f"{category}/{i}",
                    "anomaly": bool(i % 2), "vis_mask": png(7)} for i in range(3)]
        for category in ("candle", "pcb1")
    }
    hub_ids["dddraxxx/visa-dataset"] = write_hub_copy(tmp_path / "copy", features, rows)
    ds = load_anomaly_dataset("dddraxxx/visa-dataset", split="test")
    assert sorted(ds.column_names) == ["category", "dataset", "image", "image_id", "label", "mask"]  # vis_mask dropped
    assert ds["category"] == ["candle"] * 3 + ["pcb1"] * 3
    assert ds["label"] == [0, 1, 0] * 2 and set(ds["dataset"]) == {"visa"}
    assert ds.features["label"].names == ["normal", "anomaly"]
    assert np.asarray(ds[1]["mask"]).max() == 255
    only = load_anomaly_dataset("dddraxxx/visa-dataset", split="test", categories=["pcb1"])
    assert only["image_id"] == ["pcb1/0", "pcb1/1", "pcb1/2"]
    # `zsad evaluate` with the id alone (the README's form).
    out = tmp_path / "eval"
    assert main(["evaluate", "dddraxxx/visa-dataset", "--model", "zero-shot-clip", "--backbone", tiny_backbone,
                 "--out", str(out), "--image-size", "28"]) == 0
    metrics = json.loads((out / "visa-dataset" / "metrics.json").read_text())
    assert sorted(metrics["per_category"]) == ["candle", "pcb1"]


def test_brachiolab_visa_by_id(tmp_path, hub_ids):
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(), "label": datasets.Value("int64")})
    rows = {
        f"{category}.{split}": [{"image": png(i), "mask": None if i == 0 or split == "train" else png(255, mode="L"),
                                 "label": int(split == "test" and i > 0)} for i in range(2 if split == "train" else 3)]
        for category in ("candle", "capsules") for split in ("train", "test")
    }
    hub_ids["BrachioLab/visa"] = write_hub_copy(tmp_path / "copy", features, rows)
    ds = load_anomaly_dataset("BrachioLab/visa")
    assert sorted(ds) == ["test", "train"]  # 4 source splits -> 2, the category taken from the split name
    assert ds["train"]["category"] == ["candle"] * 2 + ["capsules"] * 2 and set(ds["train"]["label"]) == {0}
    assert ds["test"]["category"] == ["candle"] * 3 + ["capsules"] * 3
    assert ds["test"]["label"] == [0, 1, 1] * 2 and set(ds["test"]["dataset"]) == {"visa"}


def test_voxel51_mvtec_by_id(tmp_path, hub_ids):
    # FiftyOne's MVTec AD fields, flattened: the category, the defect ("good" = normal), the defect mask
    # and the split as a column of one Hub split.
    features = datasets.Features({"image": datasets.Image(), "category": datasets.Value("string"),
                                  "defect": datasets.Value("string"), "defect_mask": datasets.Image(),
                                  "split": datasets.Value("string")})
    samples = [("bottle", "good", "train"), ("bottle", "good", "test"), ("bottle", "broken_large", "test"),
               ("screw", "good", "train"), ("screw", "thread_top", "test")]
    rows = [{"image": png(i), "category": c, "defect": d, "defect_mask": None if d == "good" else png(255, mode="L"),
             "split": s} for i, (c, d, s) in enumerate(samples)]
    hub_ids["Voxel51/mvtec-ad"] = write_hub_copy(tmp_path / "copy", features, {"train": rows})
    test = load_anomaly_dataset("Voxel51/mvtec-ad", split="test")
    assert test["category"] == ["bottle", "bottle", "screw"]
    assert test["defect_type"] == ["good", "broken_large", "thread_top"] and test["label"] == [0, 1, 1]
    assert test["mask"][0] is None and np.asarray(test["mask"][1]).max() == 255
    assert set(test["dataset"]) == {"mvtec"} and "split" not in test.column_names
    assert load_anomaly_dataset("Voxel51/mvtec-ad", split="train")["defect_type"] == ["good", "good"]


def test_mappings_and_their_errors(tmp_path, capsys, tiny_backbone):
    features = datasets.Features({"img": datasets.Image(), "verdict": datasets.Value("string"), "part": datasets.Value("string")})
    rows = [{"img": png(i), "verdict": v, "part": "gear"} for i, v in enumerate(["OK", "NG", "OK", "NG"])]
    source = write_hub_copy(tmp_path / "custom", features, {"val": rows})
    mapped = load_anomaly_dataset(source, split="test", column_mapping={"img": "image", "verdict": "label", "part": "category"},
                                  split_mapping={"val": "test"}, label_mapping={"OK": 0, "NG": 1})
    assert mapped["label"] == [0, 1, 0, 1] and mapped["category"] == ["gear"] * 4
    with pytest.raises(ValueError, match=r"no column 'picture' to map \(columns: img, verdict, part\)"):
        load_anomaly_dataset(source, column_mapping={"picture": "image"})
    with pytest.raises(ValueError, match=r"label 'NG' is not in label_mapping"):
        load_anomaly_dataset(source, split="val", column_mapping={"img": "image", "verdict": "label"}, label_mapping={"OK": 0})
    with pytest.raises(ValueError, match=r"no split \['validation'\] to map; available splits: \['val'\]"):
        load_anomaly_dataset(source, split_mapping={"validation": "test"})

    # The same through the CLI flags; a missing column is one line naming the columns that exist.
    argv = ["calibrate", source, "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--split", "val",
            "--out", str(tmp_path / "cal"), "--image-column", "picture"]
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no column 'picture'" in err[0] and "columns: img, verdict, part" in err[0]
    assert main([*argv[:-2], "--image-column", "img", "--label-column", "verdict", "--label-mapping", "OK=0,NG=2"]) == 2
    assert "--label-mapping: every value must map to 0 or 1" in capsys.readouterr().err
