"""Shared fixtures: offline environment and a tiny random CLIP backbone saved to a temporary folder."""

import os

# Read at import time by huggingface_hub / datasets / evaluate: set before they are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from zsad.testing import save_tiny_backbone  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A random 4-layer CLIP (28 px native, patch 4) with a character-level tokenizer, saved on disk."""
    return str(save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="session")
def tiny_anomalyclip(tiny_backbone):
    import zsad

    torch.manual_seed(0)
    return zsad.AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=56).eval()
