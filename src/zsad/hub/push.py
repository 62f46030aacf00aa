"""Publishing to the Hub: the model card goes up in the same commit as the weights.

`PreTrainedModel.push_to_hub` would replace our README with transformers' generic card, so zsad saves
the folder itself and uploads it with `HfApi.upload_folder`.
"""

from __future__ import annotations

import os

from huggingface_hub import HfApi

# Training by-products that must never be published.
IGNORE_PATTERNS = ["checkpoints/*", "logs/*", "*.pkl", "*.bin", "*.pt", "*.pth"]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload zsad model",
    revision: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` (config, safetensors, README card, shim); return the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=os.fspath(folder),
        commit_message=commit_message,
        revision=revision,
        ignore_patterns=IGNORE_PATTERNS,
    )
    return info.commit_url
