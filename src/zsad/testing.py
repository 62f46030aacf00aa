"""Tiny offline CLIP backbones for tests, examples and docs (no Hub access needed).

`save_tiny_backbone(path)` writes a randomly initialised `CLIPModel` and a character-level
`CLIPTokenizer` whose vocabulary fits the tiny text config, so `from_backbone(path)` works offline.

transformers initialises every bias to 0 and every LayerNorm to the identity (weight 1, bias 0); a test
on such weights cannot tell a missing bias or a swapped LayerNorm from the right one. The tiny test
backbones (`tiny_clip_model`, `save_tiny_backbone`, `save_tiny_dino_backbone`) therefore go through `randomize_biases_and_norms`
(seeded) after construction. `save_random_backbone` keeps transformers' initialisation, so the real-data
smoke run of docs/training.md stays reproducible.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from .file_modes import follow_umask

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
    projection_dim: int | None = None,
) -> CLIPConfig:
    """A tiny `CLIPConfig` (ViT with `vision_layers` layers, 4 heads) whose text vocab fits `tiny_tokenizer`.

    `projection_dim` defaults to the text width, as in ViT-L/14 (768 / 768), which Crane's image-token
    conditioning needs.
    """
    vocab = tiny_tokenizer_vocab()
    projection_dim = hidden_size if projection_dim is None else projection_dim
    return CLIPConfig(
        projection_dim=projection_dim,
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=hidden_size,
            intermediate_size=37,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=context_length,
            projection_dim=projection_dim,
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
            projection_dim=projection_dim,
        ),
    )


@torch.no_grad()
def randomize_biases_and_norms(model: nn.Module, seed: int = 0, bias_std: float = 0.1) -> nn.Module:
    """Fill every bias with N(0, `bias_std`) and every LayerNorm weight with U(0.5, 1.5), in place (seeded).

    Applies to any module tree (CLIP, DINOv2): parameters named `bias` and the `weight` of `nn.LayerNorm`
    modules. Returns `model`.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias":
                values = torch.randn(parameter.shape, generator=generator) * bias_std
            elif name == "weight" and isinstance(module, nn.LayerNorm):
                values = torch.rand(parameter.shape, generator=generator) + 0.5
            else:
                continue
            parameter.copy_(values.to(parameter.dtype))
    return model


def tiny_clip_model(seed: int = 0, **config_kwargs) -> CLIPModel:
    """A tiny random `CLIPModel` (`tiny_clip_config(**config_kwargs)`) with random biases and LayerNorms, in eval mode."""
    torch.manual_seed(seed)
    return randomize_biases_and_norms(CLIPModel(tiny_clip_config(**config_kwargs)), seed).eval()


def optimizer_steps(model, optimizer: torch.optim.Optimizer, steps: int, **inputs) -> list[float]:
    """Run `steps` optimiser steps of `model(**inputs).loss` on one fixed batch; return the losses."""
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def save_tiny_backbone(path: str | os.PathLike, seed: int = 0, **config_kwargs) -> Path:
    """Save a random tiny CLIP (random biases and LayerNorms too) + tokenizer to `path` (usable as
    `backbone_name_or_path`)."""
    path = Path(path)
    tiny_clip_model(seed, **config_kwargs).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    follow_umask(path)
    return path


def save_tiny_dino_backbone(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a random tiny DINOv2 with registers (width 16, 2 layers, patch 4, 2 registers; random biases
    and LayerNorms too) to `path`, usable as Crane+'s `dino_backbone_name_or_path`."""
    torch.manual_seed(seed)
    config = Dinov2WithRegistersConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, patch_size=4,
        image_size=28, num_register_tokens=2,
    )
    path = Path(path)
    randomize_biases_and_norms(Dinov2WithRegistersModel(config), seed).save_pretrained(path)
    follow_umask(path)
    return path


def save_random_backbone(architecture: str | os.PathLike, path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a randomly initialised CLIP with the architecture (config.json) and tokenizer found at
    `architecture` (e.g. a folder with the real CLIP tokenizer and a TinyCLIP config.json)."""
    torch.manual_seed(seed)
    path = Path(path)
    CLIPModel(CLIPConfig.from_pretrained(architecture)).save_pretrained(path)
    AutoTokenizer.from_pretrained(architecture).save_pretrained(path)
    follow_umask(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m zsad.testing [--out DIR] [--architecture DIR] [--seed N]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m zsad.testing",
        description="Write a random CLIP backbone (weights + tokenizer) for offline smoke tests, e.g. "
        "`zsad detect examples/images --backbone tiny-clip --image-size 56`. Its scores mean nothing.",
    )
    parser.add_argument("output_dir", nargs="?", help=argparse.SUPPRESS)  # the former positional spelling
    parser.add_argument("--out", metavar="DIR", help="folder to write (default: tiny-clip)")
    parser.add_argument("--architecture", metavar="DIR",
                        help="folder with a CLIP config.json and tokenizer to copy (default: a tiny char-level CLIP)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out and args.output_dir and args.out != args.output_dir:
        parser.error("give the folder once, as --out DIR")
    out = args.out or args.output_dir or "tiny-clip"
    if args.architecture:
        written = save_random_backbone(args.architecture, out, seed=args.seed)
    else:
        written = save_tiny_backbone(out, seed=args.seed)
    print(f"random CLIP backbone written to {written}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
