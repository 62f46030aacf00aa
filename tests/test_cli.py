"""`zsad detect` end to end on a tiny backbone and a folder of mixed, partly broken images."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zsad import AnomalyCLIPModel
from zsad.cli import main


@pytest.fixture()
def mixed_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)).save(folder / "sub" / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert("P").save(folder / "sub" / "gray.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "notes.txt").write_text("ignored")
    assert Image.open(folder / "sixteen.png").mode == "I;16"
    return folder


def test_detect_folder_with_training_free_model(tiny_backbone, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["detect", str(mixed_folder), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--out", str(out), "--image-size", "28", "--batch-size", "2", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert "corrupt.png" in captured.err and captured.err.count("warning:") == 1
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6  # every input, once, with a status
    statuses = {os.path.basename(r["image"]): r["status"] for r in rows}
    assert statuses == {"gray.png": "ok", "rgba.png": "ok", "sixteen.png": "ok", "photo.jpg": "ok", "corrupt.png": "unreadable"}
    scored = [r for r in rows if r["status"] == "ok"]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in scored)
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == 5 and len(set(overlays)) == 5  # the two gray.png do not collide
    for row in scored:  # a panel per image: the image and its overlay at the image's own size, side by side
        (width, height), (panel_width, panel_height) = Image.open(row["image"]).size, Image.open(out / row["overlay"]).size
        assert panel_width > 2 * width and panel_height > height
    summary = json.loads((out / "scores.json").read_text())
    assert summary["model"] == "zero-shot-clip" and len(summary["results"]) == 6 and summary["complete"]


def test_detect_with_a_trained_checkpoint_and_globs(tiny_backbone, mixed_folder, tmp_path):
    checkpoint = tmp_path / "ckpt"
    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(checkpoint)
    out = tmp_path / "out"
    code = main(["detect", str(mixed_folder / "*.png"), "--model", str(checkpoint), "--out", str(out), "--quiet"])
    assert code == 0
    assert json.loads((out / "scores.json").read_text())["image_size"] == 28
    assert len(list((out / "overlays").iterdir())) == 3


def test_unknown_model_exits_2_with_one_line(mixed_folder, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "zsad.cli", "detect", str(mixed_folder), "--model", "nowhere/no-such-model", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zsad detect: error: cannot load model 'nowhere/no-such-model'")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["detect", "{missing}"], "no such file or folder"),
        (["detect", "{empty}"], "no images"),
        (["detect", "{pattern}"], "no file matches"),
    ],
)
def test_bad_inputs_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    paths = {"missing": str(tmp_path / "nope.png"), "empty": str(tmp_path / "empty"), "pattern": str(tmp_path / "*.jpg")}
    assert main([a.format(**paths) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "detect" in capsys.readouterr().err


def test_train_help_lists_the_training_flags(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: zsad train ")
    for flag in ("--method", "--dataset", "--backbone", "--train-batch-size", "--max-train-steps",
                 "--resume-from-checkpoint", "--output-dir", "--overwrite", "--debug"):
        assert flag in out, flag
    assert "accelerate launch -m zsad.train" in out  # how to train on several GPUs
    assert main(["--help"]) == 0 and "train " in capsys.readouterr().out
