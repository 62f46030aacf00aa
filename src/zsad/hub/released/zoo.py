"""`from_zoo(name)`: a model by registry name, released (fetched, verified, imported once) or training-free."""

from __future__ import annotations

import os
from typing import Any

from ...clip import DEFAULT_BACKBONE
from .download import released_checkpoint
from .registry import get_entry, registry, training_free_models


def from_zoo(name: str, *, backbone: str | os.PathLike | None = None, dino_backbone: str | os.PathLike | None = None,
             **kwargs: Any):
    """A model by registry name (`zsad models` lists them).

    A released detector is downloaded, verified and imported on first use (into the Hugging Face cache)
    and loaded from there afterwards; a training-free one (`zero-shot-clip`, `winclip`) is built on the
    CLIP backbone. `backbone` / `dino_backbone` name local copies of the backbones (default: the
    authors' `openai/clip-vit-large-patch14-336`); `kwargs` go to `from_pretrained` / `from_backbone`
    (e.g. `dtype`, or config fields such as `object_name`).
    """
    from transformers import AutoModel

    from ... import register_auto_classes

    classes = register_auto_classes()
    if name in training_free_models():
        model_type = training_free_models()[name].model_type
        return classes[model_type].from_backbone(backbone or DEFAULT_BACKBONE, **kwargs)
    entry = get_entry(name)
    if entry is None:
        known = [*registry(), *training_free_models()]
        raise ValueError(f"{name!r} is not a registered model; choose one of {', '.join(known)} (zsad models)")
    folder = released_checkpoint(entry, backbone=backbone, dino_backbone=dino_backbone)
    if backbone is not None:
        kwargs["backbone_name_or_path"] = backbone
    return AutoModel.from_pretrained(folder, **kwargs)
