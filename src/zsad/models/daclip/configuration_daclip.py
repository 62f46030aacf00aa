"""DA-CLIP configuration ([OUR DESIGN, from the abstract]; docs/models/daclip.md)."""

from __future__ import annotations

from typing import ClassVar

from ...configuration_zsad import relative_layer
from ..anomalyclip.configuration_anomalyclip import AnomalyCLIPConfig

DAKA_ROUTINGS = ("token", "image")


class DACLIPConfig(AnomalyCLIPConfig):
    r"""DA-CLIP: AnomalyCLIP's pipeline with a domain-aware prompt bank selected by an image-level router
    (pathway 1) and DAKA, routed LoRA experts on the dense stream (pathway 2).

    Layer settings are written for ViT-L/14 and scale with the backbone depth like `feature_layers`.

    Args (besides `AnomalyCLIPConfig`'s; the prompt fields keep their meaning, the deep text tokens of
    `deep_prompt_layers` now come from the domain bank):
        num_experts: E, domains in the prompt bank = LoRA experts per DAKA layer (4).
        top_k_experts: experts the image router keeps (2); their probabilities are renormalised.
        router_temperature: tau of the router softmax over cosine similarities (0.1).
        visual_prompt_layers: vision layers receiving the combined visual prompts (1-4 on ViT-L/14:
            appended before the first, replaced before the later ones). `[]` turns pathway 1's visual
            prompts off.
        visual_prompt_length: visual prompt tokens per layer (4).
        daka_layers: vision layers after which DAKA adapts the dense stream (6/12/18/24 on ViT-L/14; at
            1/4, 1/2, 3/4 and 1 of the depth, no earlier than `dense_start_layer`). `[]` turns pathway 2 off.
        lora_rank / lora_alpha: r and alpha of every LoRA expert (8, 16: scaling 2).
        daka_mix: beta of the DAKA residual `x + beta * sum_e g_e (alpha / r) B_e A_e x` (0.1).
        token_top_k: experts each token's gate keeps (2).
        project_daka_layers: the §6.2.4 read-out ablation: besides the final dense stream through
            `post_layernorm` and the visual projection, the DAKA-adapted patch tokens of every DAKA layer
            that is not a feature layer (`projected_daka_layers`: 6/12/18 on ViT-L/14) go through a
            learned `Linear(vision width -> projection dim)` each (AdaCLIP-style) and give one more map
            each (False).
        daka_routing: `token` (per-token gates on [token ; visual prompt summary]) or `image` (every token
            of an image uses the image router's weights; no gates) - the §6.2.8 routing ablation.
        per_domain_prompts: one text + visual prompt set per domain (True) or a single set shared by all
            (False; the router still weights DAKA) - the §6.2.8 prompt ablation.
        load_balance_weight: weight of the load-balance loss (squared coefficient of variation of the
            summed router probabilities, image router + token gates) (0.01).
        diversity_weight: weight of the expert-diversity loss (equiangular target on the domain prompt
            sets) (0.01).
        gate_condition_norm: RMS-normalise the token and the condition separately before the token gate,
            so the image's domain condition enters on the same footing as the token (True; checkpoints
            saved before this field existed load with False, their behaviour).
        domain_names: the training domains, in order (`zsad train` sets them from the `domain` column or
            the dataset names); domain d is routed to expert `d % num_experts` by the routing loss. None:
            no domain labels, the router learns from the load balance alone.
        routing_loss_weight: weight of the routing loss, the cross-entropy of the image router's softmax
            against each training image's domain expert; on only with two or more `domain_names` (1.0).

    `image_score` defaults to `joint` here: the image score mixes the global probability with the maximum
    of the DAKA-adapted anomaly map, so the experts reach the image score (docs/models/daclip.md).
    """

    model_type = "zsad_daclip"
    # Adam, 1e-3 for the prompts and keys, 1e-4 for the LoRA experts and the routers
    # (the "experts" parameter group at 0.1 x the learning rate), betas (0.5, 0.999), batch 8, 15 epochs.
    training_defaults: ClassVar[dict | None] = {
        "optimizer": "adam", "learning_rate": 1e-3, "learning_rate_scales": {"experts": 0.1},
        "betas": (0.5, 0.999), "weight_decay": 0.0, "batch_size": 8, "num_epochs": 15, "seed": 111,
    }
    default_daka_fractions: ClassVar[tuple[float, ...]] = (0.25, 0.5, 0.75, 1.0)
    visual_prompt_fraction: ClassVar[float] = 4 / 24

    num_experts: int = 4
    top_k_experts: int = 2
    router_temperature: float = 0.1
    visual_prompt_layers: list[int] | tuple[int, ...] | None = None
    visual_prompt_length: int = 4
    daka_layers: list[int] | tuple[int, ...] | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    daka_mix: float = 0.1
    token_top_k: int = 2
    project_daka_layers: bool = False
    daka_routing: str = "token"
    per_domain_prompts: bool = True
    load_balance_weight: float = 0.01
    diversity_weight: float = 0.01
    gate_condition_norm: bool = True
    domain_names: list[str] | tuple[str, ...] | None = None
    routing_loss_weight: float = 1.0
    image_score: str = "joint"

    legacy_defaults: ClassVar[dict] = {"gate_condition_norm": False}  # saved before issue 24

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        depth = self.vision_depth
        if self.visual_prompt_layers is None:
            self.visual_prompt_layers = list(range(1, relative_layer(depth, self.visual_prompt_fraction) + 1))
        if self.daka_layers is None:
            fractions = self.default_daka_fractions if self.dense_attention is not None else ()
            self.daka_layers = [max(self.dense_start_layer, relative_layer(depth, f)) for f in fractions]
        self.visual_prompt_layers = sorted({int(layer) for layer in self.visual_prompt_layers})
        self.daka_layers = sorted({int(layer) for layer in self.daka_layers})
        if self.domain_names is not None:
            self.domain_names = [str(name) for name in self.domain_names]
        self._validate_daclip_fields()

    @property
    def projected_daka_layers(self) -> list[int]:
        """The DAKA layers read out through learned projections (§6.2.4): with `project_daka_layers`,
        those not already read out as feature layers; else none."""
        if not self.project_daka_layers:
            return []
        return [layer for layer in self.daka_layers if layer not in self.feature_layers]

    def _validate_daclip_fields(self) -> None:
        depth = self.vision_depth
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1; got {self.num_experts}")
        for name in ("top_k_experts", "token_top_k"):
            if not 1 <= getattr(self, name) <= self.num_experts:
                raise ValueError(f"{name} must be within 1..num_experts ({self.num_experts}); got {getattr(self, name)}")
        if self.daka_routing not in DAKA_ROUTINGS:
            raise ValueError(f"daka_routing must be one of {DAKA_ROUTINGS}; got {self.daka_routing!r}")
        if self.router_temperature <= 0:
            raise ValueError(f"router_temperature must be > 0; got {self.router_temperature}")
        bad = [layer for layer in self.visual_prompt_layers if not 1 <= layer <= depth]
        if bad:
            raise ValueError(f"visual_prompt_layers must be within 1..{depth}; got {bad}")
        if self.visual_prompt_length < 1:
            raise ValueError(f"visual_prompt_length must be >= 1; got {self.visual_prompt_length}")
        if self.daka_layers:
            if self.dense_attention is None:
                raise ValueError("daka_layers adapt the dense stream: they need dense_attention (or daka_layers=[])")
            bad = [layer for layer in self.daka_layers if not self.dense_start_layer <= layer <= depth]
            if bad:
                raise ValueError(
                    f"daka_layers must be within the dense stream, {self.dense_start_layer}..{depth}; got {bad}"
                )
        if self.project_daka_layers and not self.projected_daka_layers:
            raise ValueError(
                f"project_daka_layers reads out the DAKA layers that are not feature layers; daka_layers "
                f"{self.daka_layers} has none outside feature_layers {self.feature_layers}"
            )
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ValueError(f"lora_rank must be >= 1 and lora_alpha > 0; got {self.lora_rank}, {self.lora_alpha}")
        if self.domain_names is not None and len(set(self.domain_names)) != len(self.domain_names):
            raise ValueError(f"domain_names must be distinct; got {self.domain_names}")
        for name in ("daka_mix", "load_balance_weight", "diversity_weight", "routing_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
