"""`import_released_checkpoint`: one of the authors' released files -> an adapter-only zsad checkpoint with
its model card.

The file is read with `torch.load(weights_only=True)` only (`safe_loading`); keys, shapes and the prompt
token ids are checked against the documented layout of its format (`anomalyclip_crane`, `adaclip`), the
tensors are mapped onto the zsad adapters (docs/released_weights.md), and the configuration is the one
the reference test script uses for that checkpoint (`variants`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...clip import DEFAULT_BACKBONE
from ...errors import first_line
from ...modeling_checkpoints import backbone_reference, load_clip, load_tokenizer
from ..model_card import write_model_card
from . import adaclip, anomalyclip_crane
from .cards import model_class, released_card_kwargs
from .safe_loading import CheckpointImportError, check_layout, load_released_file
from .variants import (
    ADACLIP_PREFIX,
    ADACLIP_TAPS,
    NUM_DEEP_LAYERS,
    REFERENCE_SIZE,
    RELEASED_METHODS,
    SOURCES,
    TRAINED_ON_CHOICES,
    ReleasedVariant,
)


@dataclass
class ImportResult:
    """What `import_released_checkpoint` wrote and checked."""

    out_dir: Path
    variant: ReleasedVariant
    adapter_tensors: dict[str, torch.Tensor]
    embedding_max_difference: float | None = None
    warnings: list[str] = field(default_factory=list)


def infer_trained_on(kind: str, path: Path) -> str | None:
    """The training set from the reference's folder names (`trained_on_<data>_<model>` for Crane;
    AnomalyCLIP's `9_12_4_multiscale_visa` was trained on MVTec AD and `9_12_4_multiscale` on VisA,
    per its train.sh). None when the path does not tell."""
    folders = [part.lower() for part in path.resolve().parts[:-1]]
    for folder in reversed(folders):
        if kind in ("crane", "crane+"):
            match = re.fullmatch(r"trained_on_(mvtec|visa)_(crane|cranep)", folder)
            if match:
                return match.group(1)
        elif kind == "anomalyclip" and folder.endswith("_multiscale_visa"):
            return "mvtec"
        elif kind == "anomalyclip" and folder.endswith("_multiscale"):
            return "visa"
    return None


def infer_epoch(path: Path) -> int | None:
    """N of the reference's `epoch_<N>.pth` file names."""
    match = re.fullmatch(r"epoch_(\d+)\.pth", path.name)
    return int(match.group(1)) if match else None


def resolve_variant(kind: str, path: Path, trained_on: str | None) -> ReleasedVariant:
    if kind not in RELEASED_METHODS:
        raise CheckpointImportError(f"unknown method {kind!r}; choose one of {', '.join(RELEASED_METHODS)}")
    choices = TRAINED_ON_CHOICES[kind]
    if trained_on is None:
        trained_on = infer_trained_on(kind, path)
        if trained_on is None:
            raise CheckpointImportError(
                f"{path}: cannot tell what the weights were trained on from the path; pass --trained-on "
                f"{'|'.join(choices)}"
            )
    trained_on = trained_on.lower()
    if trained_on not in choices:
        raise CheckpointImportError(f"--trained-on {trained_on!r}: {SOURCES[kind].name} weights are released for {', '.join(choices)}")
    return ReleasedVariant(kind, trained_on, infer_epoch(path) if kind != "adaclip" else None)


def _dino_config(dino_backbone: str) -> dict | None:
    """DINOv2 architecture for Crane+; the built-in ViT-B/14-with-registers one for the default id offline."""
    from transformers import AutoConfig

    from ...models.crane.configuration_crane import DEFAULT_DINO_BACKBONE
    from ..offline import HubUnreachableError, ensure_downloadable

    try:
        ensure_downloadable(dino_backbone, what="DINOv2 backbone")  # seconds, not retries, without the Hub
        return AutoConfig.from_pretrained(dino_backbone).to_dict()
    except (HubUnreachableError, OSError, ValueError) as error:
        if dino_backbone == DEFAULT_DINO_BACKBONE:
            return None  # CraneConfig's default architecture is this model's
        raise CheckpointImportError(f"cannot load the DINOv2 backbone {dino_backbone!r} ({first_line(error)})") from error


def build_config(variant: ReleasedVariant, backbone: str, clip_config: dict, tokenizer, dino_backbone: str | None = None):
    """The zsad config of `variant` on the backbone with `clip_config`, prompts tokenized with `tokenizer`."""
    cls = model_class(variant.kind)
    depth = clip_config["vision_config"]["num_hidden_layers"]
    settings = variant.config_settings(depth)
    patch = clip_config["vision_config"]["patch_size"]
    settings["image_size"] = patch * max(1, round(REFERENCE_SIZE / patch))  # 518 on the /14 backbones
    if variant.kind == "crane+":
        from ...models.crane.configuration_crane import DEFAULT_DINO_BACKBONE

        dino_id = dino_backbone or DEFAULT_DINO_BACKBONE
        settings.update(dino_backbone_name_or_path=dino_id, dino_config=_dino_config(dino_id))
    try:
        config = cls.config_class(backbone_name_or_path=backbone, clip_config=clip_config, **settings)
    except ValueError as error:
        raise CheckpointImportError(f"{variant.source.name} cannot run on the backbone {backbone!r}: {first_line(error)}") from None
    if variant.kind == "adaclip" and len(config.feature_layers) != ADACLIP_TAPS:
        raise CheckpointImportError(f"the backbone has {depth} vision layers; AdaCLIP's {ADACLIP_TAPS} taps need at least 4")
    try:
        cls.tokenize_prompts(config, tokenizer)
    except ValueError as error:
        raise CheckpointImportError(f"cannot tokenize the {variant.source.name} prompts with the tokenizer of {backbone!r}: {first_line(error)}") from None
    return config


def import_released_checkpoint(
    kind: str,
    file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    backbone: str | os.PathLike = DEFAULT_BACKBONE,
    trained_on: str | None = None,
    dino_backbone: str | None = None,
    repo_id: str | None = None,
) -> ImportResult:
    """Convert a released file into an adapter-only zsad checkpoint with its model card in `out_dir`.

    `repo_id` names the Hub repository in the card (else `zsad push` fills it in when uploading).

    Raises `CheckpointImportError` for a file that cannot be imported and `OSError` for a backbone that
    cannot be loaded; nothing is written then.
    """
    path = Path(file)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointImportError(f"{out} already exists and is not an empty folder; choose a new OUT_DIR")
    variant = resolve_variant(kind, path, trained_on)
    loaded = load_released_file(path)
    name = SOURCES[kind].name
    state = adaclip.flat_state(loaded, path) if kind == "adaclip" else anomalyclip_crane.flat_state(loaded, path, name)
    backbone_id = backbone_reference(backbone)
    clip = load_clip(backbone_id, dtype=torch.float32)
    tokenizer = load_tokenizer(backbone_id)
    clip_config = clip.config.to_dict()
    text_width = clip.config.text_config.hidden_size
    if kind == "adaclip":
        layout = adaclip.expected_layout(text_width, clip.config.vision_config.hidden_size, clip.config.projection_dim)
    else:
        layout = anomalyclip_crane.expected_layout(kind, text_width)
    check_layout(state, layout, path, name, ADACLIP_PREFIX if kind == "adaclip" else "")
    config = build_config(variant, backbone_id, clip_config, tokenizer, dino_backbone and backbone_reference(dino_backbone))

    result_warnings: list[str] = []
    embedding_difference = None
    if kind == "adaclip":
        adapters = adaclip.adapters(state)
    else:
        if config.text_depth < 1 + NUM_DEEP_LAYERS:
            raise CheckpointImportError(
                f"the backbone's text tower has {config.text_depth} layers; the {NUM_DEEP_LAYERS} deep prompts "
                f"enter text layers 2..{1 + NUM_DEEP_LAYERS}"
            )
        anomalyclip_crane.check_prompt_ids(state, config.prompt_token_ids, path)
        token_embedding = clip.text_model.embeddings.token_embedding.weight
        embedding_difference = anomalyclip_crane.check_embedding_buffers(state, config.prompt_token_ids, token_embedding, path)
        if embedding_difference > anomalyclip_crane.EMBEDDING_RTOL:
            result_warnings.append(
                f"{path}: the file's token-embedding buffers differ from the token embeddings of {backbone_id!r} "
                f"(largest difference {embedding_difference:.3g} of the table's scale): the weights were trained "
                "on another CLIP backbone, so the imported model will not reproduce the authors' results on this one"
            )
        adapters = anomalyclip_crane.adapters(state)
    del clip

    with torch.device("meta"):
        model = model_class(kind)(config)
    unmatched = set(adapters) ^ set(model.adapter_state_dict())
    if unmatched:
        raise CheckpointImportError(f"the mapped tensors do not match the zsad model's adapters: {sorted(unmatched)}")
    model.load_state_dict(adapters, strict=False, assign=True)
    # Written next to OUT_DIR and renamed into place, so a failure never leaves a half-written checkpoint.
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{out.name}.zsad-tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save_pretrained(staging, state_dict=dict(adapters))
        write_model_card(model, staging, overwrite=True, **released_card_kwargs(variant, model, repo_id))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return ImportResult(out, variant, adapters, embedding_difference, result_warnings)
