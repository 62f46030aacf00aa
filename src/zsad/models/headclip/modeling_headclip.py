"""HeadCLIP (Jeong, Heo, Son, Kang; arXiv 2505.22259; METHODS.md §4): domain adaptation of attention heads
for zero-shot anomaly detection. The code is not public: §4.2 is our design, consistent with the abstract.

- Base: AnomalyCLIP exactly (§2): object-agnostic prompts with deep text tokens (43,008 parameters),
  DPAM (V-V) dense stream over the last 19/24 layers, final dense stream only, CE + 4 * (focal + dice).
- Learnable head weights (LHW, §4.2): each vision attention head's output is scaled by a learned weight
  before `W_O`, one table for the standard q-k attention of every layer and one for the dense stream's
  V-V attention (or the dense table only); `w = 1 + delta` (static) or `w = 1 + G(e0)` from the
  prompt-free global embedding (dynamic). All weights start at 1, i.e. at AnomalyCLIP. Gradients pass
  through the frozen tower (`gradient_checkpointing_enable()` trades compute for memory).
- Joint anomaly score (JAS, §4.2): `0.5 * p_global + 0.5 * max(anomaly map)` at inference; the training
  losses are AnomalyCLIP's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...adapters.head_weights import HeadWeights
from ...clip.vision import VisionFeatures
from ..anomalyclip.modeling_anomalyclip import AnomalyCLIPModel
from .configuration_headclip import HeadCLIPConfig

HEADCLIP_CITATION = """@article{jeong2025headclip,
  title   = {Domain Adaptation of Attention Heads for Zero-shot Anomaly Detection},
  author  = {Jeong, Kiyoon and Heo, Jaehyuk and Son, Junyeong and Kang, Pilsung},
  journal = {arXiv preprint arXiv:2505.22259},
  year    = {2025}
}"""


class HeadCLIPModel(AnomalyCLIPModel):
    config_class = HeadCLIPConfig
    trains_through_vision = True
    card_info = {
        "name": "HeadCLIP",
        "tag": "headclip",
        "summary": "AnomalyCLIP's object-agnostic learnable prompts and V-V dense attention, plus learnable "
        "weights for every attention head of the image encoder (static or image-conditioned) and a joint "
        "anomaly score mixing the global probability with the anomaly map's maximum. The HeadCLIP code is "
        "not public: the head weights follow zsad's design, consistent with the paper's abstract.",
        "paper": "[Domain Adaptation of Attention Heads for Zero-shot Anomaly Detection]"
        "(https://arxiv.org/abs/2505.22259), arXiv 2025",
        "citation": HEADCLIP_CITATION,
        "training_data": "the test split of an auxiliary dataset (MVTec AD -> evaluate elsewhere; VisA -> MVTec AD)",
    }

    def __init__(self, config: HeadCLIPConfig):
        super().__init__(config)
        self.head_weights = HeadWeights(
            config.head_weight_layers,
            config.dense_head_weight_layers,
            config.clip_config.vision_config.num_attention_heads,
            embed_dim=config.clip_config.projection_dim if config.head_weight_mode == "dynamic" else None,
        )
        self.post_init()  # initialises the new module only: the others are already marked as initialised

    def image_features(self, pixel_values: torch.Tensor, categories: Sequence[str] | None = None) -> VisionFeatures:
        """Step 1 (§4.2): AnomalyCLIP's vision pass with every head's output scaled by its weight, in the
        standard and the dense attention; dynamic weights come from the prompt-free embedding e0."""
        image_embeds = self.prompt_free_embeds(pixel_values) if self.head_weights.dynamic else None
        head_weights, dense_head_weights = self.head_weights(image_embeds)
        return self.encode_image(pixel_values, head_weights=head_weights, dense_head_weights=dense_head_weights)
