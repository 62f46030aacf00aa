"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic prompt learning for ZSAD.

- Dense features: DPAM, V-V attention on a dual path over the last 19/24 layers; patch tokens of the
  final dense stream only (§2.1), global embedding without `post_layernorm`.
- Adapters: 12 + 12 context vectors and 4 deep tokens in text layers 2-9 (43,008 parameters, §2.2).
- Map: softmax(cos / 0.07), bilinear upsampling, Gaussian sigma 4; score: global text probability (§2.4).
- Loss: CE(global) + 4 * (focal + dice_a + dice_n) (§2.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...adapters.prompt_learner import ObjectAgnosticPrompts
from ...clip.text import TokenizedPrompts
from ...losses import segmentation_loss
from ...modeling_base import ZSADPreTrainedModel
from .configuration_anomalyclip import AnomalyCLIPConfig

ANOMALYCLIP_CITATION = """@inproceedings{zhou2024anomalyclip,
  title     = {AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection},
  author    = {Zhou, Qihang and Pang, Guansong and Tian, Yu and He, Shibo and Chen, Jiming},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024}
}"""


class AnomalyCLIPModel(ZSADPreTrainedModel):
    config_class = AnomalyCLIPConfig
    card_info = {
        "name": "AnomalyCLIP",
        "tag": "anomalyclip",
        "summary": "object-agnostic learnable text prompts (normal / damaged object) with deep text tokens, "
        "and V-V (DPAM) dense attention for pixel maps.",
        "paper": "[AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection]"
        "(https://arxiv.org/abs/2310.18961), ICLR 2024",
        "citation": ANOMALYCLIP_CITATION,
        "training_data": "the test split of an auxiliary dataset (MVTec AD -> evaluate elsewhere; VisA -> MVTec AD)",
    }

    def __init__(self, config: AnomalyCLIPConfig):
        super().__init__(config)
        text_config = config.clip_config.text_config
        self.prompt_learner = ObjectAgnosticPrompts.from_config(config)
        self.prompt_tokens = TokenizedPrompts(config.prompt_token_ids, text_config.max_position_embeddings)
        self.post_init()

    @classmethod
    def tokenize_prompts(cls, config: AnomalyCLIPConfig, tokenizer) -> None:
        placeholders = " ".join(["X"] * config.num_context_tokens)
        prompts = [f"{placeholders} {config.normal_prompt}", f"{placeholders} {config.anomaly_prompt}"]
        ids = [list(t) for t in tokenizer(prompts, truncation=True, max_length=config.clip_config.text_config.max_position_embeddings)["input_ids"]]
        placeholder_ids = tokenizer(placeholders, add_special_tokens=False)["input_ids"]
        if len(placeholder_ids) != config.num_context_tokens or any(t[1 : 1 + len(placeholder_ids)] != placeholder_ids for t in ids):
            raise ValueError(
                f"the tokenizer splits the placeholder 'X' into several tokens; cannot place "
                f"{config.num_context_tokens} context vectors"
            )
        config.prompt_token_ids = ids

    def compute_text_features(self) -> torch.Tensor:
        return self.prompt_learner.text_features(self.clip, self.prompt_tokens)

    def compute_loss(self, image_logits, pixel_probabilities, labels, masks) -> torch.Tensor:
        loss = F.cross_entropy(image_logits, labels)
        if masks is not None:
            local = sum(segmentation_loss(p, masks) for p in pixel_probabilities)
            loss = loss + self.config.local_loss_weight * local
        return loss
