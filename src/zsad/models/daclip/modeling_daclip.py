"""DA-CLIP (Ma, Fang, Huang, IEEE TIP 2026): domain-aware prompts and routed experts for
zero-shot anomaly detection. Only the abstract is public: everything below is zsad's design from it
([OUR DESIGN, from the abstract]), built on AnomalyCLIP so results are comparable.

- Domain prompt bank (§6.2.1): per domain e, deep text tokens P^t_e (text layers 2-9), visual prompt
  tokens P^v_e (vision layers 1-4) and a key k_e; AnomalyCLIP's 12 + 12 context vectors stay shared.
- Router (§6.2.2): from the prompt-free global embedding e0 (one extra no-grad pass),
  r = top-2 renormalised softmax_e(cos(W_r e0, k_e) / 0.1); the combined prompts sum_e r_e P_e enter
  both encoders (pathway 1).
- DAKA (§6.2.3): after vision layers 6/12/18/24, the dense stream's patch tokens get the residual
  beta * sum_e g_e (alpha / r) B_e A_e x of 4 LoRA experts, with token gates g (top-2) on
  [x ; summary of the combined visual prompts], each RMS-normalised (pathway 2). B = 0 at init: exactly
  the identity.
- Read-out, maps and score (§6.2.4): AnomalyCLIP's (final dense stream, softmax / 0.07, sigma 4); with
  `project_daka_layers`, the DAKA layers 6/12/18 through learned Linear(1024 -> 768) projections too
  (AdaCLIP-style), one more map each, averaged with the final one. The image score is the joint score
  0.5 p_global + 0.5 max(map), so the experts, which act on the map, reach it.
- Loss (§6.2.5): AnomalyCLIP's CE + 4 (focal + dice_a + dice_n) + 0.01 load balance + 0.01 diversity,
  + 1.0 routing (cross-entropy of the router against each image's domain) when trained on several domains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...adapters.domain_experts import (
    DomainAwareKnowledgeAdaptation,
    DomainPromptBank,
    ImageRouter,
    equiangular_diversity,
    routing_cross_entropy,
    squared_coefficient_of_variation,
)
from ...adapters.projections import FeatureProjections
from ...adapters.prompt_learner import ObjectAgnosticPrompts
from ...clip.text import TokenizedPrompts
from ...clip.vision import VisionFeatures, project_tokens
from ...modeling_base import ZSADPreTrainedModel
from ...modeling_outputs import AnomalyDetectionOutput
from ..anomalyclip.modeling_anomalyclip import AnomalyCLIPModel
from .configuration_daclip import DACLIPConfig

DACLIP_CITATION = """@article{ma2026daclip,
  title   = {{DA-CLIP}},
  author  = {Ma and Fang and Huang},
  journal = {IEEE Transactions on Image Processing},
  year    = {2026},
  doi     = {10.1109/TIP.2026.3671665},
  note    = {zero-shot anomaly detection; see the DOI for the full title and author names}
}"""


@dataclass
class DACLIPOutput(AnomalyDetectionOutput):
    """`AnomalyDetectionOutput` plus DA-CLIP's routing.

    Args:
        router_probs: `(B, num_experts)` image-router weights after top-k renormalisation (rows sum to 1,
            `top_k_experts` non-zero entries).
        aux_losses: the unweighted auxiliary terms, `{"load_balance", "diversity"}` and, when the forward
            had `domains`, `"routing"` (the training loss adds them times `load_balance_weight` /
            `diversity_weight` / `routing_loss_weight`).
    """

    router_probs: torch.FloatTensor | None = None
    aux_losses: dict[str, torch.FloatTensor] | None = None


class DACLIPModel(ZSADPreTrainedModel):
    config_class = DACLIPConfig
    output_class = DACLIPOutput
    trains_through_vision = True  # visual prompts and DAKA sit inside the frozen vision tower
    domain_aware = True  # the routing loss reads each training image's domain
    card_info = {
        "name": "DA-CLIP",
        "tag": "daclip",
        "summary": "AnomalyCLIP's object-agnostic prompts with a domain-aware prompt bank (text and visual "
        "prompts per domain) chosen per image by a router, and DAKA: routed LoRA experts on the dense "
        "features. The paper's abstract is all that is public, so this is zsad's design from the abstract "
        "[our design, from the abstract], not the authors' code. Not to be confused with the unrelated "
        "image-restoration model also called DA-CLIP (Degradation-Aware CLIP, Algolzw/daclip-uir, ICLR 2024).",
        "paper": "Ma, Fang, Huang, DA-CLIP, IEEE Transactions on Image Processing 2026 "
        "([DOI 10.1109/TIP.2026.3671665](https://doi.org/10.1109/TIP.2026.3671665)); abstract only",
        "citation": DACLIP_CITATION,
        "training_data": "the test split of an auxiliary dataset (MVTec AD -> evaluate elsewhere; VisA -> MVTec AD)",
    }

    def __init__(self, config: DACLIPConfig):
        super().__init__(config)
        text_config, vision_config = config.clip_config.text_config, config.clip_config.vision_config
        self.prompt_learner = ObjectAgnosticPrompts.from_config(config, learn_deep_tokens=False)
        self.prompt_tokens = TokenizedPrompts(config.prompt_token_ids, text_config.max_position_embeddings)
        self.domain_prompts = DomainPromptBank(
            config.num_experts,
            len(config.deep_prompt_layers),
            config.deep_prompt_length,
            text_config.hidden_size,
            len(config.visual_prompt_layers),
            config.visual_prompt_length,
            vision_config.hidden_size,
            config.clip_config.projection_dim,
            per_domain_prompts=config.per_domain_prompts,
        )
        self.router = ImageRouter(config.clip_config.projection_dim, config.router_temperature, config.top_k_experts)
        # The token gates see the summary of the combined visual prompts; with visual prompts off, the
        # image router's weights are the domain information left, so they condition the gates instead.
        # Image-level routing has no gates.
        condition_dim = vision_config.hidden_size if config.visual_prompt_layers else config.num_experts
        if config.daka_routing == "image":
            condition_dim = None
        self.daka = DomainAwareKnowledgeAdaptation(
            config.daka_layers,
            config.num_experts,
            vision_config.hidden_size,
            condition_dim,
            config.lora_rank,
            config.lora_alpha,
            config.daka_mix,
            config.token_top_k,
            normalize_gate_inputs=config.gate_condition_norm,
        )
        # §6.2.4 read-out ablation: empty (no parameters) unless `project_daka_layers`.
        self.daka_projections = FeatureProjections(
            len(config.projected_daka_layers),
            vision_config.hidden_size,
            config.clip_config.projection_dim,
            project_image=False,
        )
        self.post_init()

    @classmethod
    def tokenize_prompts(cls, config: DACLIPConfig, tokenizer) -> None:
        """AnomalyCLIP's two templates (§6.2: the object-agnostic prompts are kept)."""
        AnomalyCLIPModel.tokenize_prompts(config, tokenizer)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """§6.2.6: `prompts` (context, domain prompt bank, keys; 1e-3) and `experts` (LoRA experts, token
        gates, the router's W_r and the §6.2.4 read-out projections: the learned matrices; 1e-4 through
        `training_defaults["learning_rate_scales"]`)."""
        experts = [*self.daka.parameters(), *self.router.parameters(), *self.daka_projections.parameters()]
        prompts = [*self.prompt_learner.parameters(), *self.domain_prompts.parameters()]
        return {
            "prompts": [p for p in prompts if p.requires_grad],
            "experts": [p for p in experts if p.requires_grad],
        }

    def compute_text_features(self, router_probs: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, 2, D)` [normal, anomaly] text embeddings with each image's combined deep tokens
        `sum_e r_e P^t_e` (§6.2.2); `(2, D)` when the bank has no text layers."""
        bank = self.domain_prompts.text_tokens
        if bank is None:
            return self.prompt_learner.text_features(self.clip, self.prompt_tokens)
        if router_probs is None:
            raise ValueError("DA-CLIP's text prompts depend on the image: pass router_probs (B, num_experts)")
        deep_tokens = DomainPromptBank.combine(bank, router_probs)
        return self.prompt_learner.text_features(self.clip, self.prompt_tokens, deep_tokens=deep_tokens)

    # ------------------------------------------------------------------ pipeline steps
    def image_features(self, pixel_values: torch.Tensor, categories: Sequence[str] | None = None) -> VisionFeatures:
        """Route on the prompt-free embedding (§6.2.2), then one pass with the combined visual prompts
        (pathway 1) and DAKA on the dense stream (pathway 2, §6.2.3).

        `patch_embeds` (§6.2.4): the `projected_daka_layers` through their learned projections, then the
        feature layers through `post_layernorm` and the visual projection.

        `extras`: `router_softmax` / `router_probs` `(B, E)` (before / after top-k renormalisation) and
        `token_gates` `{layer: (softmax, top-k renormalised)}`, each `(B, N, E)`.
        """
        cfg = self.config
        bank = self.domain_prompts
        router_softmax, router_probs = self.router(self.prompt_free_embeds(pixel_values), bank.keys)
        visual_prompts, condition = {}, router_probs
        if bank.visual_tokens is not None:
            combined = DomainPromptBank.combine(bank.visual_tokens, router_probs)  # (B, layers, n, W)
            visual_prompts = {layer: combined[:, i] for i, layer in enumerate(cfg.visual_prompt_layers)}
            condition = combined.mean(dim=(1, 2))
        if cfg.daka_routing == "image":
            condition = router_probs
        patch = cfg.clip_config.vision_config.patch_size
        num_patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        token_gates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        projected = cfg.projected_daka_layers
        features = self.encode_image(
            pixel_values,
            feature_layers=[*projected, *cfg.feature_layers],
            visual_prompts=visual_prompts,
            dense_adapters=self.daka.dense_adapters(condition, num_patches, token_gates),
            project_patches=False,
        )
        tokens = features.patch_embeds
        features.patch_embeds = (
            *(projection(layer_tokens) for projection, layer_tokens in zip(self.daka_projections.patch, tokens)),
            *(project_tokens(self.clip, layer_tokens) for layer_tokens in tokens[len(projected) :]),
        )
        features.extras.update(router_softmax=router_softmax, router_probs=router_probs, token_gates=token_gates)
        return features

    def constant_text_features(self, class_name: str | None = None) -> torch.Tensor | None:
        """None with text prompt layers: the router mixes the deep text tokens per image (§6.2.2)."""
        if self.domain_prompts.text_tokens is not None:
            return None
        return super().constant_text_features(class_name)

    def prompt_text_features(self, features: VisionFeatures, categories: Sequence[str] | None = None) -> torch.Tensor:
        """Each image's text with its combined deep tokens (object-agnostic: `categories` is ignored)."""
        if self.domain_prompts.text_tokens is None:
            return self.text_features()
        return self.compute_text_features(features.extras["router_probs"])

    compute_loss = AnomalyCLIPModel.compute_loss  # §6.2.5: CE + 4 (focal + dice_a + dice_n)

    def domain_experts(self, domains: Sequence[str]) -> torch.Tensor:
        """`(B,)` the expert each image's domain is routed to: domain d of `config.domain_names` -> expert
        `d % num_experts`."""
        names = self.config.domain_names or []
        unknown = sorted({str(d) for d in domains} - set(names))
        if unknown:
            raise ValueError(f"domains {unknown} are not among this model's training domains {names}")
        return torch.tensor([names.index(str(d)) % self.config.num_experts for d in domains], device=self.device)

    def unweighted_auxiliary_losses(self, features: VisionFeatures, domains: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """§6.2.5, computed once per forward:

        - `load_balance`: squared coefficient of variation of the summed softmax probabilities of the image
          router over the batch, plus its mean over the DAKA layers for the token gates over all patch
          tokens of the batch. The probabilities before top-k, so unselected experts get a gradient too.
        - `diversity`: equiangular-frame MSE of the normalised per-domain prompt sets (text + visual tokens).
        - `routing` (with `domains` and two or more `config.domain_names`): the cross-entropy
          `-log softmax_e(image router)[expert of the image's domain]`, averaged over the batch: the
          domain supervision of the router (docs/models/daclip.md).
        """
        extras = features.extras
        if "aux_losses" not in extras:
            load_balance = squared_coefficient_of_variation(extras["router_softmax"])
            token_terms = [squared_coefficient_of_variation(softmax) for softmax, _ in extras["token_gates"].values()]
            if token_terms:
                load_balance = load_balance + torch.stack(token_terms).mean()
            extras["aux_losses"] = {
                "load_balance": load_balance,
                "diversity": equiangular_diversity(self.domain_prompts.expert_vectors()),
            }
            if domains is not None and len(self.config.domain_names or []) > 1:
                extras["aux_losses"]["routing"] = routing_cross_entropy(extras["router_softmax"], self.domain_experts(domains))
        return extras["aux_losses"]

    def auxiliary_losses(self, features: VisionFeatures, domains: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        cfg = self.config
        losses = self.unweighted_auxiliary_losses(features, domains)
        weighted = {
            "load_balance": cfg.load_balance_weight * losses["load_balance"],
            "diversity": cfg.diversity_weight * losses["diversity"],
        }
        if "routing" in losses:
            weighted["routing"] = cfg.routing_loss_weight * losses["routing"]
        return weighted

    def output_extras(self, features: VisionFeatures) -> dict[str, Any]:
        return {"router_probs": features.extras["router_probs"], "aux_losses": self.unweighted_auxiliary_losses(features)}
