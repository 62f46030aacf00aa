"""`accelerate launch examples/train.py` / `examples/evaluate.py` and `zsad train` in subprocesses (diffusers' pattern)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from zsad.data import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    from accelerate.utils import write_basic_config

    config = tmp_path_factory.mktemp("accelerate") / "default_config.yaml"
    write_basic_config(mixed_precision="no", save_location=str(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))}

    def run(script, *args, num_processes=1, check=True):
        target = [str(ROOT / "examples" / script)] if script.endswith(".py") else ["-m", script]
        if num_processes == 1:
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--cpu",
                       "--num_processes", "1", *target, *map(str, args)]
        else:  # `accelerate launch --cpu --num_processes N` starts one process; gloo processes need torchrun
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
                       "--master_port", str(free_port()), *target, *map(str, args)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                env={**env, "ACCELERATE_USE_CPU": "true"} if num_processes > 1 else env)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
        return result

    return run


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(6, 6, size=32, textures=["grid"], seed=0).save_to_disk(str(folder / "grid"))
    image_only = make_synthetic_dataset(4, 4, size=32, textures=["dots"], seed=1).remove_columns(["mask"])
    make_synthetic_dataset(4, 4, size=32, textures=["dots"], seed=2).save_to_disk(str(folder / "dots"))
    image_only.save_to_disk(str(folder / "image_only"))
    return folder


def _train_args(backbone, data, out, steps):
    return ["--method", "anomalyclip", "--backbone", backbone, "--dataset", data, "--image_size", 32,
            "--train_batch_size", 4, "--max_train_steps", steps, "--checkpointing_steps", 2, "--output_dir", out]


def _adapters(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def script_model(launch, tiny_backbone, synthetic_data, tmp_path_factory):
    """Two training steps on the grid data through `accelerate launch examples/train.py`."""
    out = tmp_path_factory.mktemp("script") / "model"
    launch("train.py", *_train_args(tiny_backbone, synthetic_data / "grid", out, 2))
    return out


def test_zsad_train_trains_like_the_script(script_model, tiny_backbone, synthetic_data, tmp_path):
    """The installed `zsad train` runs the script's training in one process: the same adapters, a complete
    output folder, every file readable by others (umask 022)."""
    out = tmp_path / "model"
    args = _train_args(tiny_backbone, synthetic_data / "grid", out, 2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "zsad.cli", "train", *map(str, args)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=env, timeout=600, preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"saved the trained adapters to {out}" in result.stdout
    ours, script = _adapters(out), _adapters(script_model)
    assert set(ours) == set(script) == {"prompt_learner.context", "prompt_learner.deep_tokens"}
    for name in ours:
        assert (ours[name] == script[name]).all(), name
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    files = [path for path in out.rglob("*") if path.is_file()]
    assert {"README.md", "config.json", "adapter_model_0.safetensors", "optimizer.bin"} <= {f.name for f in files}
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files if f.stat().st_mode & 0o777 != 0o644} == {}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_two_processes_share_each_epoch(launch, tiny_backbone, tmp_path, accumulation):
    """Issue 29 point 1 with two (gloo) processes: 10 images in batches of 2 are 5 batches an epoch, dealt
    to the processes in turn and made even, 3 each; a step every `accumulation` batches and at the epoch's
    end; `--max-train-steps 5` runs into the following epochs. The log's rank-0 process counts its own images."""
    data = tmp_path / "ten"
    make_synthetic_dataset(5, 5, size=28, textures=["grid"], seed=0).save_to_disk(str(data))
    out = tmp_path / "run"
    launch("zsad.train", "--method", "anomalyclip", "--backbone", tiny_backbone, "--dataset", data, "--image-size", 28,
           "--train-batch-size", 2, "--gradient-accumulation-steps", accumulation, "--max-train-steps", 5,
           "--output-dir", out, num_processes=2)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    batches, per_epoch = 3, -(-3 // accumulation)
    expected = []
    for step in range(1, 6):
        epoch, within = divmod(step - 1, per_epoch)
        expected.append((step, epoch, 2 * (epoch * batches + min((within + 1) * accumulation, batches))))
    assert [(r["step"], r["epoch"], r["images_seen"]) for r in log] == expected
    assert not (out / ".zsad-lock").exists() and (out / "model.safetensors").exists()


def test_train_resume_equals_uninterrupted(launch, tiny_backbone, synthetic_data, tmp_path):
    data = synthetic_data / "grid"  # 12 images, batch 4: 3 steps per epoch, so 5 steps cross an epoch
    launch("train.py", *_train_args(tiny_backbone, data, tmp_path / "full", 5))
    launch("train.py", *_train_args(tiny_backbone, data, tmp_path / "resumed", 2))
    first = _adapters(tmp_path / "resumed")
    launch("train.py", *_train_args(tiny_backbone, data, tmp_path / "resumed", 5), "--resume_from_checkpoint", "latest")

    full, resumed = _adapters(tmp_path / "full"), _adapters(tmp_path / "resumed")
    assert set(full) == {"prompt_learner.context", "prompt_learner.deep_tokens"}
    for name in full:
        assert (full[name] == resumed[name]).all(), name
        assert not (first[name] == full[name]).all()  # the resumed run really trained further
    checkpoints = sorted((tmp_path / "full" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    for checkpoint in checkpoints:
        for weights in checkpoint.glob("*.safetensors"):
            with safe_open(weights, "pt") as handle:
                assert not any(key.startswith("clip.") for key in handle.keys())
        assert not (checkpoint / "model.safetensors").exists()
        assert all(f.stat().st_size < 100_000 for f in checkpoint.iterdir())  # no backbone anywhere
    assert json.loads((checkpoints[-1] / "zsad_training_state.json").read_text())["global_step"] == 5
    card = (tmp_path / "full" / "README.md").read_text()
    assert "Trainable parameters:** 896" in card and str(data) in card


def test_training_bad_inputs(launch, tiny_backbone, synthetic_data, tmp_path):
    unknown = launch("train.py", *_train_args(tiny_backbone, synthetic_data / "grid", tmp_path / "x", 1)[2:], "--method", "nope", check=False)
    assert unknown.returncode != 0 and "unknown method 'nope'" in unknown.stderr
    free = launch("train.py", *_train_args(tiny_backbone, synthetic_data / "grid", tmp_path / "x", 1)[2:], "--method", "zsad_clip", check=False)
    assert free.returncode != 0 and "training-free" in free.stderr
    resume = launch("train.py", *_train_args(tiny_backbone, synthetic_data / "grid", tmp_path / "y", 1), "--resume_from_checkpoint", "latest", check=False)
    assert resume.returncode != 0 and "no checkpoint in" in resume.stderr
    category = launch("train.py", *_train_args(tiny_backbone, synthetic_data / "grid", tmp_path / "z", 1), "--categories", "bottle", check=False)
    assert category.returncode != 0 and "bottle" in category.stderr


def test_training_without_masks_uses_the_image_loss(launch, tiny_backbone, synthetic_data, tmp_path):
    result = launch("train.py", *_train_args(tiny_backbone, synthetic_data / "image_only", tmp_path / "out", 2))
    assert "image-level loss only" in result.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_evaluate_two_processes_equal_one(launch, script_model, synthetic_data, tmp_path):
    """examples/evaluate.py on one process; `-m zsad.evaluate` (zsad evaluate's options) on two gloo processes."""
    args = ["--model", script_model, "--datasets", synthetic_data / "grid", "--batch_size", 5, "--report_cflow"]
    launch("evaluate.py", *args, "--output_dir", tmp_path / "one", num_processes=1)
    launch("zsad.evaluate", synthetic_data / "grid", "--model", script_model, "--batch-size", 5, "--report-cflow",
           "--out", tmp_path / "two", "--heatmaps-per-category", 2, "--num-workers", 1, num_processes=2)
    one = json.loads((tmp_path / "one" / "grid" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "grid" / "metrics.json").read_text())
    assert one["per_category"] == two["per_category"] and one["macro"] == two["macro"]
    assert one["counts"]["texture_grid"]["images"] == 12
    assert set(one["macro"]) >= {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
    assert "| **mean** |" in (tmp_path / "two" / "grid" / "metrics.md").read_text()
    assert len(list((tmp_path / "two" / "grid" / "heatmaps" / "texture_grid").iterdir())) == 2


@pytest.mark.parametrize("method", ["adaclip", "crane", "daclip"])
def test_other_methods_train_and_evaluate_through_the_scripts(launch, tiny_backbone, synthetic_data, tmp_path, method):
    args = _train_args(tiny_backbone, synthetic_data / "grid", tmp_path / "model", 15)
    args[args.index("anomalyclip")] = method
    if method == "daclip":  # trains through the vision tower: exercise activation checkpointing too
        args.append("--gradient_checkpointing")
    launch("train.py", *args)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "model" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 15 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == f"zsad_{method}"
    launch("evaluate.py", "--model", tmp_path / "model", "--datasets", synthetic_data / "grid", "--output_dir", tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "grid" / "metrics.json").read_text())
    assert 0.0 <= results["macro"]["pixel_auroc"] <= 1.0 and results["counts"]["texture_grid"]["images"] == 12


def test_method_options_reach_the_config(launch, tiny_backbone, synthetic_data, tmp_path):
    args = _train_args(tiny_backbone, synthetic_data / "grid", tmp_path / "model", 1)
    launch("train.py", *args, "--model_config", "dense_attention=qq+kk+vv", "local_loss_weight=2")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["dense_attention"] == "qq+kk+vv" and config["local_loss_weight"] == 2
    bad = launch("train.py", *args, "--model_config", "oops", check=False)
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr


def test_two_datasets_are_concatenated(launch, tiny_backbone, synthetic_data, tmp_path):
    """AdaCLIP's protocol (METHODS.md §1: MVTec AD + ColonDB): one epoch over two --dataset values sees
    every row of both (12 + 8 images, batch 4: 5 steps) and the prompts know both datasets' categories."""
    args = ["--method", "adaclip", "--backbone", tiny_backbone, "--dataset", synthetic_data / "grid",
            "--dataset", synthetic_data / "dots", "--image_size", 32, "--train_batch_size", 4,
            "--num_train_epochs", 1, "--output_dir", tmp_path / "model"]
    result = launch("train.py", *args)
    log = [json.loads(line) for line in (tmp_path / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4, 5]
    assert log[-1]["images_seen"] == 12 + 8
    assert "training on 20 images from" in result.stderr
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["class_names"] == ["texture_dots", "texture_grid"]
    assert f"{synthetic_data / 'grid'} + {synthetic_data / 'dots'}" in (tmp_path / "model" / "README.md").read_text()


def test_headclip_trains_its_head_weights_through_the_scripts(launch, tiny_backbone, synthetic_data, tmp_path):
    """Image-conditioned head weights, with activation checkpointing of the vision layers."""
    args = _train_args(tiny_backbone, synthetic_data / "grid", tmp_path / "model", 15)
    args[args.index("anomalyclip")] = "headclip"
    launch("train.py", *args, "--gradient_checkpointing", "--model_config", "head_weight_mode=dynamic")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "model" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 15 and sum(losses[-3:]) < sum(losses[:3]), losses
    adapters = _adapters(tmp_path / "model")
    assert set(adapters) == {"prompt_learner.context", "prompt_learner.deep_tokens",
                             "head_weights.generator.weight", "head_weights.generator.bias"}
    assert adapters["head_weights.generator.weight"].abs().min() > 0  # moved away from its zero init
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (config["model_type"], config["head_weight_mode"], config["image_score"]) == ("zsad_headclip", "dynamic", "joint")
    launch("evaluate.py", "--model", tmp_path / "model", "--datasets", synthetic_data / "grid", "--output_dir", tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "grid" / "metrics.json").read_text())
    assert 0.0 <= results["macro"]["image_auroc"] <= 1.0 and results["counts"]["texture_grid"]["images"] == 12


def test_detect_two_processes_equal_one(launch, tiny_backbone, tmp_path):
    """`-m zsad.detect` on two gloo processes writes the folder one process writes: scores in input order,
    the same maps, overlays and report."""
    from zsad.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(4)
    for index in range(7):  # an odd count: the processes get 4 and 3 images
        Image.fromarray(rng.integers(0, 255, (20 + index, 24, 3), dtype=np.uint8)).save(images / f"part{index}.png")
    (images / "broken.png").write_bytes(b"not an image")
    args = [images, "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", 28, "--batch-size", 2,
            "--save-maps", "npy", "--quiet"]
    assert main(["detect", *map(str, args), "--out", str(tmp_path / "one"), "--num-workers", "0"]) == 0
    launch("zsad.detect", *args, "--out", tmp_path / "two", num_processes=2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "scores.csv").read_text() == (two / "scores.csv").read_text()
    assert json.loads((one / "scores.json").read_text()) == json.loads((two / "scores.json").read_text())
    assert (one / "report.html").read_text() == (two / "report.html").read_text()
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file() and not p.name.startswith(".zsad"))
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file() and not p.name.startswith(".zsad"))
    assert len([f for f in files if f.startswith("maps/")]) == 7
    for name in files:
        if name.endswith(".npy"):
            assert np.array_equal(np.load(one / name), np.load(two / name)), name
        elif name.startswith("overlays/"):
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
