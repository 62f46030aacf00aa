"""AdaCLIP's hybrid (static + dynamic) prompt tokens for one CLIP encoder."""

from __future__ import annotations

import torch
from torch import nn

from ..modeling_base import ZSADAdapter


class HybridPrompts(ZSADAdapter):
    """Prompt tokens `P_j = S_j + D(e)` for `depth` layers of one encoder.

    `S` are static tokens (`depth x length x width`, N(0, 0.02)); the dynamic tokens `D(e)` come from the
    prompt-free global image embedding `e` through one affine map per token, with no non-linearity
    (stored as a single `Linear(embed_dim -> length * width)`: row block i is token i's map). The same
    `D(e)` is added to the static tokens of every layer.

    Parameters: `depth * length * width + (embed_dim + 1) * length * width` (vision branch of ViT-L/14:
    20,480 + 3,937,280; text branch: 15,360 + 2,952,960).
    """

    def __init__(self, depth: int, length: int, width: int, embed_dim: int):
        super().__init__()
        self.static = nn.Parameter(torch.empty(depth, length, width))
        self.generator = nn.Linear(embed_dim, length * width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.static, std=0.02)
        self.generator.reset_parameters()

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """`(B, E)` image embeddings -> `(B, depth, length, width)` prompt tokens."""
        depth, length, width = self.static.shape
        if image_embeds.dim() != 2 or image_embeds.shape[1] != self.generator.in_features:
            raise ValueError(
                f"image embeddings must have shape (B, {self.generator.in_features}); got {tuple(image_embeds.shape)}"
            )
        dynamic = self.generator(image_embeds.to(self.generator.weight.dtype))
        return self.static + dynamic.view(-1, 1, length, width)
