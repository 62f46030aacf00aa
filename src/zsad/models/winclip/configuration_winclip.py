"""Configuration of WinCLIP / WinCLIP+ (Jeong et al., CVPR 2023; docs/models/winclip.md)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import CLIPConfig

from ..zsad_clip.configuration_zsad_clip import ZeroShotCLIPConfig

WINCLIP_BACKBONE = "openai/clip-vit-base-patch16"
MEMORY_IMAGE_SCORES = ("grid", "map")

# Architecture of openai/clip-vit-base-patch16, so a default WinCLIP config builds offline.
VIT_B16_CLIP_CONFIG: dict[str, Any] = {
    "projection_dim": 512,
    "text_config": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "projection_dim": 512,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "quick_gelu",
        "projection_dim": 512,
    },
}


class WinCLIPConfig(ZeroShotCLIPConfig):
    r"""Training-free WinCLIP: plain CLIP (no dense attention), the compositional prompt ensemble
    (`object_name` fills the class slot: "object", or the class name; `set_class_names` for categories),
    window embeddings at `window_sizes` (in patches, stride 1), the full-image zero-shot score. With normal
    references set it is WinCLIP+ (the memory holds the final-layer patch and the window embeddings).
    By default it computes what anomalib's `WinClip` computes (docs/models/winclip.md).

    The default backbone is OpenAI's ViT-B/16 (the paper's ViT-B/16+ is an OpenCLIP/LAION model).

    Args (besides `ZeroShotCLIPConfig`'s):
        window_sizes: side lengths of the sliding windows in patches (the paper: 2 and 3, the small and
            mid scales of a 15 x 15 grid).
        image_size: defaults to the backbone's native resolution (224 for ViT-B/16, 240 for the paper's
            ViT-B/16+), so that windows cover the same share of the image as in the paper.
        memory_projection: WinCLIP+'s patch memory holds the final-layer patch tokens after `post_layernorm`
            and the visual projection (True) or after `post_layernorm` only (False, anomalib's: the
            896-d tokens of its ViT-B/16+).
        memory_image_score: the memory's share of the few-shot image score: the maximum of the memory's
            patch grid (`grid`, anomalib's) or of the upsampled memory map (`map`).
    Defaults otherwise follow anomalib's WinClip: the `anomalib` prompt set and its raw-mean ensemble,
    temperature 0.07, no Gaussian smoothing. A checkpoint saved before these fields existed keeps its
    earlier behaviour (`legacy_defaults`).
    """

    model_type = "zsad_winclip"
    default_feature_fractions: ClassVar[tuple[float, ...]] = (1.0,)

    backbone_name_or_path: str | None = WINCLIP_BACKBONE
    dense_attention: str | None = None
    global_post_layernorm: bool = True
    pos_embed_interpolation: str = "bicubic"
    gaussian_sigma: float = 0.0
    window_sizes: list[int] | tuple[int, ...] = (2, 3)
    prompt_set: str = "anomalib"
    ensemble: str = "raw_mean"
    memory_projection: bool = False
    memory_image_score: str = "grid"

    legacy_defaults: ClassVar[dict[str, Any]] = {
        "prompt_set": "anomalyclip", "ensemble": "normalized_mean", "memory_projection": True, "memory_image_score": "map",
    }

    def __post_init__(self, **kwargs):
        native_size = self.image_size is None
        if self.clip_config is None:
            self.clip_config = CLIPConfig(**VIT_B16_CLIP_CONFIG)
        super().__post_init__(**kwargs)
        if native_size:
            self.image_size = self.clip_config.vision_config.image_size
        self.window_sizes = [int(size) for size in self.window_sizes]
        if not self.window_sizes or min(self.window_sizes) < 1:
            raise ValueError(f"window_sizes must be a non-empty list of positive sizes; got {self.window_sizes}")
        if self.memory_image_score not in MEMORY_IMAGE_SCORES:
            raise ValueError(f"memory_image_score must be one of {MEMORY_IMAGE_SCORES}; got {self.memory_image_score!r}")
        self._validate_zsad_fields()
