"""Loading and saving zsad checkpoints: `CheckpointMixin` of `ZSADPreTrainedModel`.

A zsad model owns a frozen `transformers.CLIPModel` (`self.clip`, built from `config.clip_config`) plus
small trainable adapters. By default checkpoints hold the adapters only (safetensors), with the config,
the model card and the remote-code shim; the backbone is reloaded by id (`config.backbone_name_or_path`)
in `from_pretrained`. `save_backbone=True` writes self-contained checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, CLIPModel, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_NAME

from .clip import DEFAULT_BACKBONE
from .configuration_zsad import ZSADConfig
from .errors import first_line
from .file_modes import follow_umask, save_safetensors
from .hub.model_card import write_model_card
from .hub.offline import ensure_downloadable
from .hub.remote_code import IMAGE_PROCESSOR_AUTO_MAP, write_remote_code_shim


class CheckpointMixin:
    """`from_backbone`, adapter-only `save_pretrained` / `from_pretrained`, `push_to_hub` with the model card,
    and the frozen backbones (`clip`, `extra_backbones()`) kept out of checkpoints."""

    def extra_backbones(self) -> dict[str, str]:
        """Frozen pretrained modules besides `clip`, as `{attribute name: Hub id or folder}`.

        Like the CLIP backbone they stay in eval mode, are left out of adapter-only checkpoints and are
        loaded from their id by `from_backbone` and `from_pretrained` (e.g. Crane+'s DINOv2).
        """
        return {}

    def load_extra_backbones(self) -> None:
        """Copy the weights of every `extra_backbones()` module from its id (architectures must match)."""
        for name, backbone_id in self.extra_backbones().items():
            module = getattr(self, name)
            pretrained = _load_pretrained(type(module), backbone_id, module.dtype, f"`{name}` backbone")
            _copy_weights(module, pretrained, backbone_id, name)

    @classmethod
    def from_backbone(
        cls,
        backbone_name_or_path: str | os.PathLike = DEFAULT_BACKBONE,
        *,
        dtype: torch.dtype | None = None,
        **config_kwargs: Any,
    ) -> PreTrainedModel:
        """Build a fresh model (untrained adapters) on the CLIP weights and tokenizer at `backbone_name_or_path`.

        A local folder is stored as an absolute path, so the checkpoint loads from any working directory.
        """
        backbone_id = backbone_reference(backbone_name_or_path)
        backbone = load_clip(backbone_id, dtype=dtype)
        tokenizer = load_tokenizer(backbone_id)
        config = cls.config_class(
            backbone_name_or_path=backbone_id, clip_config=backbone.config.to_dict(), **config_kwargs
        )
        cls.tokenize_prompts(config, tokenizer)
        model = cls(config)
        model.clip.load_state_dict(backbone.state_dict())
        model.load_extra_backbones()
        return model.to(dtype=backbone.dtype)

    @classmethod
    def tokenize_prompts(cls, config: ZSADConfig, tokenizer) -> None:
        """Store the token ids of the method's fixed texts in `config` (so checkpoints need no tokenizer)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, backbone_name_or_path=None, **kwargs):
        """Load a zsad checkpoint; adapter-only checkpoints reload the backbone by id.

        `backbone_name_or_path` overrides the id stored in the config (e.g. a local mirror of the backbone).
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if backbone_name_or_path is not None:
            model.config.backbone_name_or_path = backbone_reference(backbone_name_or_path)
        if not model.config.save_backbone:
            model.load_backbone(model.config.backbone_name_or_path)
            model.load_extra_backbones()
        return model

    def load_backbone(self, backbone_name_or_path: str | os.PathLike) -> None:
        """Copy the CLIP weights at `backbone_name_or_path` into `self.clip` (architectures must match)."""
        backbone_id = os.fspath(backbone_name_or_path)
        _copy_weights(self.clip, load_clip(backbone_id, dtype=self.clip.dtype), backbone_id, "clip")
        self._text_cache = None

    def save_pretrained(self, save_directory: str | os.PathLike, *, save_backbone: bool | None = None, **kwargs):
        """Save config + adapter tensors (safetensors) + remote-code shim + model card.

        With `save_backbone=True` (or `config.save_backbone`) the CLIP weights are saved too and the
        checkpoint loads without access to the backbone id.
        """
        kwargs.pop("safe_serialization", None)  # safetensors only
        previous = self.config.save_backbone
        if save_backbone is not None:
            self.config.save_backbone = bool(save_backbone)
        try:
            if not self.config.save_backbone and kwargs.get("state_dict") is None:
                kwargs["state_dict"] = self.adapter_state_dict()
            self.config.auto_map = write_remote_code_shim(save_directory, type(self.config), type(self))
            super().save_pretrained(save_directory, **kwargs)
            weights = Path(save_directory) / SAFE_WEIGHTS_NAME
            if not weights.exists() and kwargs.get("state_dict") == {}:
                # A training-free model has no adapter tensor; transformers then writes no weights file,
                # which from_pretrained requires.
                save_safetensors({}, weights, metadata={"format": "pt"})
            processor = self.image_processor()
            processor.auto_map = IMAGE_PROCESSOR_AUTO_MAP  # AutoImageProcessor with trust_remote_code, no import
            processor.save_pretrained(save_directory)
            write_model_card(self, save_directory, overwrite=False)
            follow_umask(save_directory)
        finally:
            self.config.save_backbone = previous

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        save_backbone: bool | None = None,
        **card_kwargs: Any,
    ) -> str:
        """Upload this model (as `save_pretrained` writes it) with its model card in one commit.

        transformers' own `push_to_hub` would replace the card with its generic template. `card_kwargs` go to `build_model_card` (`training_data`,
        `results_markdown`, `datasets`). Returns the commit URL.
        """
        import tempfile

        from .hub.push import push_folder

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, save_backbone=save_backbone)
            write_model_card(self, folder, overwrite=True, repo_id=repo_id, **card_kwargs)
            return push_folder(
                folder,
                repo_id,
                token=token,
                private=private,
                revision=revision,
                commit_message=commit_message or f"Upload {type(self).__name__}",
            )
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state dict except the frozen backbones' (`clip` and `extra_backbones()`)."""
        frozen = tuple(f"{name}." for name in ("clip", *self.extra_backbones()))
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}


def backbone_reference(backbone_name_or_path: str | os.PathLike) -> str:
    """How a config stores a backbone: an existing local folder as an absolute path, a Hub id as given."""
    path = Path(os.fspath(backbone_name_or_path)).expanduser()
    return os.fspath(path.resolve()) if path.is_dir() else os.fspath(backbone_name_or_path)


def load_clip(backbone_id: str, dtype: torch.dtype | None) -> CLIPModel:
    return _load_pretrained(CLIPModel, backbone_id, dtype, "CLIP backbone")


def _load_pretrained(model_class: type[PreTrainedModel], backbone_id: str, dtype: torch.dtype | None, what: str):
    ensure_downloadable(backbone_id, what=what)  # seconds, not a minute of retries, without the Hub
    try:
        return model_class.from_pretrained(backbone_id, dtype=dtype if dtype is not None else torch.float32)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load the {what} {backbone_id!r} ({first_line(error)})") from error


def _copy_weights(module: nn.Module, pretrained: nn.Module, backbone_id: str, name: str) -> None:
    try:
        module.load_state_dict(pretrained.state_dict())
    except RuntimeError as error:
        raise ValueError(
            f"the backbone at {backbone_id!r} does not match the architecture of `{name}` in this model's config: {error}"
        ) from error


def load_tokenizer(backbone_id: str):
    ensure_downloadable(backbone_id, what="CLIP backbone (its tokenizer)", filename="tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(backbone_id)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load the tokenizer of the CLIP backbone {backbone_id!r} ({first_line(error)})") from error
