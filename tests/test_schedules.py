"""What a training run really does (issue 29, point 1): optimizer steps, images seen per epoch, the epoch it
stops in and the learning rate of each parameter group, against numbers computed here from the options alone
(ceil(N / batch) batches an epoch, one optimizer step per `accumulation` batches, the last window of an
epoch a step too), never from the package's own helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zsad.cli import main
from zsad.data import make_synthetic_dataset

SIZE = 28


@pytest.fixture(scope="module")
def ten_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schedule-data") / "grid"
    make_synthetic_dataset(5, 5, size=SIZE, textures=["grid"], seed=0).save_to_disk(str(folder))
    return folder


def train(tiny_backbone, data, out, *options: str, method: str = "anomalyclip") -> list[dict]:
    code = main(["train", "--method", method, "--backbone", tiny_backbone, "--dataset", str(data), "--image-size",
                 str(SIZE), "--output-dir", str(out), "--seed", "3", *options])
    assert code == 0
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def expected_log(images: int, batch: int, accumulation: int, steps: int) -> list[tuple[int, int, int]]:
    """(step, epoch, images seen) after every optimizer step, written out by hand from the options."""
    batches = -(-images // batch)
    per_epoch = -(-batches // accumulation)
    rows = []
    for step in range(1, steps + 1):
        epoch, within = divmod(step - 1, per_epoch)
        consumed = min((within + 1) * accumulation, batches)
        rows.append((step, epoch, epoch * images + min(consumed * batch, images)))
    return rows


@pytest.mark.parametrize(("batch", "accumulation", "epochs", "max_steps", "total_steps", "last_epoch"), [
    (4, 1, 2, None, 6, 1),   # 3 batches an epoch (4 + 4 + 2), 3 steps an epoch
    (4, 2, 2, None, 4, 1),   # 3 batches, steps after batches 2 and 3: 2 an epoch
    (3, 2, 5, 5, 5, 2),      # 4 batches, 2 steps an epoch; --max-train-steps 5 wins over 5 epochs, stops in epoch 2
    (10, 1, 3, None, 3, 2),  # one batch of everything, one step an epoch
    (3, 4, 2, None, 2, 1),   # accumulation longer than the epoch: its 4 batches make 1 step
])
def test_steps_epochs_and_images_seen(tiny_backbone, ten_images, tmp_path, batch, accumulation, epochs, max_steps,
                                      total_steps, last_epoch):
    options = ["--train-batch-size", str(batch), "--gradient-accumulation-steps", str(accumulation),
               "--num-train-epochs", str(epochs)]
    if max_steps:
        options += ["--max-train-steps", str(max_steps)]
    log = train(tiny_backbone, ten_images, tmp_path / "run", *options)
    assert [(r["step"], r["epoch"], r["images_seen"]) for r in log] == expected_log(10, batch, accumulation, total_steps)
    assert log[-1]["epoch"] == last_epoch
    seen_by_end_of = {record["epoch"]: record["images_seen"] for record in log}
    steps_per_epoch = math.ceil(math.ceil(10 / batch) / accumulation)
    complete = [epoch for epoch in seen_by_end_of if (epoch + 1) * steps_per_epoch <= total_steps]
    assert complete and all(seen_by_end_of[epoch] == 10 * (epoch + 1) for epoch in complete)  # each image once an epoch


def test_learning_rates_per_parameter_group(tiny_backbone, ten_images, tmp_path):
    """DA-CLIP's groups (§6.2.6): prompts at the learning rate, experts at 0.1x; constant over the run."""
    train(tiny_backbone, ten_images, tmp_path / "run", "--train-batch-size", "5", "--max-train-steps", "3",
          "--learning-rate", "0.002", "--checkpointing-steps", "1", method="daclip")
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert len(checkpoints) == 3
    for checkpoint in checkpoints:  # after steps 1, 2 and 3
        state = torch.load(checkpoint / "optimizer.bin", map_location="cpu", weights_only=True)
        rates = sorted(group["lr"] for group in state["param_groups"])
        assert rates == pytest.approx([0.0002, 0.002])


def test_resuming_mid_epoch_continues_the_schedule(tiny_backbone, ten_images, tmp_path):
    """4 steps of 2 an epoch (batch 3: 4 batches, accumulation 2), stopped after step 3 (mid epoch 1), resumed:
    steps 1..4 logged once each, the resumed step in epoch 1."""
    out = tmp_path / "run"
    common = ["--train-batch-size", "3", "--gradient-accumulation-steps", "2", "--checkpointing-steps", "1"]
    train(tiny_backbone, ten_images, out, *common, "--max-train-steps", "3")
    log = train(tiny_backbone, ten_images, out, *common, "--max-train-steps", "4", "--resume-from-checkpoint", "latest")
    assert [(r["step"], r["epoch"]) for r in log] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    # The resumed process saw only the second half of epoch 1: 2 batches, images 7..10 (4 images).
    assert log[-1]["images_seen"] == 4
