"""The model a command runs: `--model` / `--backbone` checked before anything heavy is imported, then
loaded (`load_detector`); the options naming it (`add_model_options`).

`--model` is a registry name (`zsad models`: the authors' released detectors and the training-free
models), a local zsad checkpoint or a Hub id; without it, the registry's trained default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..clip import DEFAULT_BACKBONE
from ..errors import first_line
from ..hub.released.registry import (
    default_model_name,
    get_entry,
    registry,
    training_free_models,
)
from .common import (
    CommandError,
    add_output_flags,
    check_hub_access,
    image_size,
    local_path_or_hub_id,
    looks_like_path,
    positive_int,
)


def check_checkpoint_folder(folder: Path) -> dict:
    """The parsed config.json of a local zsad checkpoint; one-line errors for anything that would fail later."""
    from .. import MODEL_CLASSES

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CommandError(f"{folder} is not a zsad checkpoint: it has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CommandError(f"{config_path} is not valid JSON ({error}); re-save or re-download the checkpoint") from None
    known = sorted(cls.config_class.model_type for cls in MODEL_CLASSES.values())
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in known:
        raise CommandError(f"{config_path} has model_type {model_type!r}, which is not a zsad model "
                           f"({', '.join(known)}); pass a zsad checkpoint, or upgrade zsad if it is newer")
    config_class = next(cls.config_class for cls in MODEL_CLASSES.values() if cls.config_class.model_type == model_type)
    try:
        config_class.check_fields(config, unknown_ok=True)  # unknown fields only warn, when loading
    except ValueError as error:
        raise CommandError(f"{config_path}: {error}; fix the value or re-save the checkpoint") from None
    weights = folder / "model.safetensors"
    if not weights.is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise CommandError(f"{folder} has no model.safetensors; re-save or re-download the checkpoint")
    if weights.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CommandError(f"{weights} is not a valid safetensors file ({reason}); "
                               "re-save or re-download the checkpoint") from None
    return config


def _resolve_backbone(value: str, what: str) -> str:
    backbone = local_path_or_hub_id(value, "--backbone")
    check_hub_access(backbone, what=what, flag="--backbone")
    return backbone


def check_sources(model_id: str | None, backbone: str | None) -> tuple[str, str | None]:
    """Check what `load_detector` will load before anything heavy is imported: local paths as paths,
    checkpoints validated, registry names known, and a download that cannot happen fails within seconds
    with the offline recipe. Returns `(model_id, backbone)` as they will be loaded (`model_id` None is
    the registry's default)."""
    model_id = model_id or default_model_name()
    entry = get_entry(model_id) if not Path(model_id).exists() else None
    if model_id in training_free_models() and not Path(model_id).exists():
        backbone = _resolve_backbone(backbone or DEFAULT_BACKBONE, "CLIP backbone")
    elif entry is not None:
        from ..hub.released.download import is_cached, is_offline, manual_route

        if not is_cached(entry) and is_offline():
            raise CommandError(f"--model {model_id}: the released file is not in the cache and HF_HUB_OFFLINE is set; "
                               f"go online once, or {manual_route(entry)}")
        backbone = _resolve_backbone(backbone or entry.backbone, "CLIP backbone")
    else:
        model_id = local_path_or_hub_id(model_id, "--model")
        if Path(model_id).is_dir():
            config = check_checkpoint_folder(Path(model_id))
            stored = config.get("backbone_name_or_path")
            if backbone is None and not config.get("save_backbone") and isinstance(stored, str):
                if not Path(stored).expanduser().exists() and looks_like_path(stored):
                    raise CommandError(f"the CLIP backbone of {model_id}, {stored}, is not on this machine; "
                                       "pass --backbone DIR with a copy of it")
                check_hub_access(stored, what=f"CLIP backbone of {model_id}", flag="--backbone")
        else:
            check_hub_access(model_id, what="model", flag="--model")
        if backbone is not None:
            backbone = _resolve_backbone(backbone, "CLIP backbone")
    return model_id, backbone


def load_detector(model_id: str | None, backbone: str | None, object_name: str | None):
    """The model to run: a registry name (`from_zoo`), a zsad checkpoint (`model_id`), or the registry's
    default (checked by `check_sources` first; no remote code ever runs)."""
    model_id, backbone = check_sources(model_id, backbone)
    from transformers import AutoModel

    from .. import ZSADPreTrainedModel
    from ..hub.released.download import ReleasedModelError
    from ..hub.released.zoo import from_zoo

    named = not Path(model_id).exists() and (model_id in training_free_models() or model_id in registry())
    try:
        if named:
            kwargs = {"object_name": object_name} if object_name and model_id in training_free_models() else {}
            model = from_zoo(model_id, backbone=backbone, **kwargs)
        else:
            model = AutoModel.from_pretrained(model_id, trust_remote_code=False,
                                              **({"backbone_name_or_path": backbone} if backbone else {}))
    except ReleasedModelError as error:
        raise CommandError(f"--model {model_id}: {first_line(error)}") from error
    except (OSError, ValueError, KeyError) as error:
        what = f"backbone {backbone!r}" if model_id in training_free_models() else f"model {model_id!r}"
        reason = first_line(error)
        # zsad's own loaders already name what failed; transformers' messages do not.
        message = reason if reason.startswith("cannot load") else f"cannot load {what}: {reason}"
        if "backbone" in message and "--backbone" not in message:
            message += "; pass --backbone DIR with a local copy of the CLIP backbone"
        raise CommandError(message) from error
    if not isinstance(model, ZSADPreTrainedModel):
        raise CommandError(f"{model_id!r} is a {type(model).__name__}, not a zsad anomaly detection model")
    return model


def add_model_options(parser: argparse.ArgumentParser, *, batches: bool = True) -> None:
    """--model, --backbone, --object-name, --image-size, --device, the output flags; with `batches`, also
    --batch-size and --overwrite (commands that score many images into an output folder)."""
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help=f"a registry name (zsad models; default: {default_model_name()}, the authors' trained "
                        "Crane), zero-shot-clip or winclip (training-free), a zsad checkpoint folder or a Hub id (org/name)")
    parser.add_argument("--backbone", help=f"the CLIP backbone the model runs on: Hub id or local folder (default: the "
                        f"model's own, {DEFAULT_BACKBONE} for the registry's models), e.g. a local copy")
    parser.add_argument("--object-name", help="object word in the training-free models' prompts (default 'object')")
    parser.add_argument("--image-size", type=image_size, metavar="N",
                        help="input resolution, a multiple of the patch size, at most 2048 "
                        "(default: the model's, 518 for ViT-L/14)")
    if batches:
        parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    if batches:
        parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder "
                            "(files of the same names are replaced)")
    add_output_flags(parser, suppress_default=True)
