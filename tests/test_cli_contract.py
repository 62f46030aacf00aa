"""The practitioner contract of every command: one-line errors with exit 2, outputs that never clobber,
`--resume`, portable checkpoints, EXIF, bounded decoding, raw layouts refused, a fast offline first run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zsad.commands.detect
from zsad import AnomalyCLIPModel
from zsad.cli import main
from zsad.data import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _env(tmp_path, **extra):
    return {**os.environ, **OFFLINE_ENV, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone):
    """Inputs for the error table: images, checkpoints (good, corrupt, pickled, unknown type, moved backbone),
    a raw MVTec folder, a converted dataset, a float TIFF with NaN."""
    root = tmp_path_factory.mktemp("world")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(images / name)
    nan = np.full((16, 16), 0.5, dtype=np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan, mode="F").save(root / "nan.tiff")
    good = root / "ckpt"
    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(good)
    variants = {
        "corrupt": lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64),
        "pickled": lambda d: torch.save({"w": torch.zeros(2)}, d / "model.safetensors"),
        "unknown": lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"zsad_anomalyclip"', '"my_detector"')),
        "moved": lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace(json.dumps(tiny_backbone), json.dumps(str(root / "gone")))),
    }
    for name, damage in variants.items():
        folder = root / name
        folder.mkdir()
        for file in good.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        damage(folder)
    raw = root / "raw_mvtec" / "screw"
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (raw / sub).mkdir(parents=True)
    for sub in ("train/good", "test/good", "test/scratch"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(raw / sub / "000.png")
    Image.fromarray(np.full((16, 16), 255, dtype=np.uint8)).save(raw / "ground_truth/scratch/000_mask.png")
    make_synthetic_dataset(3, 3, size=28, textures=["grid"], seed=0).save_to_disk(str(root / "grid"))
    (root / "full").mkdir()
    (root / "full" / "old.txt").write_text("earlier results")
    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(root / "agnostic")
    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(root / "typed")
    typed = json.loads((root / "typed" / "config.json").read_text())
    (root / "typed" / "config.json").write_text(json.dumps({**typed, "image_size": "56"}))
    (root / "a-file").write_text("not a folder")
    return {"root": root, "images": images, "backbone": tiny_backbone}


def _read_only_dir(root: Path) -> str:
    if os.geteuid() != 0:
        folder = root / "read-only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o500)
        return str(folder / "out")
    if Path("/sys").is_dir():  # root ignores permission bits; sysfs refuses new folders
        return "/sys/zsad-out"
    pytest.skip("no read-only location to test")


# (name, argv with {placeholders}, text the one error line must contain)
ZSAD_ROWS = [
    ("corrupt safetensors", ["detect", "{images}", "--model", "{root}/corrupt"], "corrupt/model.safetensors"),
    ("pickle as safetensors", ["detect", "{images}", "--model", "{root}/pickled"], "pickled/model.safetensors"),
    ("negative image size", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--image-size", "-16"], "-16"),
    ("zero image size", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--image-size", "0"], "got 0"),
    ("huge image size", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--image-size", "100000"], "at most 2048"),
    ("cuda on cpu-only torch", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--device", "cuda"], "--device cuda"),
    ("out is a file", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--out", "{root}/a-file"], "a-file"),
    ("out below a file", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--out", "{root}/a-file/x"], "a-file/x"),
    ("read-only out", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--out", "{read_only}"], "cannot write"),
    ("non-empty out", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--out", "{root}/full"], "--overwrite"),
    ("evaluate batch size 0", ["evaluate", "{root}/grid", "--batch-size", "0"], "--batch-size"),
    ("evaluate negative heatmaps", ["evaluate", "{root}/grid", "--heatmaps-per-category", "-1"], "-1"),
    ("mistyped backbone path", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "random-tinyclp"], "no such file or folder: random-tinyclp"),
    ("mistyped model path", ["detect", "{images}", "--model", "./my-ckpt"], "no such file or folder: ./my-ckpt"),
    ("backbone not on this machine", ["detect", "{images}", "--model", "{root}/moved"], "--backbone DIR"),
    ("NaN float image", ["detect", "{root}/nan.tiff", "--model", "zero-shot-clip", "--backbone", "{backbone}", "--image-size", "28"], "nan.tiff has NaN"),
    ("raw MVTec folder", ["evaluate", "{root}/raw_mvtec", "--model", "zero-shot-clip", "--backbone", "{backbone}"], "zsad convert mvtec"),
    # Round 2 (issue 26): one row per new observation.
    ("export into a non-empty folder", ["export", "zero-shot-clip", "{root}/full", "--backbone", "{backbone}"], "--overwrite"),
    ("calibrate --out non-empty", ["calibrate", "{root}/grid", "--model", "zero-shot-clip", "--backbone", "{backbone}",
                                   "--out", "{root}/full"], "--overwrite"),
    ("calibrate --out unwritable", ["calibrate", "{root}/grid", "--model", "zero-shot-clip", "--backbone", "{backbone}",
                                    "--out", "{root}/a-file/x"], "cannot write to --out"),
    ("string image_size in config.json", ["detect", "{images}", "--model", "{root}/typed"], "config field image_size must be int"),
    ("misspelled --model-config", ["train", "--method", "anomalyclip", "--dataset", "{root}/grid", "--output-dir", "{root}/t",
                                   "--model-config", "num_context_token=3"], "did you mean num_context_tokens?"),
    ("--save-masks without a threshold", ["detect", "{images}", "--model", "zero-shot-clip", "--backbone", "{backbone}",
                                          "--save-masks"], "no pixel threshold"),
    ("--class-name on an object-agnostic model", ["detect", "{images}", "--model", "{root}/agnostic", "--class-name", "screw"],
     "object-agnostic prompts"),
    ("unknown registry name", ["detect", "{images}", "--model", "crane-mvtc"], "no such file or folder: crane-mvtc"),
]


@pytest.mark.parametrize(("argv", "expected"), [row[1:] for row in ZSAD_ROWS], ids=[row[0] for row in ZSAD_ROWS])
def test_zsad_user_errors_are_one_line_exit_2(world, argv, expected, tmp_path, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    values = {**{k: str(v) for k, v in world.items()}, "read_only": _read_only_dir(world["root"]) if "{read_only}" in argv else ""}
    argv = [a.format(**values) for a in argv]
    if "--out" not in argv and argv[0] in ("detect", "evaluate", "calibrate", "benchmark"):
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"zsad {argv[0]}: error: ") and expected in line


def test_unknown_model_type_never_prompts(world, tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "zsad.cli", "detect", str(world["images"]), "--model", str(world["root"] / "unknown"),
         "--out", str(tmp_path / "out")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(tmp_path), timeout=120,
    )
    assert result.returncode == 2 and time.monotonic() - start < 60
    line = _one_error_line(result.stderr)
    assert "model_type 'my_detector'" in line and "unknown/config.json" in line
    assert "[y/N]" not in result.stdout + result.stderr


def test_debug_shows_the_traceback(world, tmp_path, capsys):
    assert main(["detect", str(world["images"]), "--model", "./my-ckpt", "--out", str(tmp_path / "o"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("zsad detect: error: no such file")


@pytest.mark.parametrize("command", [
    ["convert", "mvtec", "{missing}", "{out}"],
    ["train", "--method", "anomalyclip", "--backbone", "{missing}", "--dataset", "{missing}", "--output-dir", "{out}"],
])
@pytest.mark.parametrize("debug_first", [True, False])
def test_debug_before_or_after_convert_and_train(command, debug_first, tmp_path, capsys):
    """`convert` and `train` parse their own options: `zsad --debug train ...` works as `zsad train ... --debug`."""
    argv = [a.format(missing=tmp_path / "missing", out=tmp_path / "out") for a in command]
    assert main(["--debug", *argv] if debug_first else [*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith(f"zsad {command[0]}: error: ")
    assert str(tmp_path / "missing") in err.strip().splitlines()[-1]
    assert main(argv) == 2 and "Traceback" not in capsys.readouterr().err


def test_offline_first_run_fails_fast_with_the_recipe(tmp_path):
    """No network, no cache, no HF_HUB_OFFLINE: one line within 10 s, not a minute of retries."""
    env = _env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on the discard port
    env.pop("HF_HUB_OFFLINE")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "zsad.cli", "detect", str(ROOT / "examples" / "images"),
                             "--out", str(tmp_path / "out")], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, env=env, timeout=120)
    elapsed = time.monotonic() - start
    line = _one_error_line(result.stderr)
    assert result.returncode == 2 and elapsed < 10, (elapsed, line)
    assert "cannot download the CLIP backbone 'openai/clip-vit-large-patch14-336'" in line
    assert "--backbone DIR" in line and "python -m zsad.testing" in line


TRAIN_ROWS = [
    ("bad dataset", ["--dataset", "{root}/no-such-data"], "no-such-data"),
    ("mistyped dataset name", ["--dataset", "mvtec_typo"],
     "dataset not found: there is no local file or folder {cwd}/mvtec_typo, and 'mvtec_typo' is not a reachable Hub"),
    ("bad category", ["--dataset", "{root}/grid", "--categories", "bottle"], "bottle"),
    ("batch size 0", ["--dataset", "{root}/grid", "--train_batch_size", "0"], "got 0"),
    ("existing output dir", ["--dataset", "{root}/grid", "--output_dir", "{root}/full"], "--overwrite"),
]


@pytest.mark.parametrize("entry", ["train.py", "zsad train"])
@pytest.mark.parametrize(("argv", "expected"), [row[1:] for row in TRAIN_ROWS], ids=[row[0] for row in TRAIN_ROWS])
def test_train_user_errors_are_one_line_exit_2(world, entry, argv, expected, tmp_path, monkeypatch, capsys):
    """Through examples/train.py in a subprocess, and through `zsad train` in this process."""
    argv = ["--method", "anomalyclip", "--backbone", world["backbone"], "--image_size", "28",
            *(a.format(root=world["root"]) for a in argv)]
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(tmp_path / "out")]
    if entry == "train.py":
        result = subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), *argv], cwd=tmp_path,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
        code, stderr = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        code, stderr = main(["train", *argv]), capsys.readouterr().err
    assert code == 2
    line = _one_error_line(stderr)
    assert line.startswith(f"{entry}: error: ") and expected.format(cwd=tmp_path) in line
    assert sorted(p.name for p in (world["root"] / "full").iterdir()) == ["old.txt"]  # nothing written


# ------------------------------------------------------------------------------------------ outputs
def _detect(images, backbone, out, *extra):
    return main(["detect", str(images), "--model", "zero-shot-clip", "--backbone", backbone, "--out", str(out), "--image-size", "28", "--quiet", *extra])


def test_overlays_are_unique_for_same_stem_inputs(tiny_backbone, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    pixels = np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    for name in ("part.jpg", "part.png", "sub/part.png", "other.png"):
        Image.fromarray(pixels).save(folder / name)
    assert _detect(folder, tiny_backbone, tmp_path / "out") == 0
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    overlays = [row["overlay"] for row in rows]
    assert len(rows) == 4 and len(set(overlays)) == 4 and "overlays/other.png" in overlays
    assert len(list((tmp_path / "out" / "overlays").iterdir())) == 4


def test_non_empty_output_needs_overwrite(tiny_backbone, tmp_path, capsys):
    images = ROOT / "examples" / "images"
    assert _detect(images, tiny_backbone, tmp_path / "out") == 0
    assert _detect(images, tiny_backbone, tmp_path / "out") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _detect(images, tiny_backbone, tmp_path / "out", "--overwrite") == 0


def test_resume_equals_an_uninterrupted_run_and_recomputes_nothing(tiny_backbone, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for index in range(5):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    assert _detect(folder, tiny_backbone, tmp_path / "full", "--batch-size", "2") == 0

    # Ctrl-C in the forward loop, on the third batch: the first two batches' outputs are finished and kept.
    import zsad.commands.detect as detect

    real_load, forwards = detect.load_detector, []

    def interrupted_model(*args, **kwargs):
        model = real_load(*args, **kwargs)
        real_forward = model.forward

        def forward(*a, **k):
            forwards.append(1)
            if len(forwards) == 3:
                raise KeyboardInterrupt
            return real_forward(*a, **k)

        model.forward = forward
        return model

    monkeypatch.setattr(detect, "load_detector", interrupted_model)
    assert _detect(folder, tiny_backbone, tmp_path / "resumed", "--batch-size", "2", "--num-workers", "0") == 130
    assert "--resume" in capsys.readouterr().err
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed" / "overlays").iterdir()}
    assert len(finished) == 3  # broken.png + img0, img1 + img2 (sorted): 3 overlays, 1 unreadable

    import zsad.data.loader

    real_rgb, loaded = zsad.data.loader.load_rgb, []
    monkeypatch.setattr(detect, "load_detector", real_load)
    monkeypatch.setattr(zsad.data.loader, "load_rgb", lambda path, **kw: loaded.append(Path(path).name) or real_rgb(path, **kw))
    # Decoding in this process (--num-workers 0), so that the files it opens are seen here.
    assert _detect(folder, tiny_backbone, tmp_path / "resumed", "--batch-size", "2", "--resume", "--num-workers", "0") == 0
    assert "4 from the earlier run" in capsys.readouterr().out  # 3 scored, 1 recorded as unreadable
    assert sorted(loaded) == ["img3.png", "img4.png"]  # broken.png (recorded as unreadable) is not retried
    for name, mtime in finished.items():
        assert (tmp_path / "resumed" / "overlays" / name).stat().st_mtime_ns == mtime
    assert (tmp_path / "full" / "scores.csv").read_text() == (tmp_path / "resumed" / "scores.csv").read_text()
    for overlay in (tmp_path / "full" / "overlays").iterdir():
        assert overlay.read_bytes() == (tmp_path / "resumed" / "overlays" / overlay.name).read_bytes()
    full, resumed = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("full", "resumed"))
    assert full == resumed and full["complete"]
    statuses = [r["status"] for r in full["results"]]
    assert statuses.count("ok") == 5 and statuses.count("unreadable") == 1


def test_resume_refuses_other_settings(tiny_backbone, tmp_path, capsys):
    images = ROOT / "examples" / "images"
    assert _detect(images, tiny_backbone, tmp_path / "out") == 0
    assert main(["detect", str(images), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--out", str(tmp_path / "out"),
                 "--image-size", "56", "--resume", "--quiet"]) == 2
    assert "image_size = 28, not 56" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ images and data
def panel_size(width: int, height: int, title: str) -> tuple[int, int]:
    """Size of `zsad detect`'s panel (original | overlay | colour bar) of a `width` x `height` image."""
    from zsad.visualize import anomaly_panel

    return anomaly_panel(Image.new("RGB", (width, height)), np.zeros((height, width)), score=0.5, title=title).size


def test_exif_rotated_jpeg_gives_an_upright_overlay(tiny_backbone, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    stored = Image.fromarray(np.random.default_rng(3).integers(0, 255, (20, 40, 3), dtype=np.uint8))  # 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(folder / "phone.jpg", exif=exif)
    assert _detect(folder, tiny_backbone, tmp_path / "out") == 0
    assert panel_size(20, 40, "phone.jpg") != panel_size(40, 20, "phone.jpg")
    # displayed 20 wide, 40 tall: the panel holds the upright image
    assert Image.open(tmp_path / "out" / "overlays" / "phone.png").size == panel_size(20, 40, "phone.jpg")


def test_large_images_are_decoded_small_and_overlays_bounded(tiny_backbone, tmp_path, monkeypatch):
    from zsad.clip.processing import load_image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (200, 320, 3), dtype=np.uint8)).save(folder / "big.jpg")
    assert load_image(folder / "big.jpg", max_side=64).size == (160, 100)  # JPEG draft: decoded at 1/2 scale
    monkeypatch.setattr(zsad.commands.detect, "MAX_OVERLAY_SIDE", 64)
    assert _detect(folder, tiny_backbone, tmp_path / "out") == 0
    assert Image.open(tmp_path / "out" / "overlays" / "big.png").size == panel_size(64, 40, "big.jpg")


def test_float_images_outside_unit_range_are_rescaled_with_a_warning():
    from zsad.clip.processing import to_rgb

    image = Image.fromarray(np.array([[0.0, 2.0], [4.0, 8.0]], dtype=np.float32), mode="F")
    with pytest.warns(UserWarning, match=r"scan.tif: pixel values span \[0, 8\]"):
        rgb = np.asarray(to_rgb(image, name="scan.tif"))[..., 0]
    assert rgb.tolist() == [[0, 64], [128, 255]]  # scaled, not clipped to 1.0


def test_evaluate_heatmaps_include_anomalous_images(tiny_backbone, tmp_path):
    data = tmp_path / "grid"
    make_synthetic_dataset(4, 2, size=28, textures=["grid"], seed=0).save_to_disk(str(data))
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--out", str(out), "--image-size", "28",
                 "--heatmaps-per-category", "1"]) == 0
    saved = [p.name for p in (out / "grid" / "heatmaps").rglob("*.png")]
    assert len(saved) == 1 and saved[0].startswith("anomaly_")


# --------------------------------------------------------------------------------------- checkpoints
def test_local_backbone_is_stored_absolute(tiny_backbone, tmp_path, monkeypatch):
    backbone = Path(tiny_backbone)
    monkeypatch.chdir(backbone.parent)
    model = AnomalyCLIPModel.from_backbone(backbone.name, image_size=28)
    model.save_pretrained(tmp_path / "ckpt")
    stored = json.loads((tmp_path / "ckpt" / "config.json").read_text())["backbone_name_or_path"]
    assert stored == str(backbone.resolve())
    assert all(f.stat().st_mode & 0o077 for f in (tmp_path / "ckpt").iterdir())  # not private (0600) files
    monkeypatch.chdir(tmp_path)  # loads from anywhere
    assert AnomalyCLIPModel.from_pretrained(tmp_path / "ckpt").config.backbone_name_or_path == stored


# ---------------------------------------------------------------------------------------- training
def test_ctrl_c_saves_a_checkpoint_and_resuming_repeats_no_step(world, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "examples" / "train.py"), "--method", "anomalyclip", "--backbone",
               world["backbone"], "--dataset", str(world["root"] / "grid"), "--image-size", "28",
               "--train-batch-size", "2", "--checkpointing-steps", "2", "--output-dir", str(out)]
    process = subprocess.Popen([*command, "--max-train-steps", "10000"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        log = out / "train_log.jsonl"
        while process.poll() is None and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("train.py: interrupted at step") and "--resume_from_checkpoint latest" in message
    stopped = int(message.split("interrupted at step ")[1].split(";")[0])
    with open(log, "a") as handle:  # a crash after the checkpoint would leave steps the resumed run repeats
        handle.write(json.dumps({"step": stopped + 1, "epoch": 0, "loss": 0.0}) + "\n")
    resumed = subprocess.run([*command, "--max-train-steps", str(stopped + 2), "--resume-from-checkpoint", "latest"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, stopped + 3))


def test_help_and_version_import_neither_torch_nor_transformers():
    code = ("import sys\nfrom zsad.cli import main\n"
            "assert main(['--help']) == 0 and main(['--version']) == 0 and main(['detect', '--help']) == 0\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_import_zsad_then_transformers_registers_the_models(tmp_path, tiny_backbone):
    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path / "ckpt")
    for first in ("import zsad", "import zsad.modeling_base"):  # zsad first; and zsad itself importing transformers
        code = (f"{first}\nfrom transformers import AutoModel\n"
                f"print(type(AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=False)).__name__)")
        result = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                env=_env(tmp_path), timeout=300)
        assert result.stdout.strip().splitlines()[-1:] == ["AnomalyCLIPModel"], (first, result.stderr[-2000:])
