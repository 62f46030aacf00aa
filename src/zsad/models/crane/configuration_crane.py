"""Crane / Crane+ configuration (METHODS.md §5)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig, CLIPConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ...clip.vision import GUIDED_VALUE_SOURCES
from ..anomalyclip.configuration_anomalyclip import AnomalyCLIPConfig

DEFAULT_DINO_BACKBONE = "facebook/dinov2-with-registers-base"

# Architecture of facebook/dinov2-with-registers-base (DINOv2 ViT-B/14 with 4 registers, METHODS.md §5.1),
# so a default Crane+ config builds offline.
DINOV2_REG_B14_CONFIG: dict[str, Any] = {
    "model_type": "dinov2_with_registers",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_register_tokens": 4,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
}
DINO_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
PROMPT_CONDITIONING_MODES = ("train", "always", "never")
UPSAMPLE_MODES = ("nearest", "bilinear")


class CraneConfig(AnomalyCLIPConfig):
    r"""Crane: AnomalyCLIP's prompt learner conditioned on the image, E-Attn (QQ+KK+VV) dense features,
    score-based pooling for the image score. With `dino_attention=True` it is Crane+ (DINOv2-guided
    attention at the last layer as a second dense map).

    Args (besides `AnomalyCLIPConfig`'s; the prompt fields keep their AnomalyCLIP meaning):
        prompt_conditioning: when the L2-normalised global image embedding is inserted as a context token
            after the learnable ones (§5.2): `train` (in training mode only: the released pipeline, whose
            test code evaluates with static prompts), `always`, or `never`.
        soft_mean: anomaly map from the mean of the dense maps' probabilities (True) or, as the reference
            (METHODS.md §11.2), each map's logits upsampled (bilinear), averaged, then the softmax (False).
        fusion_weight: weight of the score-pooled patch embedding c in `g+ = normalise(w c + (1 - w) g)` (0.5).
        local_loss_weight: weight of each dense map's `focal + dice` term (2 per map in the reference).
            Defaults to 2 for Crane+ (two different maps) and 8 for Crane, whose reference sums the four
            requested layers' maps, which are all the final dense stream (§5.1).
        image_loss_weight / image_loss_temperature: the `0.2 * CE(<g+, t> / 0.01)` term (§5.4).
        loss_upsample_mode: upsampling of the probabilities in the loss (`nearest`, as the reference's
            training; output maps are always bilinear).
        dino_attention: Crane+: add the DINOv2-guided attention map Z_D at the last layer (§5.1).
        dino_backbone_name_or_path: Hub id or folder of the frozen DINOv2 (`Dinov2Model` or
            `Dinov2WithRegistersModel`), reloaded by id like the CLIP backbone.
        dino_config: its architecture (dict or config); defaults to DINOv2 ViT-B/14 with registers. Its
            patch size must equal CLIP's so both produce the same patch grid.
        dino_mean_scale / dino_sharpness: `S' = (S - 1.2 mean(S)) * 3`, `mean` per image.
        guided_value_source: where D-Attn takes its values V at the last layer: `post_attention` (LN1 of
            that layer's stream after its attention residual, h + Attn(LN1(h)): the reference code, which
            produced the released Crane+ weights and the paper's numbers, METHODS.md §11.1) or
            `layer_input` (LN1 of the layer input h, as §5.1 describes it).
    """

    model_type = "zsad_crane"
    sub_configs_defaults = {
        "clip_config": CLIPConfig,
        "dino_config": SubConfigSpec(AutoConfig, model_type="dinov2_with_registers", optional=True),
    }
    default_feature_fractions: ClassVar[tuple[float, ...]] = (1.0,)
    # METHODS.md §5.4: Adam lr 1e-3, betas (0.6, 0.999), batch 8, 5 epochs, seed 111.
    training_defaults: ClassVar[dict | None] = {
        "optimizer": "adam", "learning_rate": 1e-3, "betas": (0.6, 0.999), "weight_decay": 0.0,
        "batch_size": 8, "num_epochs": 5, "seed": 111,
    }

    dense_attention: str | None = "qq+kk+vv"
    global_post_layernorm: bool = True
    pos_embed_interpolation: str = "bilinear"
    local_loss_weight: float | None = None
    prompt_conditioning: str = "train"
    soft_mean: bool = True
    fusion_weight: float = 0.5
    image_loss_weight: float = 0.2
    image_loss_temperature: float = 0.01
    loss_upsample_mode: str = "nearest"
    dino_attention: bool = False
    dino_backbone_name_or_path: str = DEFAULT_DINO_BACKBONE
    dino_config: dict | PreTrainedConfig | None = None
    dino_mean_scale: float = 1.2
    dino_sharpness: float = 3.0
    guided_value_source: str = "post_attention"

    def __post_init__(self, **kwargs):
        if self.dino_attention and self.dino_config is None:
            self.dino_config = dict(DINOV2_REG_B14_CONFIG)
        super().__post_init__(**kwargs)
        if self.local_loss_weight is None:
            self.local_loss_weight = 2.0 if self.dino_attention else 8.0
        if self.prompt_conditioning not in PROMPT_CONDITIONING_MODES:
            raise ValueError(
                f"prompt_conditioning must be one of {PROMPT_CONDITIONING_MODES}; got {self.prompt_conditioning!r}"
            )
        if self.loss_upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"loss_upsample_mode must be one of {UPSAMPLE_MODES}; got {self.loss_upsample_mode!r}")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ValueError(f"fusion_weight must be within [0, 1]; got {self.fusion_weight}")
        if self.guided_value_source not in GUIDED_VALUE_SOURCES:
            raise ValueError(
                f"guided_value_source must be one of {GUIDED_VALUE_SOURCES}; got {self.guided_value_source!r}"
            )
        if self.image_loss_temperature <= 0:
            raise ValueError(f"image_loss_temperature must be > 0; got {self.image_loss_temperature}")
        embed_dim = self.clip_config.projection_dim
        text_width = self.clip_config.text_config.hidden_size
        if self.prompt_conditioning != "never" and embed_dim != text_width:
            raise ValueError(
                f"prompt conditioning inserts the image embedding (projection_dim={embed_dim}) as a text token "
                f"(hidden_size={text_width}); they must match, or set prompt_conditioning='never'"
            )
        if self.dino_attention:
            self._validate_dino_config()

    def _validate_dino_config(self) -> None:
        if self.dino_config.model_type not in DINO_MODEL_TYPES:
            raise ValueError(
                f"dino_config must be one of the model types {DINO_MODEL_TYPES}; got {self.dino_config.model_type!r}"
            )
        clip_patch = self.clip_config.vision_config.patch_size
        if self.dino_config.patch_size != clip_patch:
            raise ValueError(
                f"the DINOv2 patch size ({self.dino_config.patch_size}) must equal CLIP's ({clip_patch}) so both "
                "give the same patch grid"
            )
