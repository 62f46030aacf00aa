"""Crane and Crane+ (Salehi et al., arXiv 2504.11055): context-guided prompt learning and
attention refinement for zero-shot anomaly detection.

- Dense features: E-Attn, the sum of the QQ, KK and VV self-correlations, on a dual path over the last
  19/24 layers; patch tokens of the final dense stream (§5.1). Global embedding with `post_layernorm`.
- Crane+: D-Attn, attention weights from the frozen DINOv2's patch similarities applied to the last
  CLIP layer's values, as a second dense map (§5.1).
- Prompts: AnomalyCLIP's object-agnostic learner (43,008 parameters), conditioned on the image by
  inserting its normalised global embedding as a context token (§5.2).
- Map: mean of the dense maps' probabilities (or softmax of their mean upsampled logits), Gaussian sigma 4; image
  score: the score-pooled patch embedding fused with the global one (§5.3).
- Loss: 2 * sum_maps (focal + dice on (1 - S_n + S_a) / 2) + 0.2 * CE(<g+, t> / 0.01) (§5.4).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...adapters.prompt_learner import ObjectAgnosticPrompts
from ...clip.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ...clip.text import TokenizedPrompts
from ...losses import dice_loss, focal_loss
from ...clip.vision import VisionFeatures
from ...clip import DEFAULT_BACKBONE
from ...errors import first_line
from ...hub.offline import ensure_downloadable
from ...modeling_base import ZSADPreTrainedModel
from ...scoring import similarity_logits, upsample_patch_scores
from ..anomalyclip.modeling_anomalyclip import AnomalyCLIPModel
from .configuration_crane import DEFAULT_DINO_BACKBONE, CraneConfig

CRANE_CITATION = """@article{salehi2025crane,
  title   = {Crane: Context-Guided Prompt Learning and Attention Refinement for Zero-Shot Anomaly Detection},
  author  = {Salehi, Alireza and Salehi, Mohammadreza and Hosseini, Reshad and Snoek, Cees G. M. and
             Yamada, Makoto and Sabokrou, Mohammad},
  journal = {arXiv preprint arXiv:2504.11055},
  year    = {2025}
}"""

# Per channel (scale, shift) taking CLIP-normalised pixels to ImageNet-normalised ones (DINOv2's input).
CLIP_TO_IMAGENET = tuple(
    (std / imagenet_std, (mean - imagenet_mean) / imagenet_std)
    for mean, std, imagenet_mean, imagenet_std in zip(
        OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    )
)


def dino_guided_attention(similarity: torch.Tensor, mean_scale: float = 1.2, sharpness: float = 3.0) -> torch.Tensor:
    """Crane+'s D-Attn weights `(B, N, N)` from patch similarities `S (B, N, N)`.

    `S' = (S - mean_scale * mean(S)) * sharpness`; entries with `S' < 0` are masked out and each row is
    softmax-normalised. Two deliberate differences from the reference:
    - `mean(S)` is taken per image (the reference averages over the whole batch tensor, so an image's
      map depended on the other images of its batch);
    - each row keeps its maximum even when it is negative, so no row is all -inf (the reference gives
      NaN rows once `mean(S) > 1 / mean_scale`); rows with a non-negative entry are unchanged.
    """
    mean = similarity.mean(dim=(-2, -1), keepdim=True)
    scores = (similarity - mean_scale * mean) * sharpness
    keep = (scores >= 0) | (scores == scores.amax(dim=-1, keepdim=True))
    return scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)


class CraneModel(ZSADPreTrainedModel):
    config_class = CraneConfig
    _keys_to_ignore_on_load_missing = [r"^clip\.", r"^dino\."]

    def __init__(self, config: CraneConfig):
        super().__init__(config)
        text_config = config.clip_config.text_config
        self.prompt_learner = ObjectAgnosticPrompts.from_config(config)
        self.prompt_tokens = TokenizedPrompts(config.prompt_token_ids, text_config.max_position_embeddings)
        self.dino = AutoModel.from_config(config.dino_config) if config.dino_attention else None
        if self.dino is not None:
            self.dino.requires_grad_(False)
        self.post_init()

    @property
    def card_info(self) -> dict[str, str]:
        plus = self.config.dino_attention
        return {
            "name": "Crane+" if plus else "Crane",
            "tag": "crane",
            "summary": "AnomalyCLIP-style learnable prompts conditioned on the image's global embedding, "
            "E-Attn (QQ+KK+VV) dense features"
            + (" plus DINOv2-guided attention at the last layer" if plus else "")
            + ", and score-based pooling of patch features for the image score.",
            "paper": "[Crane: Context-Guided Prompt Learning and Attention Refinement for Zero-Shot Anomaly "
            "Detection](https://arxiv.org/abs/2504.11055), arXiv 2025",
            "citation": CRANE_CITATION,
            "training_data": "the test split of an auxiliary dataset (MVTec AD -> evaluate elsewhere; VisA -> MVTec AD)",
        }

    # ------------------------------------------------------------------ backbones and prompts
    def extra_backbones(self) -> dict[str, str]:
        return {"dino": self.config.dino_backbone_name_or_path} if self.dino is not None else {}

    @classmethod
    def from_backbone(
        cls,
        backbone_name_or_path: str | os.PathLike = DEFAULT_BACKBONE,
        *,
        dtype: torch.dtype | None = None,
        **config_kwargs: Any,
    ) -> CraneModel:
        """`ZSADPreTrainedModel.from_backbone`; for Crane+ (`dino_attention=True`) the DINOv2 architecture
        and weights come from `dino_backbone_name_or_path` unless `dino_config` is given."""
        if config_kwargs.get("dino_attention") and config_kwargs.get("dino_config") is None:
            dino_id = os.fspath(config_kwargs.get("dino_backbone_name_or_path", DEFAULT_DINO_BACKBONE))
            ensure_downloadable(dino_id, what="DINOv2 backbone of Crane+")
            try:
                dino_config = AutoConfig.from_pretrained(dino_id)
            except (OSError, ValueError) as error:
                raise OSError(f"cannot load the DINOv2 backbone {dino_id!r} ({first_line(error)})") from error
            config_kwargs.update(dino_backbone_name_or_path=dino_id, dino_config=dino_config.to_dict())
        return super().from_backbone(backbone_name_or_path, dtype=dtype, **config_kwargs)

    @classmethod
    def tokenize_prompts(cls, config: CraneConfig, tokenizer) -> None:
        """AnomalyCLIP's two templates (§5.2: its prompt learner, unchanged)."""
        AnomalyCLIPModel.tokenize_prompts(config, tokenizer)
        context_length = config.clip_config.text_config.max_position_embeddings
        if config.prompt_conditioning != "never" and max(map(len, config.prompt_token_ids)) >= context_length:
            raise ValueError(
                f"a prompt fills the text encoder's {context_length} positions: no room for the conditioning token"
            )

    @property
    def conditions_prompts(self) -> bool:
        """Whether this forward inserts the image token (`config.prompt_conditioning`, train/eval mode)."""
        mode = self.config.prompt_conditioning
        return mode == "always" or (mode == "train" and self.training)

    def compute_text_features(self, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """`(2, D)` static [normal, anomaly] text embeddings, or `(B, 2, D)` conditioned on each image's
        global embedding `image_embeds (B, P)` (§5.2)."""
        return self.prompt_learner.text_features(self.clip, self.prompt_tokens, image_embeds)

    def constant_text_features(self, class_name: str | None = None) -> torch.Tensor | None:
        """None with `prompt_conditioning='always'`: the prompts are conditioned on each image (§5.2)."""
        return None if self.conditions_prompts else super().constant_text_features(class_name)

    # ------------------------------------------------------------------ Crane+ guided attention
    def dino_attention_weights(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, N, N)` D-Attn weights from the frozen DINOv2's last-layer patch features (§5.1).

        The CLIP-normalised pixels are re-normalised to ImageNet statistics; CLS and register tokens are
        dropped; `S` is the cosine similarity of the patch features.
        """
        if self.dino is None:
            raise ValueError("this Crane model has no DINOv2 backbone: set dino_attention=True (Crane+)")
        pixels = torch.stack(
            [pixel_values[:, c] * scale + shift for c, (scale, shift) in enumerate(CLIP_TO_IMAGENET)], dim=1
        )
        hidden = self.dino(pixel_values=pixels.to(self.dino.dtype)).last_hidden_state
        prefix = 1 + getattr(self.dino.config, "num_register_tokens", 0)
        # float32 outside autocast: the threshold `S' >= 0` is a discrete choice that a bf16 `S` flips
        with torch.autocast(pixel_values.device.type, enabled=False):
            patches = F.normalize(hidden[:, prefix:].float(), dim=-1)
            similarity = patches @ patches.transpose(1, 2)
            return dino_guided_attention(similarity, self.config.dino_mean_scale, self.config.dino_sharpness)

    # ------------------------------------------------------------------ pipeline steps
    def image_features(self, pixel_values: torch.Tensor, categories: Sequence[str] | None = None) -> VisionFeatures:
        """E-Attn dense features; for Crane+ also the D-Attn output at the last layer (§5.1)."""
        with torch.no_grad():
            guided = {self.config.vision_depth: self.dino_attention_weights(pixel_values)} if self.dino is not None else None
            return self.encode_image(
                pixel_values, guided_attention=guided, guided_value_source=self.config.guided_value_source
            )

    def prompt_text_features(self, features: VisionFeatures, categories: Sequence[str] | None = None) -> torch.Tensor:
        """Prompts conditioned on each image's global embedding when `conditions_prompts`, else the cached
        static ones (§5.2). Crane is object-agnostic: `categories` is ignored."""
        if self.conditions_prompts:
            return self.compute_text_features(features.global_embeds)
        return self.text_features()

    def image_logits(self, features: VisionFeatures, text: torch.Tensor, patch_logits: list[torch.Tensor]) -> torch.Tensor:
        """Score-based pooling (§5.3): patch features weighted by their anomaly probability, fused with the
        global embedding: `g+ = normalise(w c + (1 - w) g)`."""
        cfg = self.config
        dense_features = [F.normalize(f, dim=-1) for f in (*features.patch_embeds, *features.guided_patch_embeds)]
        weights = torch.stack(patch_logits).mean(dim=0).softmax(dim=-1)[..., 1:]
        pooled = F.normalize((weights * torch.stack(dense_features).mean(dim=0)).sum(dim=1), dim=-1)
        global_features = F.normalize(features.global_embeds, dim=-1)
        fused = cfg.fusion_weight * pooled + (1.0 - cfg.fusion_weight) * global_features
        return similarity_logits(fused, text, cfg.temperature)

    def map_probabilities(self, patch_logits, grid_size, size) -> list[torch.Tensor]:
        """`soft_mean`: each dense map's softmax, upsampled (bilinear; the map step averages them); else, as
        the reference, the maps' logits upsampled (bilinear), averaged, then the softmax."""
        if self.config.soft_mean:
            return super().map_probabilities(patch_logits, grid_size, size)
        upsampled = [upsample_patch_scores(logits, grid_size, size) for logits in patch_logits]
        return [torch.stack(upsampled).mean(dim=0).softmax(dim=1)]

    def loss_probabilities(self, patch_logits, grid_size, size, map_probabilities) -> list[torch.Tensor]:
        """Per dense map, softmax then upsampling with `loss_upsample_mode` (nearest in the reference's training)."""
        mode = self.config.loss_upsample_mode
        return [upsample_patch_scores(logits.softmax(dim=-1), grid_size, size, mode) for logits in patch_logits]

    def compute_loss(self, image_logits, pixel_probabilities, labels, masks) -> torch.Tensor:
        """`w * sum_maps [focal(S) + dice((1 - S_n + S_a) / 2)] + 0.2 * CE(<g+, t> / 0.01)` (§5.4)."""
        cfg = self.config
        sharpened = image_logits * (cfg.temperature / cfg.image_loss_temperature)
        loss = cfg.image_loss_weight * F.cross_entropy(sharpened, labels)
        if masks is not None:
            for p in pixel_probabilities:
                combined = (1.0 - p[:, 0] + p[:, 1]) / 2
                loss = loss + cfg.local_loss_weight * (focal_loss(p, masks) + dice_loss(combined, masks))
        return loss
