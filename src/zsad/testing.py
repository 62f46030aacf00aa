"""Tiny offline CLIP backbones for tests, examples and docs (no Hub access needed).

`save_tiny_backbone(path)` writes a randomly initialised `CLIPModel` and a character-level
`CLIPTokenizer` whose vocabulary fits the tiny text config, so `from_backbone(path)` works offline.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

_CHARACTERS = string.ascii_lowercase + string.digits + ".,-'"
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def tiny_tokenizer_vocab() -> dict[str, int]:
    """Character-level BPE vocabulary: every character, word-final or not, then the special tokens."""
    tokens = [c for c in _CHARACTERS] + [f"{c}</w>" for c in _CHARACTERS] + list(_SPECIAL_TOKENS)
    return {token: index for index, token in enumerate(tokens)}


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer that spells words character by character (no merges)."""
    return CLIPTokenizer(vocab=tiny_tokenizer_vocab(), merges=[])


def tiny_clip_config(
    vision_layers: int = 4,
    text_layers: int = 2,
    hidden_size: int = 32,
    image_size: int = 28,
    patch_size: int = 4,
    context_length: int = 77,
) -> CLIPConfig:
    """A tiny `CLIPConfig` (ViT with `vision_layers` layers, 4 heads) whose text vocab fits `tiny_tokenizer`."""
    vocab = tiny_tokenizer_vocab()
    return CLIPConfig(
        projection_dim=16,
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=hidden_size,
            intermediate_size=37,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=context_length,
            projection_dim=16,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            intermediate_size=37,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            projection_dim=16,
        ),
    )


def save_tiny_backbone(path: str | os.PathLike, seed: int = 0, **config_kwargs) -> Path:
    """Save a random tiny CLIP + tokenizer to `path` (usable as `backbone_name_or_path`)."""
    torch.manual_seed(seed)
    path = Path(path)
    CLIPModel(tiny_clip_config(**config_kwargs)).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m zsad.testing OUTPUT_DIR   (writes a random tiny CLIP backbone + tokenizer)")
    print(f"tiny random CLIP backbone written to {save_tiny_backbone(sys.argv[1])}")
