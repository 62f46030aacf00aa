"""`ZeroShotCLIP`: frozen CLIP + V-V dense features + the hand-crafted prompt ensemble.

The "CLIP" baseline of AnomalyCLIP's code, on the same dense dual path: each state group's sentences
are encoded with the plain text encoder, L2-normalised, averaged and re-normalised into t_n and t_a
(`prompt_set="anomalyclip"`, `ensemble="normalized_mean"`: that code's lists and ensemble).
Nothing is trained; it needs only a CLIP backbone, so it is the first model to run on new data.

Class-aware on request: `set_class_names(["metal_nut", ...])` makes the ensemble of each category
("metal nut"), and `forward(categories=...)` scores each image against its own category's text (as
anomalib's WinCLIP and `zsad evaluate` do); without categories the `object_name` prompts serve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collections.abc import Sequence

from ...clip.text import TokenizedPrompts, encode_text
from ...clip.vision import VisionFeatures
from ...modeling_base import ZSADPreTrainedModel
from ...modeling_checkpoints import load_tokenizer
from .configuration_zsad_clip import PROMPT_SETS, ZeroShotCLIPConfig, ensemble_sentences, prompt_name

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

    class_aware = True  # on request: set_class_names + forward(categories=...)

    def __init__(self, config: ZeroShotCLIPConfig):
        super().__init__(config)
        length = config.clip_config.text_config.max_position_embeddings
        self.normal_prompts = TokenizedPrompts(config.normal_token_ids, length)
        self.anomaly_prompts = TokenizedPrompts(config.anomaly_token_ids, length)
        # Per category: the tokenized ensembles, then its (2, D) text once computed (not saved: the class
        # names are in the config and are tokenized again with the backbone's tokenizer after loading).
        self._class_prompts: dict[str, tuple[TokenizedPrompts, TokenizedPrompts]] = {}
        self._class_text: dict[str, tuple[tuple, torch.Tensor]] = {}
        self.post_init()

    @classmethod
    def ensemble_token_ids(cls, config: ZeroShotCLIPConfig, tokenizer, object_name: str) -> tuple[list, list]:
        """Token ids of the normal and the anomalous sentences of `config.prompt_set` for `object_name`."""
        length = config.clip_config.text_config.max_position_embeddings
        normal_states, anomaly_states, templates = PROMPT_SETS[config.prompt_set]
        return tuple(
            [list(t) for t in tokenizer(ensemble_sentences(states, object_name, templates), truncation=True, max_length=length)["input_ids"]]
            for states in (normal_states, anomaly_states)
        )

    @classmethod
    def tokenize_prompts(cls, config: ZeroShotCLIPConfig, tokenizer) -> None:
        config.normal_token_ids, config.anomaly_token_ids = cls.ensemble_token_ids(config, tokenizer, config.object_name)

    def set_class_names(self, class_names: Sequence[str], tokenizer=None) -> None:
        """Make the prompt ensemble of each category (`metal_nut` is prompted as "metal nut"); `tokenizer`
        defaults to the backbone's, loaded from `config.backbone_name_or_path`."""
        names = [str(name) for name in class_names]
        missing = [name for name in names if name not in self._class_prompts]
        if missing:
            tokenizer = tokenizer or load_tokenizer(self.config.backbone_name_or_path)
            length = self.config.clip_config.text_config.max_position_embeddings
            for name in missing:
                normal, anomaly = self.ensemble_token_ids(self.config, tokenizer, prompt_name(name))
                self._class_prompts[name] = (TokenizedPrompts(normal, length), TokenizedPrompts(anomaly, length))
        self.config.class_names = list(dict.fromkeys([*(self.config.class_names or []), *names]))

    def _state_embedding(self, prompts: TokenizedPrompts) -> torch.Tensor:
        """The ensemble of one state group (`config.ensemble`): the mean of the normalised sentence
        embeddings (`normalized_mean`) or of the raw ones (`raw_mean`), then normalised."""
        sentences = encode_text(self.clip, prompts.input_ids.to(self.device), pooling_positions=prompts.eos_positions.to(self.device))
        if self.config.ensemble == "normalized_mean":
            sentences = F.normalize(sentences, dim=-1)
        return F.normalize(sentences.mean(dim=0), dim=-1)

    def compute_text_features(self) -> torch.Tensor:
        if not (self.normal_prompts.is_tokenized and self.anomaly_prompts.is_tokenized):
            raise ValueError(
                "this ZeroShotCLIP model has no prompt token ids: build it with ZeroShotCLIPModel.from_backbone(...)"
            )
        return torch.stack([self._state_embedding(self.normal_prompts), self._state_embedding(self.anomaly_prompts)])

    def class_text_features(self, name: str) -> torch.Tensor:
        """`(2, D)` [normal, anomaly] text of category `name` (its prompts made on first use), computed once
        per device and dtype."""
        if name not in self._class_prompts:
            self.set_class_names([name])
        key = (self.device, self.dtype)
        cached = self._class_text.get(name)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                normal, anomaly = self._class_prompts[name]
                cached = self._class_text[name] = (key, torch.stack([self._state_embedding(normal), self._state_embedding(anomaly)]).float())
        return cached[1]

    def prompt_text_features(self, features: VisionFeatures, categories: str | Sequence[str] | None = None) -> torch.Tensor:
        """The `object_name` text `(2, D)`, or with `categories` each image's own category text `(B, 2, D)`."""
        if categories is None:
            return self.text_features()
        batch = features.global_embeds.shape[0]
        names = [categories] * batch if isinstance(categories, str) else list(categories)
        if len(names) != batch:
            raise ValueError(f"categories must name one class per image ({batch}); got {len(names)}")
        return torch.stack([self.class_text_features(name) for name in names])

    def constant_text_features(self, class_name: str | None = None) -> torch.Tensor:
        """The `object_name` text, or that of `class_name` (baked into an ONNX export)."""
        return self.text_features() if class_name is None else self.class_text_features(class_name)
