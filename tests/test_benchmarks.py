"""The throughput benchmark's CI smoke run and its FLOP bookkeeping (timings themselves are never asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import CLIPConfig

from zsad.configuration_zsad import VIT_L14_336_CLIP_CONFIG

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_covers_every_variant(throughput, tmp_path):
    results = throughput.main(["--smoke", "--json", str(tmp_path / "rows.json")])
    variants = set(throughput.VARIANTS)
    assert {row["method"] for row in results["clip_ratio"]} == variants
    assert {row["method"] for row in results["compare_fp32"]} == variants
    trained = {(row["method"], row["mode"]) for row in results["throughput"]}
    assert {method for method, mode in trained if mode == "inference"} == variants
    assert ("zsad_clip", "training") not in trained and ("anomalyclip", "training") in trained
    adapted = {row["method"]: row["adapted"] for row in results["compare_fp32"]}
    assert adapted["anomalyclip"] == "trained 1 steps + 4 normal references" and adapted["zsad_clip"] == "4 normal references"
    for row in results["compare_fp32"]:
        assert 0 <= row["max_abs_map_diff"] < 5e-2 and row["score_std_fp32"] > 0
    assert json.loads((tmp_path / "rows.json").read_text()) == json.loads(json.dumps(results))


def test_flops_of_a_plain_vit_l14_layer_stack(throughput):
    vision = CLIPConfig(**VIT_L14_336_CLIP_CONFIG).vision_config
    tokens, width = 1 + 37 * 37, 1024
    parts = throughput.vision_tower_flops(vision, tokens, dense_kinds=1, dense_layers=19)
    assert parts["linear"] == 24 * 2 * tokens * (4 * width * width + 2 * width * 4096)
    assert parts["attention"] == 24 * 2 * (2 * tokens * tokens * width)
    assert parts["dense attention"] == 19 * (4 * tokens * tokens * width + 2 * tokens * width * width)
    # AnomalyCLIP's tower at 518 px: about 1.2 TFLOP per image, the compute floor the GPU targets use
    assert 1.15e12 < sum(parts.values()) < 1.25e12


def test_pipeline_benchmark_runs_as_documented(tmp_path):
    """examples/benchmarks/pipeline.py end to end on 8 small images (its rows, not its timings, are checked)."""
    import subprocess
    import sys

    script = SCRIPT.parent / "pipeline.py"
    result = subprocess.run([sys.executable, str(script), "--images", "8", "--image-size", "32", "--batch-size", "4",
                             "--smoke", "--json", str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["outputs"] == "scores, panels, report"
    assert rows[0]["model_only"] > 0 and rows[0]["end_to_end"] > 0 and rows[0]["peak_rss_mib"] > 100  # torch alone
    assert f"| tiny @ 32 px | 8 | 4 | {rows[0]['num_workers']} | scores, panels, report |" in result.stdout
