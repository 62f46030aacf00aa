"""The `evaluate` AUPRO module loads offline from the package and returns the library's value."""

import ast
from pathlib import Path

import numpy as np
import pytest

import zsad.metrics
from zsad.metrics import aupro


@pytest.fixture
def aupro_module(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    evaluate = pytest.importorskip("evaluate")
    # evaluate reads these at import time: point the already-imported config at tmp_path as well
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_CACHE", tmp_path / "hf" / "evaluate")
    monkeypatch.setattr(evaluate.config, "HF_METRICS_CACHE", tmp_path / "hf" / "metrics")
    return evaluate.load(zsad.metrics.evaluate_module_path(), cache_dir=str(tmp_path / "cache"))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 24, 30), dtype=np.float32)
    masks[1, 2:8, 3:9] = 1
    masks[2, 10:14, 20:28] = 1
    masks[2, 20:23, 1:4] = 1
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    return maps, masks


def test_module_folder_layout():
    folder = Path(zsad.metrics.evaluate_module_path())
    assert folder.name == "aupro" and (folder / "aupro.py").is_file()
    assert (folder / "README.md").read_text(encoding="utf-8").startswith("---\ntitle: AUPRO")
    ast.parse((folder / "app.py").read_text(encoding="utf-8"))
    # evaluate parses imports line by line: one module per import statement
    for line in (folder / "aupro.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("import "):
            assert "," not in line, line


def test_evaluate_load_computes_library_value(aupro_module):
    maps, masks = _data()
    result = aupro_module.compute(predictions=list(maps), references=list(masks))
    assert set(result) == {"aupro"}
    assert abs(result["aupro"] - aupro(maps, masks)) < 1e-12
    # batched input, other modes and keyword arguments pass through
    aupro_module.add_batch(predictions=list(maps[:2]), references=list(masks[:2]))
    aupro_module.add_batch(predictions=list(maps[2:]), references=list(masks[2:]))
    result = aupro_module.compute(mode="cflow")
    assert abs(result["aupro"] - aupro(maps, masks, mode="cflow")) < 1e-12
    result = aupro_module.compute(
        predictions=list(maps), references=list(masks), mode="binned", num_thresholds=500, fpr_limit=0.1
    )
    assert abs(result["aupro"] - aupro(maps, masks, 0.1, num_thresholds=500)) < 1e-12
    # maps of different sizes
    small_maps, small_masks = _data(1)
    preds = [maps[1], small_maps[2][:10, :12]]
    refs = [masks[1], small_masks[2][:10, :12]]
    assert abs(aupro_module.compute(predictions=preds, references=refs)["aupro"] - aupro(preds, refs)) < 1e-12


def test_evaluate_module_reports_library_errors(aupro_module):
    maps, masks = _data()
    with pytest.raises(ValueError, match="AUPRO is undefined: masks contain no anomalous pixel"):
        aupro_module.compute(predictions=list(maps), references=list(np.zeros_like(masks)))
