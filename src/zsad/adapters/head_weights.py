"""HeadCLIP's learnable head weights (LHW, METHODS.md §4.2) [our design, consistent with the abstract]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_base import ZSADAdapter


class HeadWeights(ZSADAdapter):
    """One weight `w_{l,h}` per attention head of the vision tower, in two tables.

    The standard (q-k) table covers `layers`, the dense-stream table `dense_layers` (either may be
    empty). Head h's output `A_h V_h` of layer l is multiplied by `w_{l,h}` before the heads are
    concatenated and projected by `W_O` (the `head_weights` / `dense_head_weights` hooks of
    `zsad.clip.vision.encode_image`). `w = 1 + delta`, with `delta` either

    - static (`embed_dim=None`): a learned `(rows, H)` table, initialised to 0; or
    - dynamic: `G(e0 / |e0|)`, G a `Linear(embed_dim -> rows * H)` (weight and bias) initialised to 0 and
      e0 the prompt-free global image embedding, so each image gets its own weights (v2 abstract:
      the heads are adjusted "dynamically").

    At initialisation every weight is exactly 1: the tower is CLIP's.

    Parameters (`rows = len(layers) + len(dense_layers)`): static `rows * H` (ViT-L/14, both tables:
    24 x 16 + 19 x 16 = 688; dense only: 304); dynamic `(embed_dim + 1) * rows * H` (529,072; 233,776).
    """

    def __init__(self, layers: Sequence[int], dense_layers: Sequence[int], num_heads: int, embed_dim: int | None = None):
        super().__init__()
        self.layers = [int(layer) for layer in layers]
        self.dense_layers = [int(layer) for layer in dense_layers]
        self.num_heads = num_heads
        rows = len(self.layers) + len(self.dense_layers)
        if rows == 0:
            raise ValueError("HeadWeights needs at least one layer in `layers` or `dense_layers`")
        self.delta = nn.Parameter(torch.empty(rows, num_heads)) if embed_dim is None else None
        self.generator = nn.Linear(embed_dim, rows * num_heads) if embed_dim is not None else None
        self.reset_parameters()

    @property
    def dynamic(self) -> bool:
        return self.generator is not None

    def reset_parameters(self) -> None:
        for parameter in self.parameters():
            nn.init.zeros_(parameter)

    def forward(self, image_embeds: torch.Tensor | None = None) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """`(head_weights, dense_head_weights)`: `{layer: w}` with `w` of shape `(H,)` (static) or `(B, H)`
        (dynamic, from the prompt-free global embeddings `image_embeds (B, embed_dim)`)."""
        if not self.dynamic:
            if image_embeds is not None:
                raise ValueError("static head weights do not depend on the image; pass no image embeddings")
            rows = (1 + self.delta).unbind(0)
        else:
            expected = self.generator.in_features
            if image_embeds is None or image_embeds.dim() != 2 or image_embeds.shape[1] != expected:
                shape = None if image_embeds is None else tuple(image_embeds.shape)
                raise ValueError(f"dynamic head weights need image embeddings of shape (B, {expected}); got {shape}")
            delta = self.generator(F.normalize(image_embeds.to(self.generator.weight.dtype), dim=-1))
            rows = (1 + delta.view(image_embeds.shape[0], -1, self.num_heads)).unbind(1)
        standard = len(self.layers)
        return dict(zip(self.layers, rows[:standard])), dict(zip(self.dense_layers, rows[standard:]))
