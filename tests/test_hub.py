"""Publishing against an in-process mock Hub (ECOSYSTEM.md §6.3): one commit with weights, config and our card."""

import base64
import json

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import close_session, set_client_factory
from huggingface_hub.utils._http import default_client_factory

from zsad import AnomalyCLIPModel
from zsad.hub.push import push_folder

COMMIT_OID = "0123456789abcdef0123456789abcdef01234567"


class MockHub:
    """Answers the few endpoints `create_repo` + `upload_folder` use; records the committed files."""

    def __init__(self):
        self.created = []
        self.commits = []
        self.unhandled = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "POST" and path == "/api/repos/create":
            body = json.loads(request.content)
            repo = f"{body.get('organization') or 'user'}/{body['name']}"
            self.created.append(repo)
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo}", "name": repo, "id": repo})
        if request.method == "POST" and path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if request.method == "POST" and "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if request.method == "POST" and "/commit/" in path:
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            files = {e["value"]["path"]: base64.b64decode(e["value"]["content"]) for e in lines if e["key"] == "file"}
            header = next(e["value"] for e in lines if e["key"] == "header")
            self.commits.append({"repo": path.split("/api/models/")[1].split("/commit/")[0], "files": files, "header": header})
            repo = self.commits[-1]["repo"]
            return httpx2.Response(200, json={"commitUrl": f"https://huggingface.co/{repo}/commit/{COMMIT_OID}", "commitOid": COMMIT_OID})
        self.unhandled.append(f"{request.method} {path}")
        return httpx2.Response(404, json={"error": f"mock hub: {request.method} {path} not handled"})


@pytest.fixture()
def mock_hub(monkeypatch):
    hub = MockHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_mock_token")
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub), base_url="https://huggingface.co"))
    close_session()
    yield hub
    set_client_factory(default_client_factory)
    close_session()


def test_model_push_to_hub_keeps_the_card_in_the_weights_commit(mock_hub, tiny_backbone):
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28)
    url = model.push_to_hub("acme/anomalyclip-tiny", commit_message="first", training_data="synthetic grid textures")
    assert url.endswith(COMMIT_OID) and mock_hub.created == ["acme/anomalyclip-tiny"]
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
