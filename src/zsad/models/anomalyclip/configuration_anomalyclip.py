"""AnomalyCLIP configuration."""

from __future__ import annotations

from typing import ClassVar

from ...configuration_zsad import ZSADConfig


class AnomalyCLIPConfig(ZSADConfig):
    r"""AnomalyCLIP: object-agnostic prompts + DPAM (V-V) dense features, final dense stream only.

    Args (besides `ZSADConfig`'s):
        num_context_tokens: learnable context vectors per prompt (12).
        deep_prompt_length: deep text tokens per prompted layer (4).
        deep_prompt_layers: 1-indexed text layers whose positions 1..m are overwritten (2-9, clipped to
            the text depth).
        normal_prompt / anomaly_prompt: words after the context slots ("object." / "damaged object.").
        local_loss_weight: lambda of `CE + lambda * (focal + dice_a + dice_n)` (4 in the current code).
        prompt_token_ids: token ids of the two templates, filled by `from_backbone` from the backbone's
            tokenizer so checkpoints need no tokenizer.
    """

    model_type = "zsad_anomalyclip"
    default_feature_fractions: ClassVar[tuple[float, ...]] = (1.0,)
    # Reference training: Adam lr 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, seed 111.
    training_defaults: ClassVar[dict | None] = {
        "optimizer": "adam", "learning_rate": 1e-3, "betas": (0.5, 0.999), "weight_decay": 0.0,
        "batch_size": 8, "num_epochs": 15, "seed": 111,
    }

    dense_attention: str | None = "vv"
    global_post_layernorm: bool = False
    pos_embed_interpolation: str = "bilinear"
    num_context_tokens: int = 12
    deep_prompt_length: int = 4
    deep_prompt_layers: list[int] | tuple[int, ...] | None = None
    normal_prompt: str = "object."
    anomaly_prompt: str = "damaged object."
    local_loss_weight: float = 4.0
    prompt_token_ids: list[list[int]] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.deep_prompt_layers is None:
            self.deep_prompt_layers = list(range(2, min(9, self.text_depth) + 1))
        self.deep_prompt_layers = [int(layer) for layer in self.deep_prompt_layers]
        bad = [layer for layer in self.deep_prompt_layers if not 1 <= layer <= self.text_depth]
        if bad:
            raise ValueError(f"deep_prompt_layers must be within 1..{self.text_depth}; got {bad}")
        if self.deep_prompt_layers and self.deep_prompt_length > self.num_context_tokens:
            raise ValueError(
                f"deep_prompt_length ({self.deep_prompt_length}) cannot exceed num_context_tokens "
                f"({self.num_context_tokens}): deep tokens overwrite context slots"
            )
