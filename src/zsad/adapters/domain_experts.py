"""DA-CLIP's domain-aware adapters ([OUR DESIGN], docs/models/daclip.md): the domain prompt bank, the
image-level router and DAKA, the routed mixture of LoRA experts on the dense stream; plus the
auxiliary losses: load balance and expert diversity (§6.2.5), and the routing loss on domain labels."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_base import ZSADAdapter

RMS_EPS = 1e-6  # of the gate inputs' RMS normalisation


def top_k_renormalise(probabilities: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest entries of the last axis, zero the rest and rescale the kept ones to sum to 1."""
    top = probabilities.topk(k, dim=-1)
    kept = torch.zeros_like(probabilities).scatter(-1, top.indices, top.values)
    return kept / kept.sum(dim=-1, keepdim=True)


def squared_coefficient_of_variation(probabilities: torch.Tensor) -> torch.Tensor:
    """Load-balance term (§6.2.5): `var(I) / mean(I)^2` of the importance `I_e`, the router probabilities
    `(..., E)` summed over everything but the expert axis. Population variance, so one expert gives 0."""
    importance = probabilities.reshape(-1, probabilities.shape[-1]).sum(dim=0)
    return importance.var(unbiased=False) / importance.mean().square()


def routing_cross_entropy(probabilities: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Routing loss (issue 24): `-log p_{b, expert_b}` averaged over the batch, for `(B, E)` router softmax
    probabilities and `(B,)` the expert of each image's domain (clamped at 1e-12 before the log)."""
    return -probabilities.float().gather(1, experts[:, None]).clamp_min(1e-12).log().mean()


def equiangular_diversity(expert_vectors: torch.Tensor) -> torch.Tensor:
    """Diversity term (§6.2.5): MSE between the Gram matrix of the L2-normalised expert vectors `(E, d)`
    and that of an equiangular tight frame (1 on the diagonal, `-1 / (E - 1)` off it), over the
    off-diagonal entries; 0 for a single expert. Minimal when the experts are spread as far apart as
    E unit vectors can be (MoECLIP's equiangular target, applied to the expert prompt sets)."""
    num_experts = expert_vectors.shape[0]
    if num_experts < 2:
        return expert_vectors.sum() * 0.0
    unit = F.normalize(expert_vectors.flatten(1), dim=-1)
    gram = unit @ unit.t()
    off_diagonal = ~torch.eye(num_experts, dtype=torch.bool, device=gram.device)
    return (gram[off_diagonal] + 1.0 / (num_experts - 1)).square().mean()


class DomainPromptBank(ZSADAdapter):
    """Per domain e (§6.2.1): deep text tokens `P^t_e (text layers, m, W_t)`, visual prompt tokens
    `P^v_e (vision layers, n, W_v)` and a routing key `k_e (D)`; all N(0, 0.02).

    A bank with no text (or no vision) layers holds no tokens for that encoder; with
    `per_domain_prompts=False` it holds one prompt set shared by every domain (the §6.2.8 ablation; the
    keys stay per domain). Parameters on ViT-L/14 with 4 domains: 98,304 text + 65,536 visual + 3,072 keys.
    """

    def __init__(
        self,
        num_experts: int,
        text_layers: int,
        text_length: int,
        text_width: int,
        vision_layers: int,
        vision_length: int,
        vision_width: int,
        embed_dim: int,
        per_domain_prompts: bool = True,
    ):
        super().__init__()
        sets = num_experts if per_domain_prompts else 1
        self.text_tokens = nn.Parameter(torch.empty(sets, text_layers, text_length, text_width)) if text_layers else None
        self.visual_tokens = (
            nn.Parameter(torch.empty(sets, vision_layers, vision_length, vision_width)) if vision_layers else None
        )
        self.keys = nn.Parameter(torch.empty(num_experts, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for tokens in (self.text_tokens, self.visual_tokens, self.keys):
            if tokens is not None:
                nn.init.normal_(tokens, std=0.02)

    @staticmethod
    def combine(tokens: torch.Tensor, router_probs: torch.Tensor) -> torch.Tensor:
        """`sum_e r_e P_e`: `(E, ...)` bank tokens and `(B, E)` router probabilities -> `(B, ...)`; a shared
        `(1, ...)` set is the same for every image (the weights sum to 1)."""
        if tokens.shape[0] == 1:
            return tokens.expand(router_probs.shape[0], *tokens.shape[1:])
        return torch.einsum("be,e...->b...", router_probs.to(tokens.dtype), tokens)

    def expert_vectors(self) -> torch.Tensor:
        """`(E, d)`: each domain's whole prompt set (text and visual tokens) flattened, for the diversity loss
        (`(1, d)` for a shared set; the keys when the bank holds no prompt tokens)."""
        parts = [t.flatten(1) for t in (self.text_tokens, self.visual_tokens) if t is not None]
        return torch.cat(parts, dim=1) if parts else self.keys


class ImageRouter(ZSADAdapter):
    """Image-level router (§6.2.2): `r = top-k renormalised softmax_e(cos(W_r e0_hat, k_e) / tau)`.

    `e0_hat` is the L2-normalised prompt-free global embedding and `W_r` an affine map (D x D + D,
    590,592 parameters on ViT-L/14). The dot product of §6.2.2 is taken between unit vectors
    (our reading: tau = 0.1 is a cosine temperature, and it keeps every logit within [-1/tau, 1/tau],
    so no kept probability underflows).
    """

    def __init__(self, embed_dim: int, temperature: float, top_k: int):
        super().__init__()
        self.projection = nn.Linear(embed_dim, embed_dim)
        self.temperature = temperature
        self.top_k = top_k
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.projection.reset_parameters()

    def forward(self, image_embeds: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, D)` embeddings, `(E, D)` keys -> `(softmax (B, E), top-k renormalised (B, E))`."""
        queries = F.normalize(self.projection(F.normalize(image_embeds.to(keys.dtype), dim=-1)), dim=-1)
        probabilities = (queries @ F.normalize(keys, dim=-1).t() / self.temperature).softmax(dim=-1)
        return probabilities, top_k_renormalise(probabilities, self.top_k)


class MixtureOfLoRA(nn.Module):
    """One DAKA layer (§6.2.3): E LoRA experts `(alpha / r) B_e A_e` and a token gate.

    `x <- x + beta * sum_e g_e(x) (alpha / r) B_e A_e x` for every token x, where `g(x)` is the top-k
    renormalised softmax of `Linear([x ; c])` and `c` is the image's condition (DA-CLIP: the summary of
    its combined visual prompts). With `normalize_gate_inputs`, x and c are each RMS-normalised first
    (`v / sqrt(mean(v^2) + eps)`, no learned scale): the prompt summary is ~100x smaller than a token,
    so raw it barely moves the gate. A: LoRA's Kaiming-uniform init; B: zeros, so an untrained layer is
    exactly the identity. Parameters: `E * 2 * r * W + (W + C + 1) * E` (ViT-L/14: 65,536 + 8,196).
    With `condition_dim=None` there is no gate: the caller gives the weights (image-level routing).
    """

    def __init__(
        self, num_experts: int, width: int, condition_dim: int | None, rank: int, alpha: float, mix: float, top_k: int,
        normalize_gate_inputs: bool = False,
    ):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank, width))
        self.lora_B = nn.Parameter(torch.empty(num_experts, width, rank))
        self.gate = nn.Linear(width + condition_dim, num_experts) if condition_dim is not None else None
        self.scaling = alpha / rank
        self.mix = mix
        self.top_k = top_k
        self.normalize_gate_inputs = normalize_gate_inputs

    def reset_parameters(self) -> None:
        for expert in self.lora_A:  # per expert, as peft's LoRA initialises each A
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        if self.gate is not None:
            self.gate.reset_parameters()

    def gates(self, tokens: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, N, W)` tokens, `(B, C)` condition -> `(softmax (B, N, E), top-k renormalised (B, N, E))`."""
        condition = condition.to(tokens.dtype)
        if self.normalize_gate_inputs:
            tokens = F.rms_norm(tokens, tokens.shape[-1:], eps=RMS_EPS)
            condition = F.rms_norm(condition, condition.shape[-1:], eps=RMS_EPS)
        condition = condition.unsqueeze(1).expand(-1, tokens.shape[1], -1)
        probabilities = self.gate(torch.cat([tokens, condition], dim=-1)).softmax(dim=-1)
        return probabilities, top_k_renormalise(probabilities, self.top_k)

    def forward(self, tokens: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """`(B, N, W)` tokens and `(B, N, E)` gates -> the adapted tokens. All experts run on all tokens
        (cheap at rank 8); unselected experts have gate 0."""
        low_rank = torch.einsum("bnw,erw->bner", tokens, self.lora_A) * gates.unsqueeze(-1)
        return tokens + self.mix * self.scaling * torch.einsum("bner,ewr->bnw", low_rank, self.lora_B)


class DomainAwareKnowledgeAdaptation(ZSADAdapter):
    """DAKA (§6.2.3): a `MixtureOfLoRA` at each of `layers` (1-indexed vision layers) of the dense stream.

    ViT-L/14 defaults (4 layers, 4 experts, rank 8, condition = 1024-d prompt summary): 262,144 LoRA +
    32,784 gate parameters. `condition_dim=None`: image-level routing, every token of an image mixes the
    experts with the image router's weights (no gates; the §6.2.8 ablation).
    """

    def __init__(
        self,
        layers: list[int],
        num_experts: int,
        width: int,
        condition_dim: int | None,
        rank: int,
        alpha: float,
        mix: float,
        top_k: int,
        normalize_gate_inputs: bool = False,
    ):
        super().__init__()
        self.layer_indices = list(layers)
        self.experts = nn.ModuleList(
            MixtureOfLoRA(num_experts, width, condition_dim, rank, alpha, mix, top_k, normalize_gate_inputs)
            for _ in self.layer_indices
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.experts:
            layer.reset_parameters()

    def dense_adapters(
        self, condition: torch.Tensor, num_patches: int, token_gates: dict[int, torch.Tensor]
    ) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
        """`{layer: f}` for `encode_image(dense_adapters=...)`. Each `f` adapts the patch tokens (positions
        1..N) of the dense stream; the CLS and prompt positions of that stream are never read out, so
        they pass unchanged. The softmax gate probabilities of every layer are written to `token_gates`
        as `(softmax, top-k renormalised)` pairs. Without gates, `condition` is the `(B, E)` expert
        weights of each image."""

        def adapter(index: int, layer: MixtureOfLoRA):
            def apply(dense: torch.Tensor) -> torch.Tensor:
                patches = dense[:, 1 : 1 + num_patches]
                if layer.gate is None:
                    gates = condition.to(patches.dtype).unsqueeze(1).expand(-1, patches.shape[1], -1)
                else:
                    probabilities, gates = layer.gates(patches, condition)
                    token_gates[index] = (probabilities, gates)
                return torch.cat([dense[:, :1], layer(patches, gates), dense[:, 1 + num_patches :]], dim=1)

            return apply

        return {index: adapter(index, layer) for index, layer in zip(self.layer_indices, self.experts)}
