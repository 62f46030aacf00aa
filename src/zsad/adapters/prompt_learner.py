"""Object-agnostic text prompts with deep compound tokens (AnomalyCLIP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel

from ..clip.text import TokenizedPrompts, encode_text, insert_positions
from ..modeling_base import ZSADAdapter


class ObjectAgnosticPrompts(ZSADAdapter):
    """Learnable context vectors for the normal and anomaly prompts plus per-layer deep text tokens.

    The normal prompt is `[SOS] V_1..V_n object . [EOS]`, the anomaly prompt `[SOS] W_1..W_n damaged
    object . [EOS]`; before each text layer in `deep_layers`, hidden positions 1..m are overwritten by
    that layer's m deep tokens. All vectors start from N(0, 0.02).

    Parameters: `2 * n * width + len(deep_layers) * m * width` (43,008 for n=12, m=4, 8 layers, width 768).

    With `learn_deep_tokens=False` the learner holds the context vectors only and the deep tokens are
    given to `text_features` by the caller (DA-CLIP combines them per image from its domain prompt
    bank).
    """

    def __init__(
        self,
        num_context_tokens: int,
        deep_prompt_length: int,
        deep_layers: list[int],
        width: int,
        learn_deep_tokens: bool = True,
    ):
        super().__init__()
        self.deep_layers = list(deep_layers)
        self.deep_prompt_length = deep_prompt_length
        self.context = nn.Parameter(torch.empty(2, num_context_tokens, width))  # [normal, anomaly]
        if learn_deep_tokens:
            self.deep_tokens = nn.Parameter(torch.empty(len(self.deep_layers), deep_prompt_length, width))
        else:
            self.register_parameter("deep_tokens", None)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config, learn_deep_tokens: bool = True) -> ObjectAgnosticPrompts:
        """Built from a config with `num_context_tokens`, `deep_prompt_length` and `deep_prompt_layers`
        (AnomalyCLIP's; Crane reuses it unchanged)."""
        return cls(
            num_context_tokens=config.num_context_tokens,
            deep_prompt_length=config.deep_prompt_length,
            deep_layers=config.deep_prompt_layers,
            width=config.clip_config.text_config.hidden_size,
            learn_deep_tokens=learn_deep_tokens,
        )

    def reset_parameters(self) -> None:
        nn.init.normal_(self.context, std=0.02)
        if self.deep_tokens is not None:
            nn.init.normal_(self.deep_tokens, std=0.02)

    @property
    def num_context_tokens(self) -> int:
        return self.context.shape[1]

    def prompt_embeddings(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """`(2, L, W)` embeddings of the two prompt templates with context slots 1..n replaced."""
        n = self.num_context_tokens
        context = self.context.to(token_embeddings.dtype)
        return torch.cat([token_embeddings[:, :1], context, token_embeddings[:, 1 + n :]], dim=1)

    def deep_prompts(self, deep_tokens: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """`{text layer: tokens}` for `encode_text(deep_prompts=...)`: the learner's own `(m, W)` tokens, or
        per image from `deep_tokens (B, layers, m, W)`, each repeated for the image's two prompts."""
        if deep_tokens is None:
            if self.deep_tokens is None and self.deep_layers:
                raise ValueError("this prompt learner has no deep tokens of its own: pass deep_tokens (B, layers, m, W)")
            return {layer: self.deep_tokens[i] for i, layer in enumerate(self.deep_layers)}
        expected = (len(self.deep_layers), self.deep_prompt_length, self.context.shape[-1])
        if deep_tokens.dim() != 4 or tuple(deep_tokens.shape[1:]) != expected:
            raise ValueError(f"deep_tokens must have shape (B, {', '.join(map(str, expected))}); got {tuple(deep_tokens.shape)}")
        return {layer: deep_tokens[:, i].repeat_interleave(2, dim=0) for i, layer in enumerate(self.deep_layers)}

    def text_features(
        self,
        clip: CLIPModel,
        prompts: TokenizedPrompts,
        image_embeds: torch.Tensor | None = None,
        deep_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised [normal, anomaly] text embeddings: `(2, D)`, or `(B, 2, D)` when each image's
        normalised global embedding `image_embeds (B, P)` is inserted after the context tokens as an
        extra token (Crane's conditioning; the end-of-text position shifts by one),
        and/or each image brings its own deep tokens `deep_tokens (B, layers, m, W)` (DA-CLIP)."""
        if not prompts.is_tokenized:
            raise ValueError(
                "this model has no prompt token ids: build it with from_backbone(...) or load a checkpoint "
                "with from_pretrained(...)"
            )
        ids = prompts.input_ids[:, : prompts.max_length]
        embeds = self.prompt_embeddings(clip.text_model.embeddings.token_embedding(ids))
        pooling_positions = prompts.eos_positions
        batches = [x.shape[0] for x in (image_embeds, deep_tokens) if x is not None]
        if len(batches) > 1 and batches[0] != batches[1]:
            raise ValueError(f"image_embeds and deep_tokens must cover the same images; got batches {batches}")
        batch = batches[0] if batches else None
        if batch is not None:
            embeds, pooling_positions = embeds.repeat(batch, 1, 1), pooling_positions.repeat(batch)
        if image_embeds is not None:
            image_token = F.normalize(image_embeds, dim=-1).repeat_interleave(2, dim=0).unsqueeze(1)
            embeds = insert_positions(embeds, image_token, 1 + self.num_context_tokens)
            pooling_positions = pooling_positions + 1
        text = encode_text(
            clip, None, inputs_embeds=embeds, deep_prompts=self.deep_prompts(deep_tokens), pooling_positions=pooling_positions
        )
        text = F.normalize(text, dim=-1)
        return text if batch is None else text.view(batch, 2, -1)
