"""AdaCLIP configuration."""

from __future__ import annotations

from typing import ClassVar

from ...configuration_zsad import ZSADConfig
from ..zsad_clip.configuration_zsad_clip import TEMPLATES

# AdaCLIP's class-aware ensemble uses the first four of the shared templates.
ADACLIP_TEMPLATES = TEMPLATES[:4]


class AdaCLIPConfig(ZSADConfig):
    r"""AdaCLIP: hybrid static + dynamic prompts in both encoders, learned projections, HSF image score.

    Layer settings default to the reference code's for ViT-L/14 (taps at layers 6/12/18/24, prompts in the first
    4 layers) and scale with the depth of other backbones.

    Args (besides `ZSADConfig`'s; `backbone_hidden_act` defaults to `gelu`, the reference's activation):
        prompt_depth: J, the number of prompted layers (4, clipped to the depths of both towers). Visual
            prompts enter vision layers 1..J; text prompts overwrite positions 1..L of text layers 2..J.
        prompt_length: L, tokens per prompted layer (5).
        class_names: the categories the class-aware prompt ensemble is tokenized for (its `{}`, e.g.
            "candle"); `forward(categories=...)` picks one per image. Hyphens become spaces in the
            prompts (e.g. "metal-nut" is prompted as "metal nut"), as in the reference. Change them on a built model with
            `AdaCLIPModel.set_class_names`. Defaults to `["object"]`.
        hybrid_semantic_fusion: fuse the K-means centroid of the most anomalous patches into the image
            embedding (§3.3); False scores the projected global embedding alone.
        hsf_num_clusters: K of the K-means (20); `hsf_num_clusters * hsf_patches_per_cluster` top patches
            (100) are clustered (both capped by the number of patches).
        hsf_weight: weight of the cluster centroid in `normalise(w * c + (1 - w) * g')` (0.2).
        hsf_kmeans_iterations: fixed number of Lloyd iterations of the on-device K-means (20).
        prompt_token_ids: per class name, the token ids of its 28 normal then 20 anomaly ensemble
            sentences, filled by `from_backbone` from the backbone's tokenizer so checkpoints need no
            tokenizer.
    """

    model_type = "zsad_adaclip"
    # Reference training: AdamW lr 0.01, betas (0.5, 0.999), default weight decay, 5 epochs, seed 111. The
    # reference trains with batch 1 only (its dynamic prompts cannot broadcast); here any batch size works.
    training_defaults: ClassVar[dict | None] = {
        "optimizer": "adamw", "learning_rate": 1e-2, "betas": (0.5, 0.999), "weight_decay": 0.01,
        "batch_size": 1, "num_epochs": 5, "seed": 111,
    }

    dense_attention: str | None = None
    # The reference rebuilds CLIP without quick_gelu, so the OpenAI weights run with exact GELU (§11.3).
    backbone_hidden_act: str | None = "gelu"
    temperature: float = 0.01  # logit scale 100
    pos_embed_interpolation: str = "bicubic"
    global_post_layernorm: bool = True
    prompt_depth: int | None = None
    prompt_length: int = 5
    class_names: list[str] | None = None
    hybrid_semantic_fusion: bool = True
    hsf_num_clusters: int = 20
    hsf_patches_per_cluster: int = 5
    hsf_weight: float = 0.2
    hsf_kmeans_iterations: int = 20
    prompt_token_ids: list[list[list[int]]] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.class_names is None:
            self.class_names = ["object"]
        if isinstance(self.class_names, str) or not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be a non-empty list of distinct names; got {self.class_names!r}")
        self.class_names = [str(name) for name in self.class_names]
        max_depth = min(self.vision_depth, self.text_depth)
        if self.prompt_depth is None:
            self.prompt_depth = min(4, max_depth)
        if not 1 <= self.prompt_depth <= max_depth:
            raise ValueError(f"prompt_depth must be within 1..{max_depth} (the shallower tower); got {self.prompt_depth}")
        if self.prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1; got {self.prompt_length}")
        if self.hsf_num_clusters < 1 or self.hsf_patches_per_cluster < 1 or self.hsf_kmeans_iterations < 0:
            raise ValueError(
                "hsf_num_clusters and hsf_patches_per_cluster must be >= 1 and hsf_kmeans_iterations >= 0; got "
                f"{self.hsf_num_clusters}, {self.hsf_patches_per_cluster}, {self.hsf_kmeans_iterations}"
            )
        if not 0.0 <= self.hsf_weight <= 1.0:
            raise ValueError(f"hsf_weight must be within [0, 1]; got {self.hsf_weight}")
