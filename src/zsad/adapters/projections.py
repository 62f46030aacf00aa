"""Learned projections of raw vision tokens into the joint image-text space (AdaCLIP §3.1, DA-CLIP §6.2.4)."""

from __future__ import annotations

from torch import nn

from ..modeling_base import ZSADAdapter


class FeatureProjections(ZSADAdapter):
    """One `Linear(token_width -> embed_dim)` per feature layer for the raw patch tokens and, with
    `project_image`, one `Linear(embed_dim -> embed_dim)` for CLIP's pooled global embedding (PyTorch's
    default Linear init).

    Parameters: `num_layers * (token_width + 1) * embed_dim`, plus `(embed_dim + 1) * embed_dim` with
    `project_image` (ViT-L/14, AdaCLIP's 4 layers: 3,148,800 + 590,592; DA-CLIP's 3 DAKA layers, no image
    projection: 2,361,600).
    """

    def __init__(self, num_layers: int, token_width: int, embed_dim: int, *, project_image: bool = True):
        super().__init__()
        self.patch = nn.ModuleList(nn.Linear(token_width, embed_dim) for _ in range(num_layers))
        self.image = nn.Linear(embed_dim, embed_dim) if project_image else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in self.modules():
            if isinstance(linear, nn.Linear):
                linear.reset_parameters()
