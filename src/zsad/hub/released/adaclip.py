"""The released AdaCLIP file format: a flat dict of `clip_model.*` tensors (static prompts, per-token
dynamic prompt generators, patch and image projections; docs/released_weights.md), mapped onto zsad's
AdaCLIP adapters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .safe_loading import CheckpointImportError
from .variants import ADACLIP_DEPTH, ADACLIP_LENGTH, ADACLIP_PREFIX, ADACLIP_TAPS


def flat_state(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors with the `clip_model.` prefix dropped."""
    if not isinstance(loaded, Mapping):
        raise CheckpointImportError(f"{path}: expected a dict of tensors, found a {type(loaded).__name__}")
    bad = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointImportError(f"{path}: entry {bad[0]!r} is not a named tensor")
    outside = [k for k in loaded if not k.startswith(ADACLIP_PREFIX)]
    if outside:
        raise CheckpointImportError(f"{path}: unexpected key {outside[0]!r} (AdaCLIP keys start with {ADACLIP_PREFIX!r})")
    return {k[len(ADACLIP_PREFIX):]: v for k, v in loaded.items()}


def expected_layout(text_width: int, vision_width: int, embed_dim: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released AdaCLIP file at the released configuration, for a backbone of these
    widths (text 768, vision 1024, projection 768 on ViT-L/14@336)."""
    layout: dict[str, tuple[int, ...]] = {}
    for j in range(ADACLIP_DEPTH):
        layout[f"text_prompter.static_prompts.{j}"] = (ADACLIP_LENGTH, text_width)
        layout[f"visual_prompter.static_prompts.{j}"] = (ADACLIP_LENGTH, vision_width)
    for k in range(ADACLIP_TAPS):
        layout[f"patch_token_layer.head.{k}.weight"] = (embed_dim, vision_width)
        layout[f"patch_token_layer.head.{k}.bias"] = (embed_dim,)
    layout["cls_token_layer.head.0.weight"] = (embed_dim, embed_dim)
    layout["cls_token_layer.head.0.bias"] = (embed_dim,)
    for i in range(ADACLIP_LENGTH):
        layout[f"dynamic_visual_prompt_generator.head.{i}.weight"] = (vision_width, embed_dim)
        layout[f"dynamic_visual_prompt_generator.head.{i}.bias"] = (vision_width,)
        layout[f"dynamic_text_prompt_generator.head.{i}.weight"] = (text_width, embed_dim)
        layout[f"dynamic_text_prompt_generator.head.{i}.bias"] = (text_width,)
    return layout


def adapters(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AdaCLIP -> zsad (docs/released_weights.md): static prompts stacked per layer, the five per-token
    generator heads concatenated along the output dimension (row block i = token i), projections as is."""

    def stack(name: str, count: int) -> torch.Tensor:
        return torch.stack([state[f"{name}.{j}"] for j in range(count)])

    def concat(name: str, part: str) -> torch.Tensor:
        return torch.cat([state[f"{name}.head.{i}.{part}"] for i in range(ADACLIP_LENGTH)])

    tensors = {
        "vision_prompts.static": stack("visual_prompter.static_prompts", ADACLIP_DEPTH),
        "vision_prompts.generator.weight": concat("dynamic_visual_prompt_generator", "weight"),
        "vision_prompts.generator.bias": concat("dynamic_visual_prompt_generator", "bias"),
        "text_prompts.static": stack("text_prompter.static_prompts", ADACLIP_DEPTH),
        "text_prompts.generator.weight": concat("dynamic_text_prompt_generator", "weight"),
        "text_prompts.generator.bias": concat("dynamic_text_prompt_generator", "bias"),
        "projections.image.weight": state["cls_token_layer.head.0.weight"],
        "projections.image.bias": state["cls_token_layer.head.0.bias"],
    }
    for k in range(ADACLIP_TAPS):
        tensors[f"projections.patch.{k}.weight"] = state[f"patch_token_layer.head.{k}.weight"]
        tensors[f"projections.patch.{k}.bias"] = state[f"patch_token_layer.head.{k}.bias"]
    return {key: value.float().contiguous() for key, value in tensors.items()}
