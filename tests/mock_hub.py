"""An in-process mock of the few Hub endpoints `create_repo` and commits use (model and dataset repos),
shared by the publishing tests, which import the `mock_hub` fixture that routes huggingface_hub to it."""

import base64
import json
import re

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import close_session, set_client_factory
from huggingface_hub.utils._http import default_client_factory

COMMIT_OID = "89abcdef0123456789abcdef0123456789abcdef"


class MockHub:
    """Answers `create_repo` and `create_commit` for model and dataset repositories; records every commit."""

    def __init__(self):
        self.created = []
        self.commits = []
        self.requests = []
        self.unhandled = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        if request.method == "POST" and path == "/api/repos/create":
            body = json.loads(request.content)
            repo = f"{body.get('organization') or 'user'}/{body['name']}"
            self.created.append({"repo": repo, "type": body.get("type", "model"), "visibility": body.get("visibility")})
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo}", "name": repo, "id": repo})
        if request.method == "POST" and path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/(models|datasets)/(.+)/(preupload|commit)/main", path)
        if request.method == "POST" and match and match.group(3) == "preupload":
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if request.method == "POST" and match:
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            files = {e["value"]["path"]: base64.b64decode(e["value"]["content"]) for e in lines if e["key"] == "file"}
            header = next(e["value"] for e in lines if e["key"] == "header")
            self.commits.append({"type": match.group(1), "repo": match.group(2), "files": files, "header": header})
            prefix = "datasets/" if match.group(1) == "datasets" else ""
            url = f"https://huggingface.co/{prefix}{match.group(2)}/commit/{COMMIT_OID}"
            return httpx2.Response(200, json={"commitUrl": url, "commitOid": COMMIT_OID})
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
