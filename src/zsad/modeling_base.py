"""Core objects shared by every method: `ZSADConfig`, `ZSADPreTrainedModel`, `AnomalyDetectionOutput`.

A zsad model owns a frozen `transformers.CLIPModel` (`self.clip`, built from `config.clip_config`) plus
small trainable adapters. By default checkpoints hold the adapters only; the backbone is reloaded by id
(`config.backbone_name_or_path`) in `from_pretrained`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import SAFE_WEIGHTS_NAME, ModelOutput

from .clip.processing import ZSADImageProcessor
from .clip.text import TokenizedPrompts
from .clip.vision import DENSE_ATTENTION_KINDS, VisionFeatures, encode_image
from .file_modes import follow_umask, save_safetensors
from .few_shot import REFERENCE_FUSIONS, NormalReferences, association_scores, fuse, split_categories
from .hub.remote_code import IMAGE_PROCESSOR_AUTO_MAP, write_remote_code_shim
from .scoring import (
    JOINT_SCORE_POOLINGS,
    anomaly_maps_from_probabilities,
    gaussian_blur,
    joint_anomaly_scores,
    similarity_logits,
    upsample_patch_scores,
)

DEFAULT_BACKBONE = "openai/clip-vit-large-patch14-336"

# Architecture of openai/clip-vit-large-patch14-336, so a default config builds offline.
VIT_L14_336_CLIP_CONFIG: dict[str, Any] = {
    "projection_dim": 768,
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "image_size": 336,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
}

POS_EMBED_INTERPOLATIONS = ("bicubic", "bilinear")
IMAGE_SCORES = ("global", "joint")
REFERENCE_IMAGE_SIZE = 518  # 37 x 37 patches of 14 px


LABELS = ("normal", "anomalous")  # the names of the decisions 0 and 1 (`pred_labels`)


def exceeds(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """The decision rule of every threshold in zsad: anomalous where `values >= threshold`."""
    return values >= threshold


def relative_layer(depth: int, fraction: float) -> int:
    """1-indexed layer at `fraction` of `depth` (rounded half up, at least 1)."""
    return max(1, min(depth, math.floor(depth * fraction + 0.5)))


class ZSADConfig(PreTrainedConfig):
    r"""Configuration shared by all zsad models.

    Layer settings of the reference code are written for the 24-layer ViT-L/14; every layer field left as `None`
    is resolved relative to the backbone depth when the config is created (taps at
    `default_feature_fractions` of the depth, dense path over the last 19/24 of the layers), so a
    12-layer ViT-B/16 or a 4-layer test backbone needs no extra arguments. Explicit values always win.
    All layer indices are 1-indexed, as in the papers.

    Args:
        backbone_name_or_path: Hub id or local folder of the CLIP backbone (reloaded by `from_pretrained`
            when `save_backbone` is False).
        clip_config: the backbone architecture (`CLIPConfig` or dict); defaults to ViT-L/14@336.
        save_backbone: save the CLIP weights inside checkpoints (air-gapped use) instead of the id only.
        image_size: input resolution (square); defaults to the multiple of the patch size nearest to 518
            (518 for the /14 backbones of all reference code, 512 for /16).
        feature_layers: vision layers whose patch tokens produce anomaly maps (dense-stream tokens from
            `dense_start_layer` on, plain CLIP tokens before it).
        dense_attention: dense self-correlation on the second stream (`vv`, `kk`, `qq`, `qq+kk`,
            `qq+kk+vv`), or `None` for plain CLIP tokens.
        dense_start_layer: first layer of the dense dual path.
        temperature: softmax temperature of the patch/global-to-text cosine similarities.
        gaussian_sigma: sigma (in pixels at `image_size`) of the Gaussian applied to anomaly maps; 0 disables.
        pos_embed_interpolation: `bicubic` (transformers) or `bilinear` (AnomalyCLIP/Crane reference code).
        global_post_layernorm: apply `post_layernorm` to the CLS token before the projection (CLIP does;
            AnomalyCLIP does not).
        image_score: `global` (the global embedding's anomaly probability, every reference method) or
            `joint` (HeadCLIP's joint anomaly score:
            `alpha * p_global + (1 - alpha) * pool(anomaly map)`).
        joint_score_alpha: alpha of the joint score, in [0, 1].
        joint_score_pooling: `max` of the map, or `topk_mean`: the mean of its top
            `joint_score_topk_fraction` pixels.
        backbone_hidden_act: MLP activation of both CLIP towers (a transformers activation name such as
            `gelu` or `quick_gelu`), written into `clip_config` so it holds however the backbone is built
            or loaded; None keeps the backbone's own. AdaCLIP's reference runs the OpenAI weights with
            exact `gelu`.
        image_threshold: decision threshold on `pred_scores`; when set, outputs add
            `pred_labels = pred_scores >= image_threshold` (`zsad calibrate` sets it, docs/inference.md).
        pixel_threshold: decision threshold on `anomaly_maps`; when set, outputs add
            `pred_masks = anomaly_maps >= pixel_threshold`.
        reference_fusion: with normal references set (`set_normal_references`), how the memory map and
            its maximum combine with the zero-shot map and score: `mean` (WinCLIP+), `memory_only`,
            `zero_shot_only` (docs/few_shot.md).
    """

    model_type = "zsad"
    sub_configs_defaults = {"clip_config": CLIPConfig}
    default_feature_fractions: ClassVar[tuple[float, ...]] = (0.25, 0.5, 0.75, 1.0)
    dense_fraction: ClassVar[float] = 19 / 24
    # Optimiser and schedule of the method's reference training (None: training-free).
    training_defaults: ClassVar[dict | None] = None

    backbone_name_or_path: str | None = DEFAULT_BACKBONE
    clip_config: dict | CLIPConfig | None = None
    save_backbone: bool = False
    image_size: int | None = None
    feature_layers: list[int] | tuple[int, ...] | None = None
    dense_attention: str | None = "vv"
    dense_start_layer: int | None = None
    temperature: float = 0.07
    gaussian_sigma: float = 4.0
    pos_embed_interpolation: str = "bicubic"
    global_post_layernorm: bool = True
    image_score: str = "global"
    joint_score_alpha: float = 0.5
    joint_score_pooling: str = "max"
    joint_score_topk_fraction: float = 0.01
    backbone_hidden_act: str | None = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    reference_fusion: str = "mean"

    def __post_init__(self, **kwargs):
        if self.clip_config is None:
            self.clip_config = CLIPConfig(**VIT_L14_336_CLIP_CONFIG)
        super().__post_init__(**kwargs)
        if self.backbone_hidden_act is not None:
            if self.backbone_hidden_act not in ACT2FN:
                raise ValueError(f"backbone_hidden_act must be a transformers activation name; got {self.backbone_hidden_act!r}")
            self.clip_config = copy.deepcopy(self.clip_config)  # never change a caller's CLIPConfig
            self.clip_config.text_config.hidden_act = self.backbone_hidden_act
            self.clip_config.vision_config.hidden_act = self.backbone_hidden_act
        depth = self.vision_depth
        if self.image_size is None:
            patch = self.clip_config.vision_config.patch_size
            self.image_size = patch * max(1, round(REFERENCE_IMAGE_SIZE / patch))
        if self.feature_layers is None:
            self.feature_layers = sorted({relative_layer(depth, f) for f in self.default_feature_fractions})
        self.feature_layers = [int(layer) for layer in self.feature_layers]
        if self.dense_start_layer is None and self.dense_attention is not None:
            self.dense_start_layer = depth - relative_layer(depth, self.dense_fraction) + 1
        self._validate_zsad_fields()

    @property
    def vision_depth(self) -> int:
        return self.clip_config.vision_config.num_hidden_layers

    @property
    def text_depth(self) -> int:
        return self.clip_config.text_config.num_hidden_layers

    def _validate_zsad_fields(self) -> None:
        depth = self.vision_depth
        bad = [layer for layer in self.feature_layers if not 1 <= layer <= depth]
        if not self.feature_layers or bad:
            raise ValueError(f"feature_layers must be non-empty and within 1..{depth}; got {self.feature_layers}")
        if self.dense_attention is not None:
            if self.dense_attention not in DENSE_ATTENTION_KINDS:
                raise ValueError(
                    f"dense_attention must be one of {sorted(DENSE_ATTENTION_KINDS)} or None; "
                    f"got {self.dense_attention!r}"
                )
            if not 1 <= self.dense_start_layer <= depth:
                raise ValueError(f"dense_start_layer must be within 1..{depth}; got {self.dense_start_layer}")
        if self.pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(
                f"pos_embed_interpolation must be one of {POS_EMBED_INTERPOLATIONS}; "
                f"got {self.pos_embed_interpolation!r}"
            )
        patch = self.clip_config.vision_config.patch_size
        if self.image_size <= 0 or self.image_size % patch:
            raise ValueError(f"image_size must be a positive multiple of the patch size {patch}; got {self.image_size}")
        if self.temperature <= 0 or self.gaussian_sigma < 0:
            raise ValueError("temperature must be > 0 and gaussian_sigma >= 0")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}; got {self.image_score!r}")
        if not 0.0 <= self.joint_score_alpha <= 1.0:
            raise ValueError(f"joint_score_alpha must be within [0, 1]; got {self.joint_score_alpha}")
        if self.joint_score_pooling not in JOINT_SCORE_POOLINGS:
            raise ValueError(f"joint_score_pooling must be one of {JOINT_SCORE_POOLINGS}; got {self.joint_score_pooling!r}")
        if not 0.0 < self.joint_score_topk_fraction <= 1.0:
            raise ValueError(f"joint_score_topk_fraction must be within (0, 1]; got {self.joint_score_topk_fraction}")
        for name in ("image_threshold", "pixel_threshold"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None; got {value!r}")
        if self.reference_fusion not in REFERENCE_FUSIONS:
            raise ValueError(f"reference_fusion must be one of {REFERENCE_FUSIONS}; got {self.reference_fusion!r}")


@dataclass
class AnomalyDetectionOutput(ModelOutput):
    """Outputs of every zsad model (names follow anomalib's `pred_score` / `anomaly_map`, batched).

    Args:
        loss: training loss, when `labels` and/or `masks` were given.
        pred_scores: `(B,)` image-level anomaly probability in [0, 1].
        anomaly_maps: `(B, H, W)` pixel-level anomaly probability at the input resolution.
        patch_logits: per feature layer, `(B, N, 2)` normal/anomaly logits of the patch tokens.
        image_logits: `(B, 2)` normal/anomaly logits of the global embedding.
        pred_labels: `(B,)` int64, 1 = anomalous (`pred_scores >= config.image_threshold`); only when the
            threshold is set.
        pred_masks: `(B, H, W)` bool (`anomaly_maps >= config.pixel_threshold`); only when the threshold is set.
    """

    loss: torch.FloatTensor | None = None
    pred_scores: torch.FloatTensor | None = None
    anomaly_maps: torch.FloatTensor | None = None
    patch_logits: tuple[torch.FloatTensor, ...] | None = None
    image_logits: torch.FloatTensor | None = None
    pred_labels: torch.LongTensor | None = None
    pred_masks: torch.BoolTensor | None = None


@dataclass
class ScoredImages:
    """Everything `ZSADPreTrainedModel.score_images` computes on the way to the scores and maps."""

    features: VisionFeatures
    patch_logits: list[torch.Tensor]
    image_logits: torch.Tensor
    map_probabilities: list[torch.Tensor]
    anomaly_maps: torch.Tensor
    pred_scores: torch.Tensor


class ZSADAdapter(nn.Module):
    """Base of the trainable parts; `reset_parameters` initialises them (called by `_init_weights`)."""

    def reset_parameters(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement reset_parameters()")


# Parameters the text path never reads: `text_features` leaves them in the model's dtype.
_VISION_PARAMETERS = ("clip.vision_model.", "clip.visual_projection.", "dino.")


class _TextFeaturesCall(nn.Module):
    """`model.compute_text_features()` as a module call, so that `torch.func.functional_call` can run it
    with substituted (float32) parameters."""

    def __init__(self, model: ZSADPreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self) -> torch.Tensor:
        return self.model.compute_text_features()


class ZSADPreTrainedModel(PreTrainedModel):
    """Frozen CLIP backbone + trainable adapters, adapter-only checkpoints, text-feature cache.

    `forward` is one pipeline of named steps, each a method that a subclass overrides where its paper
    changes that step (the defaults are AnomalyCLIP's):

    1. `image_features`: the vision pass -> `VisionFeatures` (global + dense patch embeddings);
    2. `prompt_text_features`: `(2, D)` or per-image `(B, 2, D)` [normal, anomaly] text embeddings;
    3. `patch_logits` and `image_logits`: similarities of the patches / the image to the text;
    4. `map_probabilities`: `(B, 2, H, W)` maps at the input size, blurred into `anomaly_maps`;
    5. `image_scores`: `pred_scores` from the image logits (and the map, for the joint score);
       `fuse_normal_references`: with normal references set, fuse in the memory map (docs/few_shot.md);
    6. `loss_probabilities` + `compute_loss` (+ `auxiliary_losses`) when targets are given.

    Subclasses provide at least `compute_text_features()` and, when trainable, `compute_loss()`.
    """

    config_class = ZSADConfig
    base_model_prefix = "zsad"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "CLIPTextEmbeddings"]
    _keys_to_ignore_on_load_missing = [r"^clip\."]
    # Class-aware methods prompt with each image's category and implement `set_class_names(names)`.
    class_aware: ClassVar[bool] = False
    # Methods whose adapters sit inside the vision tower need gradients through it (else it runs under
    # no_grad); `gradient_checkpointing_enable()` then trades compute for activation memory.
    trains_through_vision: ClassVar[bool] = False
    output_class: ClassVar[type[AnomalyDetectionOutput]] = AnomalyDetectionOutput

    def __init__(self, config: ZSADConfig):
        super().__init__(config)
        self.clip = CLIPModel(config.clip_config)
        self.clip.requires_grad_(False)
        self._text_cache: tuple[tuple, torch.Tensor] | None = None
        self._normal_references: NormalReferences | None = None

    # ------------------------------------------------------------------ weights and checkpoints
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The CLIP backbone is a PreTrainedModel: transformers dispatches its own initialisation.
        if isinstance(module, ZSADAdapter):
            module.reset_parameters()
        elif isinstance(module, TokenizedPrompts):
            module.reset_buffers()

    def train(self, mode: bool = True) -> ZSADPreTrainedModel:
        super().train(mode)
        for name in ("clip", *self.extra_backbones()):
            getattr(self, name).eval()  # frozen backbones: no dropout, whatever the adapters do
        return self

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
    ) -> ZSADPreTrainedModel:
        """Build a fresh model (untrained adapters) on the CLIP weights and tokenizer at `backbone_name_or_path`.

        A local folder is stored as an absolute path, so the checkpoint loads from any working directory.
        """
        backbone_id = backbone_reference(backbone_name_or_path)
        backbone = _load_clip(backbone_id, dtype=dtype)
        tokenizer = _load_tokenizer(backbone_id)
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
        _copy_weights(self.clip, _load_clip(backbone_id, dtype=self.clip.dtype), backbone_id, "clip")
        self._text_cache = None

    def save_pretrained(self, save_directory: str | os.PathLike, *, save_backbone: bool | None = None, **kwargs):
        """Save config + adapter tensors (safetensors) + remote-code shim + model card.

        With `save_backbone=True` (or `config.save_backbone`) the CLIP weights are saved too and the
        checkpoint loads without access to the backbone id.
        """
        from .hub.model_card import write_model_card

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

        from .hub.model_card import write_model_card
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

    def onnx_export_blocker(self) -> str | None:
        """Why `zsad.export.export_onnx` cannot export this model as configured, or None.

        The export bakes the text features in as constants, so every model whose text depends on the
        image (or on its category) is refused.
        """
        if self.class_aware:
            return "its text prompts depend on each image's category (class-aware prompts)"
        return None

    def image_processor(self) -> ZSADImageProcessor:
        """The `ZSADImageProcessor` for this model's input size (saved with every checkpoint)."""
        return ZSADImageProcessor(image_size=self.config.image_size)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state dict except the frozen backbones' (`clip` and `extra_backbones()`)."""
        frozen = tuple(f"{name}." for name in ("clip", *self.extra_backbones()))
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters as named optimiser groups (each trainable parameter in exactly one).

        `training_defaults["learning_rate_scales"]` gives a group's learning rate as a multiple of the
        method's learning rate (e.g. DA-CLIP's `experts` at 0.1x). Default: one `adapters` group.
        """
        return {"adapters": [p for p in self.parameters() if p.requires_grad]}

    # ------------------------------------------------------------------ normal references (few-shot)
    @property
    def normal_references(self) -> NormalReferences | None:
        """The memory set by `set_normal_references` / `load_normal_references`, or None (zero-shot)."""
        return self._normal_references

    @torch.no_grad()
    def set_normal_references(
        self,
        pixel_values: torch.Tensor,
        categories: str | Sequence[str] | None = None,
        *,
        batch_size: int = 8,
        dtype: torch.dtype = torch.float32,
    ) -> NormalReferences:
        """Store the dense features of k normal images `(k, 3, H, W)` as the memory (WinCLIP+, §4.3).

        The features are those of the `image_features` step (`reference_features`), so every model gets
        its own: AdaCLIP's projected tokens, Crane+'s guided map, WinCLIP's windows. Later forwards add
        the memory map (`config.reference_fusion`). Images run `batch_size` at a time; `dtype=float16`
        halves the memory. Replaces any earlier references; not part of the checkpoint.
        """
        _check_pixel_values(pixel_values, self.config.clip_config.vision_config.patch_size, "normal reference images")
        if pixel_values.shape[0] == 0:
            raise ValueError("set_normal_references needs at least one normal reference image")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        chunks = pixel_values.split(batch_size)
        banks: list[list[torch.Tensor]] = []
        for chunk, chunk_categories in zip(chunks, split_categories(categories, [len(c) for c in chunks])):
            features = self.image_features(chunk.to(self.device, self.dtype), chunk_categories)
            for index, group in enumerate(self.reference_features(features)):
                if index == len(banks):
                    banks.append([])
                banks[index].append(F.normalize(group.float(), dim=-1).flatten(0, 1).to(dtype))
        self._normal_references = NormalReferences(
            tuple(torch.cat(bank) for bank in banks),
            tuple(pixel_values.shape[-2:]),
            pixel_values.shape[0],
            self.config.model_type,
        )
        return self._normal_references

    def clear_normal_references(self) -> None:
        """Forget the normal references: forwards are zero-shot again."""
        self._normal_references = None

    def save_normal_references(self, path: str | os.PathLike) -> None:
        """Write the memory to one safetensors file (it is never part of `save_pretrained`)."""
        if self._normal_references is None:
            raise ValueError("this model has no normal references to save: call set_normal_references(...) first")
        self._normal_references.save(path)

    def load_normal_references(self, path: str | os.PathLike) -> NormalReferences:
        """Read a memory written by `save_normal_references` of a model of the same type (and configuration)."""
        references = NormalReferences.load(path)
        if references.model_type != self.config.model_type:
            raise ValueError(
                f"these normal references were computed by a {references.model_type!r} model; "
                f"this model is {self.config.model_type!r}"
            )
        self._normal_references = references.to(self.device)
        return self._normal_references

    def reference_features(self, features: VisionFeatures) -> list[torch.Tensor]:
        """The `(B, n, P)` feature groups stored by `set_normal_references`, one memory bank each;
        default: every dense map (feature layers, then guided-attention outputs)."""
        return [*features.patch_embeds, *features.guided_patch_embeds]

    def memory_patch_scores(self, scores: list[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
        """`(B, N)` patch scores from the association scores of every bank; default: their mean."""
        return torch.stack(scores).mean(dim=0)

    def memory_maps(self, features: VisionFeatures, size: tuple[int, int]) -> torch.Tensor:
        """`(B, H, W)` memory map: per patch the visual association score with the normal references
        (`1/2 (1 - max cos)`, WinCLIP Eq. 4), upsampled and blurred like the zero-shot map."""
        references = self._normal_references
        if references is None:
            raise ValueError("this model has no normal references: call set_normal_references(...) first")
        if tuple(size) != tuple(references.image_size):
            height, width = references.image_size
            raise ValueError(
                f"the normal references are {height}x{width} images but these are {size[0]}x{size[1]}: "
                "process both at the same size"
            )
        queries = self.reference_features(features)
        shapes = [bank.shape[-1] for bank in references.banks]
        if shapes != [q.shape[-1] for q in queries]:
            raise ValueError(
                f"the normal references hold features of widths {shapes}; this model makes "
                f"{[q.shape[-1] for q in queries]} (references of another model or configuration?)"
            )
        device = queries[0].device
        if references.banks[0].device != device:
            references = self._normal_references = references.to(device)
        scores = [association_scores(q, bank) for q, bank in zip(queries, references.banks)]
        patch_scores = self.memory_patch_scores(scores, features.grid_size)
        maps = upsample_patch_scores(patch_scores.unsqueeze(-1), features.grid_size, size)[:, 0]
        return gaussian_blur(maps, self.config.gaussian_sigma)

    # ------------------------------------------------------------------ forward pieces
    def encode_image(self, pixel_values: torch.Tensor, **options: Any) -> VisionFeatures:
        """One vision pass: global embedding + dense patch embeddings at `config.feature_layers`.

        `options` are further `zsad.clip.vision.encode_image` arguments (`visual_prompts`,
        `guided_attention`, `project_patches`) or overrides of the config's vision settings.
        """
        _check_pixel_values(pixel_values, self.config.clip_config.vision_config.patch_size)
        cfg = self.config
        settings = {
            "feature_layers": cfg.feature_layers,
            "dense_attention": cfg.dense_attention,
            "dense_start_layer": cfg.dense_start_layer,
            "pos_embed_interpolation": cfg.pos_embed_interpolation,
            "global_post_layernorm": cfg.global_post_layernorm,
        }
        return encode_image(self.clip, pixel_values, **{**settings, **options})

    def compute_text_features(self) -> torch.Tensor:
        """`(2, D)` L2-normalised [normal, anomaly] text embeddings."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_text_features()")

    def text_features(self) -> torch.Tensor:
        """`compute_text_features()`, cached while no parameter changes and no gradient is needed.

        The cache is float32 and computed outside autocast, whatever the model's dtype: a bf16/fp16
        model's text path (its weights upcast for this one pass, a copy of the text tower) runs in
        float32. The text is encoded once per model, so this costs nothing per image, and it halves
        Crane's bf16 image-AUROC shift (docs/benchmarks.md)."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self.compute_text_features()
        params = list(self.parameters())
        key = (params[0].device, params[0].dtype, tuple(p._version for p in params))
        if self._text_cache is None or self._text_cache[0] != key:
            upcast = {
                f"model.{name}": p.float()
                for name, p in self.named_parameters()
                if p.is_floating_point() and p.dtype != torch.float32 and not name.startswith(_VISION_PARAMETERS)
            }
            with torch.no_grad(), torch.autocast(params[0].device.type, enabled=False):
                features = torch.func.functional_call(_TextFeaturesCall(self), upcast, ())
            self._text_cache = (key, features.float())
        return self._text_cache[1]

    def prompt_free_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, P)` global embedding of a frozen, prompt-free pass (no dense path, no grad): the image
        condition of AdaCLIP's dynamic prompts, DA-CLIP's router and HeadCLIP's dynamic head weights."""
        with torch.no_grad():
            return self.encode_image(pixel_values, feature_layers=(), dense_attention=None).global_embeds

    # ------------------------------------------------------------------ pipeline steps (see the class docstring)
    def image_features(self, pixel_values: torch.Tensor, categories: Sequence[str] | None = None) -> VisionFeatures:
        """Step 1: one vision pass (under no_grad unless `trains_through_vision`)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trains_through_vision):
            return self.encode_image(pixel_values)

    def prompt_text_features(self, features: VisionFeatures, categories: Sequence[str] | None = None) -> torch.Tensor:
        """Step 2: `(2, D)` (or `(B, 2, D)`) L2-normalised [normal, anomaly] text embeddings; cached default."""
        return self.text_features()

    def patch_logits(self, features: VisionFeatures, text: torch.Tensor) -> list[torch.Tensor]:
        """Step 3: `(B, N, 2)` logits `cos(f_p, t_c) / temperature` of every dense map (feature layers, then
        guided-attention outputs)."""
        maps = (*features.patch_embeds, *features.guided_patch_embeds)
        return [similarity_logits(patches, text, self.config.temperature) for patches in maps]

    def image_logits(self, features: VisionFeatures, text: torch.Tensor, patch_logits: list[torch.Tensor]) -> torch.Tensor:
        """Step 3: `(B, 2)` logits of the global embedding."""
        return similarity_logits(features.global_embeds, text, self.config.temperature)

    def map_probabilities(
        self, patch_logits: list[torch.Tensor], grid_size: tuple[int, int], size: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Step 4: `(B, 2, H, W)` probability maps at the input size; their mean `(p_a + 1 - p_n) / 2` is
        blurred into `anomaly_maps`. Default: per map, softmax then bilinear upsampling."""
        return [upsample_patch_scores(logits.softmax(dim=-1), grid_size, size) for logits in patch_logits]

    def image_scores(self, image_logits: torch.Tensor, anomaly_maps: torch.Tensor) -> torch.Tensor:
        """Step 5: `(B,)` scores, the global anomaly probability or the joint score (`config.image_score`)."""
        global_scores = image_logits.softmax(dim=-1)[:, 1]
        if self.config.image_score == "global":
            return global_scores
        cfg = self.config
        return joint_anomaly_scores(
            global_scores, anomaly_maps, cfg.joint_score_alpha, cfg.joint_score_pooling, cfg.joint_score_topk_fraction
        )

    def fuse_normal_references(
        self, features: VisionFeatures, anomaly_maps: torch.Tensor, pred_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 5 (few-shot): with normal references, fuse the memory map into `anomaly_maps` and its
        maximum into `pred_scores` by `config.reference_fusion` (WinCLIP+, §4.3); else unchanged."""
        fusion = self.config.reference_fusion
        if self._normal_references is None or fusion == "zero_shot_only":
            return anomaly_maps, pred_scores
        memory = self.memory_maps(features, tuple(anomaly_maps.shape[-2:]))
        return fuse(anomaly_maps, memory, fusion), fuse(pred_scores, memory.flatten(1).amax(dim=1), fusion)

    def loss_probabilities(
        self,
        patch_logits: list[torch.Tensor],
        grid_size: tuple[int, int],
        size: tuple[int, int],
        map_probabilities: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """Step 6: the `(B, 2, H, W)` maps the local loss sees; default: the map probabilities themselves."""
        return map_probabilities

    def compute_loss(
        self,
        image_logits: torch.Tensor,
        pixel_probabilities: list[torch.Tensor],
        labels: torch.Tensor,
        masks: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Step 6: training loss; training-free models return None."""
        return None

    def auxiliary_losses(self, features: VisionFeatures) -> dict[str, torch.Tensor]:
        """Step 6: weighted extra loss terms (e.g. DA-CLIP's load balance), added to the training loss."""
        return {}

    def output_extras(self, features: VisionFeatures) -> dict[str, Any]:
        """Method-specific fields of `output_class` beyond `AnomalyDetectionOutput`'s."""
        return {}

    def score_images(
        self,
        pixel_values: torch.Tensor,
        categories: str | Sequence[str] | None = None,
        text_features: torch.Tensor | None = None,
    ) -> ScoredImages:
        """Steps 1-5 of the pipeline: scores and maps, with the intermediate results the loss needs.

        `text_features` replaces step 2 (the ONNX export bakes them in as a constant).
        """
        _check_pixel_values(pixel_values, self.config.clip_config.vision_config.patch_size)
        size = tuple(pixel_values.shape[-2:])
        features = self.image_features(pixel_values, categories)
        text = self.prompt_text_features(features, categories) if text_features is None else text_features
        patch_logits = self.patch_logits(features, text)
        image_logits = self.image_logits(features, text, patch_logits)
        map_probabilities = self.map_probabilities(patch_logits, features.grid_size, size)
        anomaly_maps = anomaly_maps_from_probabilities(map_probabilities, self.config.gaussian_sigma)
        pred_scores = self.image_scores(image_logits, anomaly_maps)
        anomaly_maps, pred_scores = self.fuse_normal_references(features, anomaly_maps, pred_scores)
        return ScoredImages(features, patch_logits, image_logits, map_probabilities, anomaly_maps, pred_scores)

    def decisions(self, pred_scores: torch.Tensor, anomaly_maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """`pred_labels` / `pred_masks` for the thresholds set in the config (anomalous when `>=`)."""
        out = {}
        if self.config.image_threshold is not None:
            out["pred_labels"] = exceeds(pred_scores, self.config.image_threshold).long()
        if self.config.pixel_threshold is not None:
            out["pred_masks"] = exceeds(anomaly_maps, self.config.pixel_threshold)
        return out

    def forward(
        self,
        pixel_values: torch.Tensor,
        masks: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        categories: str | Sequence[str] | None = None,
    ) -> AnomalyDetectionOutput | tuple:
        """Score images: `pred_scores (B,)` and `anomaly_maps (B, H, W)`; a loss when targets are given;
        `pred_labels` / `pred_masks` when the config has thresholds.

        `categories` (each image's class name, or one for all) is accepted by every model and used by
        class-aware ones (`class_aware = True`, e.g. AdaCLIP); object-agnostic methods ignore it.
        `masks` (`(B, H, W)` or `(B, 1, H, W)`) are binarised at 0.5 before any loss; `labels` default to
        whether a mask has an anomalous pixel.
        """
        scored = self.score_images(pixel_values, categories)
        size = tuple(pixel_values.shape[-2:])
        loss = None
        if labels is not None or masks is not None:
            masks, labels = _check_targets(masks, labels, pixel_values)
            loss_probabilities = []
            if masks is not None:
                loss_probabilities = self.loss_probabilities(
                    scored.patch_logits, scored.features.grid_size, size, scored.map_probabilities
                )
            loss = self.compute_loss(scored.image_logits, loss_probabilities, labels, masks)
            auxiliary = self.auxiliary_losses(scored.features)
            if loss is not None and auxiliary:
                loss = loss + sum(auxiliary.values())

        output = self.output_class(
            loss=loss,
            pred_scores=scored.pred_scores,
            anomaly_maps=scored.anomaly_maps,
            patch_logits=tuple(scored.patch_logits),
            image_logits=scored.image_logits,
            **self.decisions(scored.pred_scores, scored.anomaly_maps),
            **self.output_extras(scored.features),
        )
        return output if return_dict is not False else output.to_tuple()


def backbone_reference(backbone_name_or_path: str | os.PathLike) -> str:
    """How a config stores a backbone: an existing local folder as an absolute path, a Hub id as given."""
    path = Path(os.fspath(backbone_name_or_path)).expanduser()
    return os.fspath(path.resolve()) if path.is_dir() else os.fspath(backbone_name_or_path)


def _load_clip(backbone_id: str, dtype: torch.dtype | None) -> CLIPModel:
    return _load_pretrained(CLIPModel, backbone_id, dtype, "CLIP backbone")


def _load_pretrained(model_class: type[PreTrainedModel], backbone_id: str, dtype: torch.dtype | None, what: str):
    try:
        return model_class.from_pretrained(backbone_id, dtype=dtype if dtype is not None else torch.float32)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load the {what} {backbone_id!r} ({_first_line(error)})") from error


def _copy_weights(module: nn.Module, pretrained: nn.Module, backbone_id: str, name: str) -> None:
    try:
        module.load_state_dict(pretrained.state_dict())
    except RuntimeError as error:
        raise ValueError(
            f"the backbone at {backbone_id!r} does not match the architecture of `{name}` in this model's config: {error}"
        ) from error


def _load_tokenizer(backbone_id: str):
    try:
        return AutoTokenizer.from_pretrained(backbone_id)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load the tokenizer of the CLIP backbone {backbone_id!r} ({_first_line(error)})") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_pixel_values(pixel_values: torch.Tensor, patch_size: int, name: str = "pixel_values") -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor of RGB images; got shape {shape}")
    height, width = pixel_values.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"{name}: height and width must be multiples of the patch size {patch_size}; got {height}x{width}")


def _check_targets(
    masks: torch.Tensor | None, labels: torch.Tensor | None, pixel_values: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor]:
    batch, _, height, width = pixel_values.shape
    if masks is not None:
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if tuple(masks.shape) != (batch, height, width):
            raise ValueError(f"masks must have shape {(batch, height, width)} to match pixel_values; got {tuple(masks.shape)}")
        # Binarised at 0.5 before any loss, as the processor and the reference code do.
        masks = (masks.to(pixel_values.device) > 0.5).to(torch.float32)
    if labels is None:
        labels = (masks.flatten(1).amax(dim=1) > 0.5).long()
    else:
        labels = torch.as_tensor(labels, device=pixel_values.device).long().view(-1)
        if labels.numel() != batch:
            raise ValueError(f"labels must have {batch} entries to match pixel_values; got {labels.numel()}")
    return masks, labels
