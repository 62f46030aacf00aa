"""Adapter-only and full checkpoints, AutoModel registration, remote code, model cards."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel

import zsad
from zsad import AnomalyCLIPModel, ZeroShotCLIPModel


def _outputs(model, pixels):
    with torch.no_grad():
        out = model.eval()(pixels)
    return out.anomaly_maps, out.pred_scores


@pytest.fixture(scope="module")
def trained_model(tiny_backbone):
    torch.manual_seed(3)
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28)
    with torch.no_grad():  # stand-in for training: move the adapters away from their init
        model.prompt_learner.context.normal_(std=0.5)
    return model.eval()


def test_adapter_only_round_trip(trained_model, tmp_path):
    pixels = torch.randn(2, 3, 28, 28)
    trained_model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert keys == {"prompt_learner.context", "prompt_learner.deep_tokens"}
    assert not any(k.startswith("clip.") for k in keys)
    assert (tmp_path / "model.safetensors").stat().st_size < 20_000
    assert not list(tmp_path.glob("*.bin"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "zsad_anomalyclip" and config["save_backbone"] is False
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is AnomalyCLIPModel
    for ours, theirs in zip(_outputs(trained_model, pixels), _outputs(loaded, pixels)):
        assert torch.equal(ours, theirs)


def test_full_save_loads_without_the_backbone_id(trained_model, tmp_path):
    pixels = torch.randn(2, 3, 28, 28)
    trained_model.save_pretrained(tmp_path, save_backbone=True)
    assert trained_model.config.save_backbone is False  # the model itself is unchanged
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone_name_or_path"] = str(tmp_path / "does-not-exist")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert any(k.startswith("clip.") for k in weights.keys())
    loaded = AutoModel.from_pretrained(tmp_path)
    for ours, theirs in zip(_outputs(trained_model, pixels), _outputs(loaded, pixels)):
        assert torch.equal(ours, theirs)


def test_missing_backbone_is_a_clear_error(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path)
    with pytest.raises(OSError, match="cannot load the CLIP backbone 'nowhere/no-such-clip'"):
        AutoModel.from_pretrained(tmp_path, backbone_name_or_path="nowhere/no-such-clip")


def test_training_free_model_round_trip(tiny_backbone, tmp_path):
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28, object_name="metal plate")
    pixels = torch.randn(1, 3, 28, 28)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is ZeroShotCLIPModel and loaded.config.object_name == "metal plate"
    for ours, theirs in zip(_outputs(model, pixels), _outputs(loaded, pixels)):
        assert torch.equal(ours, theirs)


def test_every_model_type_is_registered():
    for model_class in zsad.MODEL_CLASSES.values():
        config_class = model_class.config_class
        assert config_class.model_type.startswith("zsad_")
        assert type(AutoConfig.for_model(config_class.model_type)) is config_class


def test_trust_remote_code_without_importing_zsad(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "modeling_zsad.AnomalyCLIPConfig",
        "AutoModel": "modeling_zsad.AnomalyCLIPModel",
    }
    script = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        "assert 'zsad' not in sys.modules\n"
        f"model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        "torch.manual_seed(0)\n"
        "with torch.no_grad(): print(type(model).__name__, float(model(torch.randn(1, 3, 28, 28)).pred_scores[0]))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    name, score = result.stdout.split()[-2:]
    torch.manual_seed(0)
    with torch.no_grad():
        expected = trained_model(torch.randn(1, 3, 28, 28)).pred_scores[0]
    assert name == "AnomalyCLIPModel" and abs(float(score) - float(expected)) < 1e-6


def test_model_card_is_written_with_metadata(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "zero-shot-anomaly-detection" in card and "anomalyclip" in card
    assert "library_name: transformers" in card
    assert "base_model" not in card  # a local folder is not a Hub id
    assert "AnomalyCLIP: Object-agnostic Prompt Learning" in card
    (tmp_path / "README.md").write_text("my own card")
    trained_model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own card"  # never overwritten silently


@pytest.fixture()
def umask_027():
    previous = os.umask(0o027)
    yield 0o640  # the mode of a new file under this umask
    os.umask(previous)


def _modes(folder):
    return {str(path.relative_to(folder)): oct(path.stat().st_mode & 0o777) for path in folder.rglob("*") if path.is_file()}


def test_saved_files_follow_the_umask(tiny_backbone, trained_model, tmp_path, umask_027):
    """safetensors writes through a private (0600) temporary file; every file a save produces must have the
    mode of any other new file instead (here 0640 under umask 027), and an overwritten file keeps its mode."""
    from accelerate import Accelerator

    from zsad.file_modes import save_safetensors
    from zsad.testing import save_tiny_backbone
    from zsad.training import build_optimizer, register_adapter_checkpointing

    save_tiny_backbone(tmp_path / "backbone")
    trained_model.save_pretrained(tmp_path / "adapters")
    trained_model.save_pretrained(tmp_path / "full", save_backbone=True)
    ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path / "training-free")
    with_references = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28)
    with_references.set_normal_references(torch.randn(2, 3, 28, 28))
    (tmp_path / "references").mkdir()
    with_references.save_normal_references(tmp_path / "references" / "normal.safetensors")
    accelerator = Accelerator(cpu=True)
    model, _ = accelerator.prepare(with_references, build_optimizer(with_references, learning_rate=None))
    register_adapter_checkpointing(accelerator)
    accelerator.save_state(str(tmp_path / "state"))
    modes = _modes(tmp_path)
    assert {"backbone/model.safetensors", "adapters/model.safetensors", "full/model.safetensors",
            "training-free/model.safetensors", "state/adapter_model_0.safetensors"} <= set(modes)
    assert set(modes.values()) == {oct(umask_027)}, modes

    shared = tmp_path / "references" / "normal.safetensors"
    shared.chmod(0o644)
    save_safetensors({"x": torch.zeros(1)}, shared)
    assert shared.stat().st_mode & 0o777 == 0o644
