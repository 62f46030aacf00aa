"""AdaCLIP's learned projections into the joint image-text space."""

from __future__ import annotations

from torch import nn

from ..modeling_base import ZSADAdapter


class FeatureProjections(ZSADAdapter):
    """One `Linear(token_width -> embed_dim)` per feature layer for the raw patch tokens, and one
    `Linear(embed_dim -> embed_dim)` for CLIP's pooled global embedding (PyTorch's default Linear init).

    Parameters: `num_layers * (token_width + 1) * embed_dim + (embed_dim + 1) * embed_dim`
    (ViT-L/14, 4 layers: 3,148,800 + 590,592).
    """

    def __init__(self, num_layers: int, token_width: int, embed_dim: int):
        super().__init__()
        self.patch = nn.ModuleList(nn.Linear(token_width, embed_dim) for _ in range(num_layers))
        self.image = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (*self.patch, self.image):
            linear.reset_parameters()
