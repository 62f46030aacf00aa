"""The pipeline around the model (issue 28): output writing off the forward loop, decoding in workers,
exact metrics with their maps spilled to disk. Counts, never timings."""

import json
import threading

import numpy as np
import pytest
from PIL import Image

from zsad.background import BackgroundWriter
from zsad.cli import main
from zsad.data import make_synthetic_dataset
from zsad.metrics import AnomalyMetrics


def test_background_writer_commits_in_order_and_reports_errors():
    import time

    worked, committed = set(), []
    with BackgroundWriter(max_pending=3, threads=3) as writer:
        for index in range(20):  # later jobs' work often finishes first; their commits still come in order
            writer.submit(lambda index=index: time.sleep(0.002 * (index % 4 == 0)) or worked.add(index),
                          commit=lambda index=index: committed.append((index, index in worked)))
    assert committed == [(index, True) for index in range(20)]  # each commit after its own work, in order
    writer = BackgroundWriter()
    writer.submit(lambda: 1 / 0, commit=lambda: committed.append("never"))
    with pytest.raises(ZeroDivisionError):
        writer.close()
    assert committed[-1] != "never"


def test_a_slow_writer_does_not_hold_up_the_forward_passes(tiny_backbone, tmp_path, monkeypatch):
    """The first panel write blocks until the model has run every batch: it only returns in time if the
    forward loop went on while the writer waited (the count of forwards seen there is the measure)."""
    import zsad.commands.detect as detect
    import zsad.report

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{index:02d}.png")
    batches = 6  # 12 images, batch size 2
    forwards, all_forwards_done, seen = [], threading.Event(), []

    real_load = detect.load_detector

    def counting_model(*args, **kwargs):
        model = real_load(*args, **kwargs)
        real_forward = model.forward

        def forward(*a, **k):
            output = real_forward(*a, **k)
            forwards.append(1)
            if len(forwards) == batches:
                all_forwards_done.set()
            return output

        model.forward = forward
        return model

    real_add = zsad.report.DetectReport.add

    first = threading.Lock()

    def slow_add(self, *args, **kwargs):
        if first.acquire(blocking=False):  # the first write waits for the forward loop to finish (or 20 s)
            all_forwards_done.wait(timeout=20)
            seen.append(len(forwards))
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(detect, "load_detector", counting_model)
    monkeypatch.setattr(zsad.report.DetectReport, "add", slow_add)
    assert main(["detect", str(images), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", "28",
                 "--batch-size", "2", "--num-workers", "0", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert seen == [batches]  # every forward ran while the first panel was still being written
    rows = json.loads((tmp_path / "out" / "scores.json").read_text())["results"]
    assert [r["status"] for r in rows] == ["ok"] * 12 and len(list((tmp_path / "out" / "overlays").iterdir())) == 12


def test_spilled_maps_give_the_in_memory_metrics(tiny_backbone, tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(5, 5, size=28, textures=["grid", "dots"], seed=3).save_to_disk(str(data))
    common = [str(data), "--split", "train", "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", "28",
              "--batch-size", "3", "--report-cflow"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "memory"), "--num-workers", "0"]) == 0
    assert main(["evaluate", *common, "--out", str(tmp_path / "spilled"), "--max-memory", "4KB", "--num-workers", "1"]) == 0
    memory, spilled = (json.loads((tmp_path / d / "data" / "metrics.json").read_text()) for d in ("memory", "spilled"))
    assert memory == spilled and memory["counts"]

    # The accumulator itself: 4 KB keeps one 28 x 28 float32 map (3136 bytes), the rest goes to disk.
    rng = np.random.default_rng(1)
    batches = [({"pred_scores": rng.random(3), "anomaly_maps": rng.random((3, 28, 28)).astype(np.float32)},
                {"labels": np.array([1, 0, 1]), "masks": np.stack([rng.random((28, 28)) > 0.8, np.zeros((28, 28), bool),
                                                                    rng.random((28, 28)) > 0.9]),
                 "categories": ["a", "a", "b"] if i % 2 else ["b", "b", "a"]}) for i in range(4)]
    kept, bounded = AnomalyMetrics(report_cflow=True), AnomalyMetrics(report_cflow=True, max_memory=4000)
    for output, batch in batches:
        kept.update(output, batch)
        bounded.update(output, batch)
    assert kept.spilled_bytes == 0 and bounded.spilled_bytes == 11 * 28 * 28 * 4
    assert kept.compute() == bounded.compute() == bounded.gather().compute()


def test_scores_only_writes_the_scores_of_a_full_run_and_nothing_else(tiny_backbone, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for index in range(5):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(images / f"{index}.png")
    common = ["detect", str(images), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", "28",
              "--batch-size", "2", "--save-maps", "npy", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--out", str(tmp_path / "scores"), "--scores-only"]) == 0
    full, scores = (json.loads((tmp_path / d / "scores.json").read_text())["results"] for d in ("full", "scores"))
    assert [r["score"] for r in full] == [r["score"] for r in scores] and {r["overlay"] for r in scores} == {""}
    assert sorted(p.name for p in (tmp_path / "scores").iterdir() if not p.name.startswith(".")) == ["maps", "scores.csv", "scores.json"]
    for name in ("0.npy", "4.npy"):
        assert np.array_equal(np.load(tmp_path / "full" / "maps" / name), np.load(tmp_path / "scores" / "maps" / name))
    # A finished scores-only run resumes to itself without scoring anything again.
    assert main([*common, "--out", str(tmp_path / "scores"), "--scores-only", "--resume"]) == 0
    assert json.loads((tmp_path / "scores" / "scores.json").read_text())["results"] == scores
