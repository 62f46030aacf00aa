"""Publishing against an in-process mock Hub: one commit with weights, config and our card."""

import json

from zsad import AnomalyCLIPModel
from zsad.hub.push import push_folder

from mock_hub import COMMIT_OID, mock_hub  # noqa: F401  (fixture)


def test_model_push_to_hub_keeps_the_card_in_the_weights_commit(mock_hub, tiny_backbone):
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28)
    url = model.push_to_hub("acme/anomalyclip-tiny", commit_message="first", training_data="synthetic grid textures")
    assert url.endswith(COMMIT_OID) and [c["repo"] for c in mock_hub.created] == ["acme/anomalyclip-tiny"]
    assert len(mock_hub.commits) == 1, mock_hub.unhandled
    commit = mock_hub.commits[0]
    assert commit["repo"] == "acme/anomalyclip-tiny" and commit["header"]["summary"] == "first"
    assert set(commit["files"]) == {"config.json", "model.safetensors", "README.md", "modeling_zsad.py", "preprocessor_config.json"}
    card = commit["files"]["README.md"].decode()
    assert "# acme/anomalyclip-tiny" in card and "synthetic grid textures" in card and "zero-shot-anomaly-detection" in card
    assert 'AutoModel.from_pretrained("acme/anomalyclip-tiny")' in card
    assert json.loads(commit["files"]["config.json"])["model_type"] == "zsad_anomalyclip"


def test_push_folder_leaves_training_by_products_out(mock_hub, tmp_path, tiny_backbone):
    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path)
    (tmp_path / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint_0" / "optimizer.bin").write_bytes(b"x")
    (tmp_path / "random_states_0.pkl").write_bytes(b"x")
    push_folder(tmp_path, "acme/folder")
    assert set(mock_hub.commits[0]["files"]) == {"config.json", "model.safetensors", "README.md", "modeling_zsad.py", "preprocessor_config.json"}
