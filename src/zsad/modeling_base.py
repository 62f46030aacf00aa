"""`ZSADPreTrainedModel`: the forward pipeline every method shares, as named steps a method overrides.

The configuration lives in `configuration_zsad`, the outputs in `modeling_outputs`, loading and saving
in `modeling_checkpoints` (`CheckpointMixin`) and the few-shot memory in `few_shot`
(`NormalReferencesMixin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import CLIPModel, PreTrainedModel

from .clip.processing import ZSADImageProcessor, check_pixel_values
from .clip.text import TokenizedPrompts
from .clip.vision import VisionFeatures, encode_image
from .configuration_zsad import ZSADConfig
from .few_shot import NormalReferences, NormalReferencesMixin, fuse
from .modeling_checkpoints import CheckpointMixin
from .modeling_outputs import AnomalyDetectionOutput, ScoredImages, exceeds
from .scoring import anomaly_maps_from_probabilities, joint_anomaly_scores, similarity_logits, upsample_patch_scores

__all__ = ["AnomalyDetectionOutput", "ZSADAdapter", "ZSADConfig", "ZSADPreTrainedModel"]


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


class ZSADPreTrainedModel(NormalReferencesMixin, CheckpointMixin, PreTrainedModel):
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
    # Domain-aware methods (DA-CLIP) take each training image's domain (`forward(domains=...)`) and a
    # `domain_names` config field, which `zsad train` fills from the data.
    domain_aware: ClassVar[bool] = False
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

    # ------------------------------------------------------------------ weights
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

    def constant_text_features(self, class_name: str | None = None) -> torch.Tensor | None:
        """The `(2, D)` text every image is scored against, or None when the text depends on the image.

        The ONNX export bakes a constant text in; for None it puts the text tower into the graph.
        `class_name` is the category of a class-aware model's export (None: its default prompts).
        """
        return self.text_features()

    def image_processor(self) -> ZSADImageProcessor:
        """The `ZSADImageProcessor` for this model's input size (saved with every checkpoint)."""
        return ZSADImageProcessor(image_size=self.config.image_size)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters as named optimiser groups (each trainable parameter in exactly one).

        `training_defaults["learning_rate_scales"]` gives a group's learning rate as a multiple of the
        method's learning rate (e.g. DA-CLIP's `experts` at 0.1x). Default: one `adapters` group.
        """
        return {"adapters": [p for p in self.parameters() if p.requires_grad]}

    # ------------------------------------------------------------------ forward pieces
    def encode_image(self, pixel_values: torch.Tensor, **options: Any) -> VisionFeatures:
        """One vision pass: global embedding + dense patch embeddings at `config.feature_layers`.

        `options` are further `zsad.clip.vision.encode_image` arguments (`visual_prompts`,
        `guided_attention`, `project_patches`) or overrides of the config's vision settings.
        """
        check_pixel_values(pixel_values, self.config.clip_config.vision_config.patch_size)
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
        size = tuple(anomaly_maps.shape[-2:])
        patch_scores = self.memory_patch_map(features, size)
        memory = self.upsample_memory(patch_scores, features.grid_size, size)
        return fuse(anomaly_maps, memory, fusion), fuse(pred_scores, self.memory_image_scores(patch_scores, memory), fusion)

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

    def auxiliary_losses(self, features: VisionFeatures, domains: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Step 6: weighted extra loss terms (e.g. DA-CLIP's load balance and routing), added to the training loss."""
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
        check_pixel_values(pixel_values, self.config.clip_config.vision_config.patch_size)
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
        domains: Sequence[str] | None = None,
    ) -> AnomalyDetectionOutput | tuple:
        """Score images: `pred_scores (B,)` and `anomaly_maps (B, H, W)`; a loss when targets are given;
        `pred_labels` / `pred_masks` when the config has thresholds.

        `categories` (each image's class name, or one for all) is accepted by every model and used by
        class-aware ones (`class_aware = True`, e.g. AdaCLIP); object-agnostic methods ignore it.
        `masks` (`(B, H, W)` or `(B, 1, H, W)`) are binarised at 0.5 before any loss; `labels` default to
        whether a mask has an anomalous pixel. `domains` (each training image's domain name) feed the
        loss of domain-aware models (`domain_aware = True`, DA-CLIP's routing loss); others ignore it.
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
            auxiliary = self.auxiliary_losses(scored.features, domains)
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
