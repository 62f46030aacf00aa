"""`ZeroShotCLIP`: frozen CLIP + V-V dense features + the hand-crafted prompt ensemble.

The "CLIP" baseline of AnomalyCLIP's code, on the same dense dual path: each state group's sentences
are encoded with the plain text encoder, L2-normalised, averaged and re-normalised into t_n and t_a.
Nothing is trained; it needs only a CLIP backbone, so it is the first model to run on new data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...clip.text import TokenizedPrompts, encode_text
from ...modeling_base import ZSADPreTrainedModel
from .configuration_zsad_clip import ANOMALY_STATES, NORMAL_STATES, ZeroShotCLIPConfig, ensemble_sentences

WINCLIP_CITATION = """@inproceedings{jeong2023winclip,
  title = {WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation},
  author = {Jeong, Jongheon and Zou, Yang and Kim, Taewan and Zhang, Dongqing and Ravichandran, Avinash and Dabeer, Onkar},
  booktitle = {CVPR},
  year = {2023}
}"""


class ZeroShotCLIPModel(ZSADPreTrainedModel):
    config_class = ZeroShotCLIPConfig
    card_info = {
        "name": "ZeroShotCLIP",
        "tag": "training-free",
        "summary": "training-free CLIP with V-V dense attention and the WinCLIP prompt ensemble.",
        "paper": "baseline of [AnomalyCLIP](https://arxiv.org/abs/2310.18961) (prompt ensemble of WinCLIP, "
        "[arXiv 2303.14814](https://arxiv.org/abs/2303.14814))",
        "citation": WINCLIP_CITATION,
        "training_data": "none (training-free)",
    }

    def __init__(self, config: ZeroShotCLIPConfig):
        super().__init__(config)
        length = config.clip_config.text_config.max_position_embeddings
        self.normal_prompts = TokenizedPrompts(config.normal_token_ids, length)
        self.anomaly_prompts = TokenizedPrompts(config.anomaly_token_ids, length)
        self.post_init()

    @classmethod
    def tokenize_prompts(cls, config: ZeroShotCLIPConfig, tokenizer) -> None:
        length = config.clip_config.text_config.max_position_embeddings
        for name, states in (("normal", NORMAL_STATES), ("anomaly", ANOMALY_STATES)):
            sentences = ensemble_sentences(states, config.object_name)
            ids = tokenizer(sentences, truncation=True, max_length=length)["input_ids"]
            setattr(config, f"{name}_token_ids", [list(t) for t in ids])

    def _state_embedding(self, prompts: TokenizedPrompts) -> torch.Tensor:
        sentences = encode_text(self.clip, prompts.input_ids, pooling_positions=prompts.eos_positions)
        sentences = F.normalize(sentences, dim=-1)
        return F.normalize(sentences.mean(dim=0), dim=-1)

    def compute_text_features(self) -> torch.Tensor:
        if not (self.normal_prompts.is_tokenized and self.anomaly_prompts.is_tokenized):
            raise ValueError(
                "this ZeroShotCLIP model has no prompt token ids: build it with ZeroShotCLIPModel.from_backbone(...)"
            )
        normal = self._state_embedding(self.normal_prompts)
        anomaly = self._state_embedding(self.anomaly_prompts)
        return torch.stack([normal, anomaly])
