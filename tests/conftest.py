"""Shared fixtures: offline environment and a tiny random CLIP backbone saved to a temporary folder."""

import os
from pathlib import Path

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

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLIP_TOKENIZER = SHARED / "clip-tokenizer"


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A random 4-layer CLIP (28 px native, patch 4) with a character-level tokenizer, saved on disk."""
    return str(save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="session")
def tiny_anomalyclip(tiny_backbone):
    import zsad

    torch.manual_seed(0)
    return zsad.AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=56).eval()


@pytest.fixture(scope="session")
def vitl_text_backbone(tmp_path_factory):
    """Random CLIP with ViT-L/14@336's text widths (768, 12 heads, vocab 49408, projection 768), 9 text
    layers, a small patch-14 vision tower, and the real CLIP tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    if not CLIP_TOKENIZER.is_dir():
        pytest.skip("../shared is absent")
    torch.manual_seed(0)
    config = CLIPConfig(
        projection_dim=768,
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=64, num_hidden_layers=9,
                         num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(image_size=28, patch_size=14, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, projection_dim=768),
    )
    path = tmp_path_factory.mktemp("vitl-text-clip")
    CLIPModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(CLIP_TOKENIZER).save_pretrained(path)
    return path
