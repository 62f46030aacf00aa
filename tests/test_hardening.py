"""Practitioner hardening, round 2 (issue 26): output folders are claimed (locked, checked) before any work,
results are replaced atomically, and every command that writes a folder honours --overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_two_detect_runs_into_one_new_folder_the_second_is_refused_naming_the_holder(tiny_backbone, tmp_path):
    """Observed: two `zsad detect` started together into one new --out both exited 0 and one run was lost."""
    out = tmp_path / "shared_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def start(images):
        return subprocess.Popen([sys.executable, "-m", "zsad.cli", "detect", str(images), "--model", "zero-shot-clip",
                                 "--backbone", tiny_backbone, "--image-size", "28", "--batch-size", "1", "--out", str(out),
                                 "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    import signal

    first = start(_images(tmp_path / "many", 20))
    deadline = time.monotonic() + 60
    while not (out / ".zsad-lock.json").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # paused while it holds the folder, however fast this machine is
    try:
        second = start(_images(tmp_path / "four", 4))
        second_out, second_err = second.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    lines = second_err.strip().splitlines()
    assert len(lines) == 1 and str(out.resolve()) in lines[0] and "in use by zsad detect" in lines[0]
    assert f"pid {first.pid}" in lines[0]
    assert "scored 20 image(s)" in first_out
    rows = (out / "scores.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 20  # the first run's results, whole
    assert not (out / ".zsad-lock").exists() and not (out / ".zsad-lock.json").exists()  # released at exit


def test_results_are_replaced_atomically(tmp_path, monkeypatch):
    from zsad import file_modes

    target = tmp_path / "scores.json"
    target.write_text("old complete file")

    def broken_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(file_modes.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        file_modes.write_text_atomic(target, "new " * 10000)
    assert target.read_text() == "old complete file"  # never half a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]  # no temporary left behind


# Every subcommand: how it is called to write into a folder, or why it writes none. A new subcommand that is
# missing here fails the test below, so it cannot forget the output-folder rule.
FOLDER_WRITERS = {
    "detect": lambda w: ["detect", w["images"], "--model", "zero-shot-clip", "--backbone", w["backbone"], "--out", w["full"]],
    "evaluate": lambda w: ["evaluate", w["data"], "--model", "zero-shot-clip", "--backbone", w["backbone"], "--out", w["full"]],
    "benchmark": lambda w: ["benchmark", "--model", "crane-mvtec", "--dataset", f"mpdd={w['data']}", "--out", w["full"]],
    "calibrate": lambda w: ["calibrate", w["data"], "--model", "zero-shot-clip", "--backbone", w["backbone"], "--out", w["full"]],
    "export": lambda w: ["export", "zero-shot-clip", w["full"], "--backbone", w["backbone"]],
    "convert": lambda w: ["convert", "folder", w["folder_layout"], w["full"]],
    "train": lambda w: ["train", "--method", "anomalyclip", "--backbone", w["backbone"], "--dataset", w["data"],
                        "--output-dir", w["full"]],
    "import-checkpoint": lambda w: ["import-checkpoint", "crane", w["pth"], w["full"]],
}
NO_FOLDER = {"models": "prints the registry", "push": "uploads to the Hub",
             "demo": "serves a web app (the map downloads go to a temporary folder of its own)"}


def test_every_command_that_writes_a_folder_refuses_a_non_empty_one(tiny_backbone, tmp_path, capsys):
    subcommands = set(next(a for a in build_parser()._actions if isinstance(a.choices, dict)).choices)
    assert subcommands == set(FOLDER_WRITERS) | set(NO_FOLDER) and len(subcommands) == len(COMMANDS)
    from zsad.data import make_synthetic_dataset

    make_synthetic_dataset(2, 2, size=28, textures=["grid"], seed=0).save_to_disk(str(tmp_path / "data"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("someone's file")
    world = {"images": str(_images(tmp_path / "images", 2)), "backbone": tiny_backbone, "data": str(tmp_path / "data"),
             "full": str(full), "pth": str(tmp_path / "file.pth"),
             "folder_layout": str(_images(tmp_path / "parts" / "normal", 2).parent)}
    (tmp_path / "file.pth").write_bytes(b"")
    for name, argv in FOLDER_WRITERS.items():
        capsys.readouterr()
        assert main(argv(world)) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(full) in err[0], (name, err)
        assert "--overwrite" in err[0] or "empty" in err[0], (name, err)
        assert sorted(p.name for p in full.iterdir()) == ["keep.txt"], name  # nothing written, no lock left
        assert (full / "keep.txt").read_text() == "someone's file"


@pytest.mark.parametrize("name", ["detect", "evaluate", "benchmark", "calibrate", "export"])
def test_the_output_is_checked_before_any_model_is_loaded(name, tiny_backbone, tmp_path, capsys, monkeypatch):
    """Observed: calibrate --out on an unwritable path failed only after 121 s of scoring. Every command
    that loads a model now claims its output first: loading would fail this test."""
    import importlib

    module = importlib.import_module(f"zsad.commands.{name}")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(module, "load_detector", no_loading)
    (tmp_path / "a-file").write_text("x")
    world = {"images": str(_images(tmp_path / "images", 1)), "backbone": tiny_backbone, "data": str(tmp_path),
             "full": str(tmp_path / "a-file" / "out"), "pth": "", "folder_layout": ""}
    assert main(FOLDER_WRITERS[name](world)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to" in err[0] and "a-file/out" in err[0], err


def test_detect_saves_maps_and_masks_at_each_images_size(tiny_backbone, tmp_path, capsys):
    import torch
    import torch.nn.functional as F

    from zsad import ZeroShotCLIPModel, ZSADImageProcessor

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(images / "wide.png")
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    model.config.pixel_threshold = 0.45
    model.save_pretrained(tmp_path / "thresholded")
    argv = ["detect", str(images), "--model", str(tmp_path / "thresholded"), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "npy"), "--save-maps", "npy", "--save-masks"]) == 0
    assert main([*argv, "--out", str(tmp_path / "png"), "--save-maps", "png"]) == 0
    with torch.no_grad():
        raw = model(ZSADImageProcessor(image_size=28)([Image.open(images / "wide.png")])["pixel_values"]).anomaly_maps
    expected = F.interpolate(raw[:, None], size=(30, 44), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    saved = np.load(tmp_path / "npy" / "maps" / "wide.npy")
    assert saved.dtype == np.float16 and saved.shape == (30, 44)
    assert np.abs(saved.astype(np.float32) - expected).max() < 1e-3
    sixteen = np.asarray(Image.open(tmp_path / "png" / "maps" / "wide.png"))
    assert sixteen.shape == (30, 44) and sixteen.dtype.itemsize == 2
    assert np.abs(sixteen / 65535 - expected).max() < 1e-4
    mask = np.asarray(Image.open(tmp_path / "npy" / "masks" / "wide.png"))
    assert mask.shape == (30, 44) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, expected >= 0.45) or np.mean((mask == 255) != (expected >= 0.45)) < 0.01

    ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path / "plain")
    capsys.readouterr()
    assert main(["detect", str(images), "--model", str(tmp_path / "plain"), "--out", str(tmp_path / "no"),
                 "--save-masks", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-masks" in err[0] and "zsad calibrate" in err[0]


def test_folder_search_finds_gifs(tiny_backbone, tmp_path):
    """Observed: a folder of GIFs gave "no images" although PIL reads them."""
    from zsad.commands.detect import find_images

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.gif")
    (tmp_path / "notes.h5").write_bytes(b"not an image")
    assert find_images([str(tmp_path)]) == [tmp_path / "a.gif"]


def test_train_help_lists_each_option_once(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--output-dir" in out and "--output_dir OUTPUT_DIR" not in out and "--output_dir," not in out
    assert out.count("--train-batch-size") == 2  # the usage line and the options list


def test_sigterm_stops_training_like_ctrl_c_with_a_checkpoint_and_the_resume_command(tiny_backbone, tmp_path):
    """Schedulers and `timeout` send SIGTERM: training saves its state and prints how to resume."""

    from zsad.data import make_synthetic_dataset

    make_synthetic_dataset(4, 4, size=28, textures=["grid"], seed=0).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "zsad.cli", "train", "--method", "anomalyclip", "--backbone", tiny_backbone, "--dataset",
         str(tmp_path / "data"), "--image-size", "28", "--train-batch-size", "2", "--checkpointing-steps", "1000",
         "--max-train-steps", "100000", "--output-dir", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    stderr = _terminate_once_written(process, out / "train_log.jsonl", lines=2)
    assert process.returncode == 130, stderr[-2000:]
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("zsad train: interrupted at step") and "state saved in" in message
    assert "zsad train" in message.split("to resume:")[1] and "--resume_from_checkpoint latest" in message
    stopped = int(message.split("interrupted at step ")[1].split(";")[0])
    saved = [p for p in (out / "checkpoints").iterdir() if (p / "zsad_training_state.json").is_file()]
    assert len(saved) == 1
    assert json.loads((saved[0] / "zsad_training_state.json").read_text())["global_step"] == stopped


def _terminate_once_written(process: subprocess.Popen, path: Path, lines: int) -> str:
    """SIGTERM to `process` once `path` has `lines` lines (paused around the signal, so that it arrives mid-run
    however fast the machine); returns its stderr."""
    import signal

    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and not (path.is_file() and path.read_text().count("\n") >= lines) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGSTOP)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        return process.communicate(timeout=120)[1]
    finally:
        process.kill()


def test_sigterm_stops_detect_like_ctrl_c_keeping_the_finished_rows(tiny_backbone, tmp_path):

    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "zsad.cli", "detect", str(_images(tmp_path / "images", 100)), "--model", "zero-shot-clip",
         "--backbone", tiny_backbone, "--image-size", "28", "--batch-size", "1", "--out", str(out), "--quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    scores = out / "scores.csv"
    stderr = _terminate_once_written(process, scores, lines=5)
    assert process.returncode == 130, stderr[-2000:]
    assert "to continue, run the same command with --resume" in stderr
    assert scores.read_text().count("\n") >= 5  # the rows scored before the signal are kept


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("image_size", "56", "config field image_size must be int | None; got '56' (str)"),
    ("deep_prompt_length", "many", "config field deep_prompt_length must be int; got 'many' (str)"),
    ("feature_layers", [4, "last"], "config field feature_layers must be"),
])
def test_a_saved_config_value_of_the_wrong_type_is_one_line_naming_file_field_and_value(
        field, value, expected, tiny_backbone, tmp_path, capsys):
    """Observed: `image_size: "56"` in config.json ended as exit 1 'internal error: TypeError'."""

    from zsad import AnomalyCLIPModel

    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["detect", str(_images(tmp_path / "images", 1)), "--model", str(tmp_path / "ckpt"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and expected in err[0], err


@pytest.mark.parametrize(("override", "expected"), [
    ("num_context_tokens=\"many\"", "--model-config: config field num_context_tokens must be int; got 'many'"),
    ("num_context_token=3", "num_context_token is not a field of AnomalyCLIPConfig; did you mean num_context_tokens?"),
    ("bogus_key=3", "bogus_key is not a field of AnomalyCLIPConfig"),
])
def test_model_config_overrides_are_typed_and_closed(override, expected, tmp_path, capsys):
    """Observed: a misspelled --model-config bogus_key=3 was accepted and saved into the checkpoint."""
    assert main(["train", "--method", "anomalyclip", "--dataset", str(tmp_path), "--output-dir", str(tmp_path / "o"),
                 "--model-config", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_an_unknown_field_in_a_saved_config_loads_with_a_warning(tiny_backbone, tmp_path):

    from zsad import AnomalyCLIPModel

    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "feature_from_the_future": 1}))
    with pytest.warns(UserWarning, match="feature_from_the_future"):
        model = AnomalyCLIPModel.from_pretrained(tmp_path / "ckpt")
    assert model.config.image_size == 28


@pytest.mark.parametrize("case", ["python_api", "import_checkpoint", "crane_plus_dino"])
def test_without_the_hub_every_download_fails_within_seconds_with_the_recipe(case, tiny_backbone, tmp_path):
    """Observed: the Python API and `zsad import-checkpoint` without --backbone spent ~50 s in retries; Crane+'s
    DINOv2 download failed after 23 s with no recipe. No HF_HUB_OFFLINE here: the Hub simply does not answer."""
    code = {
        "python_api": "from zsad import ZeroShotCLIPModel\nZeroShotCLIPModel.from_backbone('openai/clip-vit-large-patch14-336')",
        "import_checkpoint": f"import sys\nfrom zsad.cli import main\nsys.exit(main(['import-checkpoint', 'crane', "
                             f"{str(tmp_path / 'trained_on_mvtec_crane' / 'epoch_5.pth')!r}, {str(tmp_path / 'out')!r}]))",
        "crane_plus_dino": f"from zsad import CraneModel\nCraneModel.from_backbone({tiny_backbone!r}, dino_attention=True)",
    }[case]
    released = ROOT.parent / "shared" / "checkpoints" / "crane" / "trained_on_mvtec_crane" / "epoch_5.pth"
    if case == "import_checkpoint":
        if not released.is_file():
            pytest.skip("../shared is absent")
        (tmp_path / "trained_on_mvtec_crane").mkdir()
        (tmp_path / "trained_on_mvtec_crane" / "epoch_5.pth").write_bytes(released.read_bytes())
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # nothing listens there
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 15, (elapsed, result.stderr[-1500:])
    assert "no connection to http://127.0.0.1:9" in result.stderr
    assert "python -m zsad.testing --out DIR" in result.stderr or "DIR with a local copy" in result.stderr


def test_the_pipeline_loads_a_zsad_checkpoint_without_asking_about_remote_code(tiny_backbone, tmp_path):
    """Observed: pipeline("zero-shot-anomaly-detection", model=DIR) printed "Do you wish to run the custom
    code? [y/N]" (the checkpoint's auto_map, seen by transformers' video-processor lookup)."""
    from zsad import AnomalyCLIPModel

    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path / "ckpt")
    code = ("import builtins, sys\n"
            "def asked(*args):\n    sys.stderr.write('ASKED: ' + str(args[:1]))\n    raise SystemExit(3)\n"
            "builtins.input = asked\n"
            "import zsad\nfrom transformers import pipeline\n"
            f"detector = pipeline('zero-shot-anomaly-detection', model={str(tmp_path / 'ckpt')!r})\n"
            "print(type(detector.model).__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 0 and "ASKED" not in result.stderr, result.stderr[-1500:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "AnomalyCLIPModel"


def test_a_batch_jobs_log_shows_progress_lines_and_no_library_noise(tiny_backbone, tmp_path):
    """stderr is a file here, as in a scheduler's log: progress arrives as plain lines (every tenth of the
    work, at most one per ZSAD_PROGRESS_INTERVAL seconds), the libraries' INFO lines and bars do not."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZSAD_PROGRESS_INTERVAL": "0"}
    for name in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "HF_HUB_VERBOSITY"):
        env.pop(name, None)
    log = tmp_path / "job.log"
    with open(log, "w") as handle:
        result = subprocess.run([sys.executable, "-m", "zsad.cli", "detect", str(_images(tmp_path / "images", 20)),
                                 "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", "28",
                                 "--batch-size", "2", "--out", str(tmp_path / "out")],
                                stdout=subprocess.PIPE, stderr=handle, text=True, env=env, timeout=300)
    assert result.returncode == 0
    lines = log.read_text().splitlines()
    assert lines == [f"zsad detect: {n}/20 img ({5 * n}%)," + line.split(",", 1)[1] for n, line in zip(range(2, 21, 2), lines)]
    assert not any("Loading weights" in line or "\r" in line for line in lines)


def test_evaluate_panels_are_drawn_on_the_original_image_and_stay_readable(tiny_backbone, tmp_path):
    """Observed: a 56 px run gave 160x79 panels (the model's input, squashed) with cut-off titles."""
    from zsad.data import make_synthetic_dataset

    make_synthetic_dataset(1, 1, size=96, textures=["grid"], seed=0).save_to_disk(str(tmp_path / "data"))
    assert main(["evaluate", str(tmp_path / "data"), "--model", "zero-shot-clip", "--backbone", tiny_backbone,
                 "--image-size", "28", "--heatmaps-per-category", "2", "--out", str(tmp_path / "eval")]) == 0
    panels = sorted((tmp_path / "eval" / "data" / "heatmaps").rglob("*.png"))
    assert len(panels) == 2
    for path in panels:
        width, height = Image.open(path).size
        assert height > 256 and width >= 2 * 256  # the 96 px original, enlarged to the readable 256 px
    # The panel's left third is the original image (enlarged), not the 28 px model input.
    from zsad.visualize import anomaly_panel

    original = Image.new("RGB", (96, 64), (200, 10, 10))
    panel = anomaly_panel(original, np.zeros((28, 28)), score=0.5, title="a rather long title that must fit.png")
    assert panel.height > 256 * 64 // 96 and panel.getpixel((10, panel.height - 10)) == (200, 10, 10)


def test_convert_names_a_zero_byte_image_without_a_misleading_warning_first(tmp_path, capsys):
    """Observed: `convert mvtec` on a zero-byte image printed a "no mask" warning before the real error."""
    category = tmp_path / "src" / "screw"
    for sub in ("test/good", "test/scratch", "ground_truth/scratch"):
        (category / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(category / "test/good/000.png")
    (category / "test/scratch/001.png").write_bytes(b"")  # zero bytes, and no mask either
    assert main(["convert", "mvtec", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "001.png" in err[0] and "corrupt or unreadable image" in err[0], err


def test_evaluate_resume_gives_the_metrics_of_an_uninterrupted_run_and_rescores_nothing(tiny_backbone, tmp_path, capsys,
                                                                                        monkeypatch):

    from zsad.data import make_synthetic_dataset
    from zsad.models.zsad_clip.modeling_zsad_clip import ZeroShotCLIPModel

    make_synthetic_dataset(5, 5, size=28, textures=["grid", "dots"], seed=0).save_to_disk(str(tmp_path / "data"))
    argv = ["evaluate", str(tmp_path / "data"), "--model", "zero-shot-clip", "--backbone", tiny_backbone,
            "--image-size", "28", "--batch-size", "3"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    calls = []
    forward = ZeroShotCLIPModel.forward

    def counted(self, *args, **kwargs):
        calls.append(kwargs["pixel_values"].shape[0])
        if len(calls) == 3 and not resumed:
            raise KeyboardInterrupt  # Ctrl-C or SIGTERM during the third batch
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ZeroShotCLIPModel, "forward", counted)
    resumed = False
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "cut")]) == 130
    assert "to continue, run the same command with --resume" in capsys.readouterr().err
    calls.clear()
    resumed = True
    assert main([*argv, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert sum(calls) == 20 - 2 * 3  # only the images the interrupted run had not scored
    whole = json.loads((tmp_path / "whole" / "data" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "data" / "metrics.json").read_text())
    assert cut == whole
    assert not (tmp_path / "cut" / "data" / "partial").exists()
    assert main([*argv, "--out", str(tmp_path / "cut"), "--resume", "--aupro", "binned"]) == 2  # other settings


def test_push_dry_run_lists_the_training_log_and_the_docs_say_it_is_uploaded(tiny_backbone, tmp_path, capsys):
    """Observed: `push --dry-run` listed train_log.jsonl although the docs did not say it was uploaded."""
    from zsad import AnomalyCLIPModel

    folder = tmp_path / "trained"
    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(folder)
    (folder / "train_log.jsonl").write_text('{"step": 1, "epoch": 0, "loss": 1.0}\n')
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "state.bin").write_bytes(b"x")
    (folder / ".zsad-lock").write_text("")
    assert main(["push", str(folder), "acme/trained", "--dry-run"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert "train_log.jsonl" in listed and not any(name.startswith(("checkpoints", ".zsad")) for name in listed)
    push_docs = (ROOT / "docs" / "cli.md").read_text().split("## `zsad push`")[1]
    assert "train_log.jsonl" in push_docs.split("##")[0]


def test_calibrate_takes_image_size_and_the_options_have_help_text(tiny_backbone, tmp_path, capsys):
    from zsad.data import make_synthetic_dataset

    make_synthetic_dataset(3, 3, size=40, textures=["grid"], seed=0).save_to_disk(str(tmp_path / "data"))
    assert main(["calibrate", str(tmp_path / "data"), "--model", "zero-shot-clip", "--backbone", tiny_backbone,
                 "--image-size", "28", "--out", str(tmp_path / "calibrated"), "--quiet"]) == 0
    assert main(["calibrate", str(tmp_path / "data"), "--model", "zero-shot-clip", "--image-size", "0",
                 "--out", str(tmp_path / "other")]) == 2
    capsys.readouterr()
    subparsers = next(a for a in build_parser()._actions if isinstance(a.choices, dict)).choices
    for command in ("detect", "evaluate", "benchmark", "calibrate", "export", "models", "import-checkpoint", "push"):
        undocumented = [action.option_strings or [action.dest] for action in subparsers[command]._actions
                        if not action.help]
        assert not undocumented, (command, undocumented)  # every option says what it does
