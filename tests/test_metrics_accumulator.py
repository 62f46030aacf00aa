"""AnomalyMetrics: per-category results equal the library functions; merge / gather equal a single pass."""

import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zsad.metrics import (
    METRIC_NAMES,
    AnomalyMetrics,
    UndefinedMetricWarning,
    aupro,
    auroc,
    average_precision,
    cflow_aupro,
    f1_max,
    flatten_results,
    format_markdown,
)

CATEGORIES = ("bottle", "cable", "screw")


def make_batches(seed=0, n=30, batch_size=4, shape=(16, 20), categories=CATEGORIES):
    """Synthetic (output, batch) pairs: rectangles as defects, noisy maps, categories interleaved."""
    rng = np.random.default_rng(seed)
    cats = [categories[i % len(categories)] for i in range(n)]
    labels = np.array([(i // len(categories)) % 2 for i in range(n)])  # both classes in every category
    masks = np.zeros((n, *shape), dtype=np.float32)
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
            masks[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 6)] = 1
    maps = (rng.random((n, *shape)) * 0.7 + 0.3 * masks * rng.random((n, *shape))).astype(np.float32)
    scores = np.clip(maps.reshape(n, -1).max(axis=1) + 0.2 * rng.standard_normal(n), 0, 1).astype(np.float32)
    batches = []
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        out = SimpleNamespace(pred_scores=torch.from_numpy(scores[sl]), anomaly_maps=torch.from_numpy(maps[sl]))
        batch = {
            "labels": torch.from_numpy(labels[sl]),
            "masks": torch.from_numpy(masks[sl]),
            "categories": cats[sl],
        }
        batches.append((out, batch))
    return batches, dict(cats=np.array(cats), labels=labels, masks=masks, maps=maps, scores=scores)


def run(metrics, batches):
    for out, batch in batches:
        metrics.update(out, batch)
    return metrics


def assert_results_equal(a, b):
    assert a["counts"] == b["counts"]
    assert a["per_category"].keys() == b["per_category"].keys()
    for cat in a["per_category"]:
        for k, v in a["per_category"][cat].items():
            w = b["per_category"][cat][k]
            assert (math.isnan(v) and math.isnan(w)) or v == w, (cat, k, v, w)
    for k, v in a["macro"].items():
        w = b["macro"][k]
        assert (math.isnan(v) and math.isnan(w)) or v == w, (k, v, w)


def test_per_category_values_equal_library_functions():
    batches, d = make_batches()
    res = run(AnomalyMetrics(report_cflow=True), batches).compute()
    assert list(res["per_category"]) == sorted(CATEGORIES)
    for cat in CATEGORIES:
        sel = d["cats"] == cat
        got = res["per_category"][cat]
        s, y, maps, masks = d["scores"][sel], d["labels"][sel], d["maps"][sel], d["masks"][sel]
        expected = {
            "image_auroc": auroc(s, y),
            "image_ap": average_precision(s, y),
            "image_f1_max": f1_max(s, y),
            "pixel_auroc": auroc(maps, masks),
            "pixel_ap": average_precision(maps, masks),
            "pixel_f1_max": f1_max(maps, masks),
            "pixel_aupro": aupro(maps, masks),
            "pixel_aupro_cflow": cflow_aupro(maps, masks),
        }
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-12), (cat, k)
        n = int(sel.sum())
        assert res["counts"][cat] == {"images": n, "anomalous_images": int(y.sum()), "pixel_images": n}
    for k in METRIC_NAMES:
        assert res["macro"][k] == pytest.approx(np.mean([res["per_category"][c][k] for c in CATEGORIES]), abs=1e-15)


def test_cflow_mode_reports_the_cflow_value():
    batches, d = make_batches(seed=8)
    res = run(AnomalyMetrics("cflow", report_cflow=True), batches).compute()
    for cat in CATEGORIES:
        sel = d["cats"] == cat
        got = res["per_category"][cat]
        assert got["pixel_aupro"] == got["pixel_aupro_cflow"] == cflow_aupro(d["maps"][sel], d["masks"][sel])
        assert got["pixel_auroc"] == pytest.approx(auroc(d["maps"][sel], d["masks"][sel]), abs=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"report_cflow": True},
        {"aupro_mode": "cflow", "report_cflow": True},
        {"aupro_mode": "binned", "num_thresholds": 300},
    ],
)
def test_merge_of_two_halves_equals_single_pass(kwargs):
    batches, _ = make_batches(seed=1)
    single = run(AnomalyMetrics(**kwargs), batches).compute()
    half = len(batches) // 2
    first = run(AnomalyMetrics(**kwargs), batches[:half])
    second = run(AnomalyMetrics(**kwargs), batches[half:])
    assert_results_equal(first.merge(second).compute(), single)
    if kwargs.get("aupro_mode") == "binned":  # integer state: the merge order does not matter either
        first = run(AnomalyMetrics(**kwargs), batches[:half])
        second = run(AnomalyMetrics(**kwargs), batches[half:])
        assert_results_equal(second.merge(first).compute(), single)


def test_binned_mode_close_to_exact():
    batches, _ = make_batches(seed=2, n=36, shape=(32, 32))
    exact = run(AnomalyMetrics(), batches).compute()
    binned = run(AnomalyMetrics("binned", num_thresholds=2000), batches).compute()
    for cat in CATEGORIES:
        for k in ("image_auroc", "image_ap", "image_f1_max"):  # image metrics stay exact
            assert binned["per_category"][cat][k] == exact["per_category"][cat][k]
        for k in ("pixel_auroc", "pixel_aupro"):
            assert abs(binned["per_category"][cat][k] - exact["per_category"][cat][k]) < 1e-3
        for k in ("pixel_ap", "pixel_f1_max"):
            assert abs(binned["per_category"][cat][k] - exact["per_category"][cat][k]) < 1e-2


def test_has_mask_false_images_are_left_out_of_pixel_metrics():
    batches, d = make_batches(seed=3)
    has = np.ones(len(d["labels"]), dtype=bool)
    has[np.flatnonzero(d["labels"])[::2]] = False  # half of the anomalous images have unknown masks
    start = 0
    for out, batch in batches:
        b = len(batch["categories"])
        batch["has_mask"] = torch.from_numpy(has[start : start + b])
        batch["masks"][~batch["has_mask"]] = 0  # unknown ground truth is given as zeros
        start += b
    res = run(AnomalyMetrics(), batches).compute()
    for cat in CATEGORIES:
        sel = d["cats"] == cat
        psel = sel & has
        got = res["per_category"][cat]
        assert got["image_auroc"] == pytest.approx(auroc(d["scores"][sel], d["labels"][sel]), abs=1e-12)
        assert got["pixel_aupro"] == pytest.approx(aupro(d["maps"][psel], d["masks"][psel]), abs=1e-12)
        assert got["pixel_auroc"] == pytest.approx(auroc(d["maps"][psel], d["masks"][psel]), abs=1e-12)
        assert res["counts"][cat]["pixel_images"] == int(psel.sum())


def test_category_without_pixel_ground_truth_is_skipped_with_warning():
    batches, _ = make_batches(seed=4)
    metrics = run(AnomalyMetrics(), batches)
    out = {"pred_scores": torch.tensor([0.2, 0.9, 0.4]), "anomaly_maps": torch.rand(3, 16, 20)}
    batch = {
        "labels": torch.tensor([0, 1, 1]),
        "masks": torch.zeros(3, 16, 20),
        "categories": ["brain_mri"] * 3,
        "has_mask": torch.tensor([False, False, False]),
    }
    metrics.update(out, batch)
    # an image-level-only model output (no maps) is fine too
    image_only = {"labels": torch.tensor([0]), "categories": ["brain_mri"]}
    metrics.update(SimpleNamespace(pred_scores=torch.tensor([0.1]), anomaly_maps=None), image_only)
    with pytest.warns(UndefinedMetricWarning, match="category 'brain_mri' has no pixel ground truth"):
        res = metrics.compute()
    got = res["per_category"]["brain_mri"]
    assert got["image_auroc"] == pytest.approx(auroc([0.2, 0.9, 0.4, 0.1], [0, 1, 1, 0]))
    assert all(math.isnan(got[k]) for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"))
    others = [res["per_category"][c]["pixel_aupro"] for c in CATEGORIES]
    assert res["macro"]["pixel_aupro"] == pytest.approx(np.mean(others), abs=1e-15)
    assert res["counts"]["brain_mri"] == {"images": 4, "anomalous_images": 2, "pixel_images": 0}


@pytest.mark.parametrize("mode", ["exact", "binned", "cflow"])
def test_category_without_anomalous_pixel(mode):
    out = {"pred_scores": torch.tensor([0.2, 0.3]), "anomaly_maps": torch.rand(2, 8, 8)}
    batch = {"labels": torch.tensor([0, 0]), "masks": torch.zeros(2, 8, 8), "categories": ["x", "x"]}
    metrics = AnomalyMetrics(mode)
    metrics.update(out, batch)
    with pytest.raises(ValueError, match="AUPRO is undefined: category 'x' has no anomalous pixel"):
        with pytest.warns(UndefinedMetricWarning, match="category 'x' has only normal images"):
            metrics.compute()
    lenient = AnomalyMetrics(mode, undefined="nan")
    lenient.update(out, batch)
    with pytest.warns(UndefinedMetricWarning) as record:
        res = lenient.compute()
    assert any("no anomalous pixel" in str(w.message) for w in record)
    assert all(math.isnan(v) for v in res["per_category"]["x"].values())
    assert all(math.isnan(v) for v in res["macro"].values())


def test_update_rejects_bad_input():
    batches, _ = make_batches(seed=5)
    out, batch = batches[0]
    m = AnomalyMetrics()
    bad_masks = batch["masks"].clone()
    bad_masks[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"masks must be binary \(0/1\); found values \{0.5\}"):
        m.update(out, {**batch, "masks": bad_masks})
    with pytest.raises(ValueError, match=r"shape mismatch: anomaly_maps \(4, 16, 20\) vs masks \(4, 15, 20\)"):
        m.update(out, {**batch, "masks": batch["masks"][:, :15]})
    nan_maps = out.anomaly_maps.clone()
    nan_maps[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="anomaly_maps contains 1 NaN values"):
        m.update(SimpleNamespace(pred_scores=out.pred_scores, anomaly_maps=nan_maps), batch)
    with pytest.raises(ValueError, match="pred_scores contains 1 infinite values"):
        m.update(SimpleNamespace(pred_scores=torch.tensor([0.1, float("inf"), 0.2, 0.3]), anomaly_maps=out.anomaly_maps), batch)
    with pytest.raises(ValueError, match="labelled normal"):
        wrong = batch["labels"].clone()
        wrong[:] = 0
        masks = batch["masks"].clone()
        masks[0, 0, 0] = 1
        m.update(out, {**batch, "labels": wrong, "masks": masks})
    with pytest.raises(ValueError, match="categories has 3 entries for a batch of 4"):
        m.update(out, {**batch, "categories": batch["categories"][:3]})
    with pytest.raises(ValueError, match="missing 'pred_scores'"):
        m.update(SimpleNamespace(anomaly_maps=out.anomaly_maps), batch)
    assert m.num_images == 0  # nothing was added by the failed updates
    with pytest.raises(ValueError, match="different settings"):
        AnomalyMetrics().merge(AnomalyMetrics("binned"))
    with pytest.raises(ValueError, match="aupro_mode must be"):
        AnomalyMetrics("fast")
    with pytest.raises(ValueError, match="report_cflow needs the maps"):
        AnomalyMetrics("binned", report_cflow=True)


def test_gather_without_distributed_and_report():
    batches, _ = make_batches(seed=6)
    metrics = run(AnomalyMetrics(), batches)
    single = metrics.compute()
    assert_results_equal(metrics.gather().compute(), single)
    assert_results_equal(metrics.gather(SimpleNamespace(num_processes=1)).compute(), single)
    table = format_markdown(single)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Category | Image AUROC |") and len(lines) == 2 + len(CATEGORIES) + 1
    assert lines[-1].startswith("| **mean** | " + f"{single['macro']['image_auroc'] * 100:.1f}")
    flat = flatten_results(single, prefix="eval/")
    assert flat["eval/macro/pixel_aupro"] == single["macro"]["pixel_aupro"]
    assert flat["eval/cable/image_ap"] == single["per_category"]["cable"]["image_ap"]
    single["per_category"]["cable"]["pixel_aupro"] = float("nan")
    assert "| cable |" in format_markdown(single, ["pixel_aupro"]) and "| - |" in format_markdown(single, ["pixel_aupro"])


_DIST_SCRIPT = """
import pickle
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

sys.path.insert(0, {tests_dir!r})
from test_metrics_accumulator import make_batches, run
from zsad.metrics import AnomalyMetrics

acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(even_batches=False))
batches, _ = make_batches(seed=7)
half = len(batches) // 2
mine = batches[:half] if acc.process_index == 0 else batches[half:]
results = {{}}
for name, kwargs in {{"exact": {{}}, "binned": {{"aupro_mode": "binned", "num_thresholds": 300}}}}.items():
    merged = run(AnomalyMetrics(**kwargs), mine).gather(acc)
    results[name] = (acc.num_processes, merged.num_images, merged.compute())
with open({out_dir!r} + f"/rank{{acc.process_index}}.pkl", "wb") as f:
    pickle.dump(results, f)
acc.wait_for_everyone()
torch.distributed.destroy_process_group()
"""


def test_gather_across_two_accelerate_processes(tmp_path):
    script = tmp_path / "dist_metrics.py"
    script.write_text(textwrap.dedent(_DIST_SCRIPT.format(tests_dir=str(Path(__file__).parent), out_dir=str(tmp_path))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    batches, _ = make_batches(seed=7)
    for name, kwargs in {"exact": {}, "binned": {"aupro_mode": "binned", "num_thresholds": 300}}.items():
        single = run(AnomalyMetrics(**kwargs), batches).compute()
        for rank in (0, 1):
            with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
                num_processes, num_images, res = pickle.load(f)[name]
            assert num_processes == 2 and num_images == 30
            assert_results_equal(res, single)
