"""Prompted CLIP text encoder (deep text prompts as in AnomalyCLIP).

`encode_text` runs `CLIPTextModel` by hand so that learnable vectors can replace token embeddings
(context tokens in place of placeholder slots) and deep prompt tokens can overwrite hidden states at
chosen positions before chosen layers. With no prompts it reproduces `CLIPTextModel` + projection
exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPTextModel

from .vision import _merge_heads, _split_heads


def causal_layer_forward(layer: CLIPEncoderLayer, hidden_states: torch.Tensor) -> torch.Tensor:
    """A pre-LN CLIP text block with causal SDPA attention."""
    attention = layer.self_attn
    x = layer.layer_norm1(hidden_states)
    q, k, v = (_split_heads(proj(x), attention.num_heads) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attention.scale)
    hidden_states = hidden_states + attention.out_proj(_merge_heads(attended))
    return hidden_states + layer.mlp(layer.layer_norm2(hidden_states))


def eos_positions(input_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """Pooling position of every sequence, with `CLIPTextModel`'s rule.

    First occurrence of `eos_token_id`, or the highest id when the config carries the legacy
    `eos_token_id == 2` (OpenAI vocabularies, where end-of-text is the largest id).
    """
    ids = input_ids.to(torch.int)
    if eos_token_id == 2 or eos_token_id is None:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


def encode_text(
    clip: CLIPModel,
    input_ids: torch.Tensor | None,
    *,
    inputs_embeds: torch.Tensor | None = None,
    deep_prompts: Mapping[int, torch.Tensor] | None = None,
    deep_prompt_offset: int = 1,
    pooling_positions: torch.Tensor | None = None,
    project: bool = True,
) -> torch.Tensor:
    """Pooled (and projected) text embeddings `(P, D)` of `P` token sequences.

    Args:
        clip: the CLIP model (its text tower, `text_projection`).
        input_ids: `(P, L)` token ids; used for the embeddings unless `inputs_embeds` is given, and for
            the pooling positions unless `pooling_positions` is given (None when both are given).
        inputs_embeds: `(P, L, W)` token embeddings (e.g. with learnable context vectors spliced in).
        deep_prompts: `{layer: tokens}` with 1-indexed text layers and tokens of shape `(n, W)` or
            `(P, n, W)`; before that layer, hidden positions `deep_prompt_offset .. offset + n - 1` are
            overwritten (AnomalyCLIP's deep compound prompts overwrite positions 1..4 of layers 2..9).
        pooling_positions: `(P,)` positions of the end-of-text token.
        project: apply `text_projection`.
    """
    text_model: CLIPTextModel = clip.text_model
    embeddings = text_model.embeddings
    if input_ids is None and (inputs_embeds is None or pooling_positions is None):
        raise ValueError("encode_text needs input_ids unless both inputs_embeds and pooling_positions are given")
    if inputs_embeds is None:
        inputs_embeds = embeddings.token_embedding(input_ids)
    hidden = embeddings(inputs_embeds=inputs_embeds)
    deep_prompts = deep_prompts or {}
    for index, layer in enumerate(text_model.encoder.layers, start=1):
        prompt = deep_prompts.get(index)
        if prompt is not None:
            hidden = overwrite_positions(hidden, prompt, deep_prompt_offset)
        hidden = causal_layer_forward(layer, hidden)
    hidden = text_model.final_layer_norm(hidden)
    if pooling_positions is None:
        pooling_positions = eos_positions(input_ids, text_model.eos_token_id)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), pooling_positions.to(hidden.device)]
    return clip.text_projection(pooled) if project else pooled


def overwrite_positions(hidden: torch.Tensor, tokens: torch.Tensor, offset: int) -> torch.Tensor:
    """`hidden` with positions `offset .. offset + n - 1` replaced by `tokens` (`(n, W)` or `(P, n, W)`)."""
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    end = offset + tokens.shape[1]
    return torch.cat([hidden[:, :offset], tokens.to(hidden.dtype), hidden[:, end:]], dim=1)


def insert_positions(hidden: torch.Tensor, tokens: torch.Tensor, offset: int) -> torch.Tensor:
    """`(P, L + n, W)`: `tokens` (`(n, W)` or `(P, n, W)`) inserted before position `offset` of `hidden`.

    Used for Crane's conditioning token: every later position, end-of-text included,
    moves by n.
    """
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    return torch.cat([hidden[:, :offset], tokens.to(hidden.dtype), hidden[:, offset:]], dim=1)


class TokenizedPrompts(nn.Module):
    """Fixed token ids of a method's prompts (stored in its config) as non-persistent buffers.

    `input_ids (P, context_length)` are padded with 0 (positions after end-of-text do not influence it
    under causal attention) and `eos_positions (P,)` is the last position of each sequence.
    `token_ids=None` stands for a model built from a config without a tokenizer.
    """

    def __init__(self, token_ids: Sequence[Sequence[int]] | None, context_length: int):
        super().__init__()
        self.token_ids = [list(t) for t in token_ids] if token_ids is not None else None
        rows = len(self.token_ids) if self.token_ids else 1
        too_long = [len(t) for t in self.token_ids or [] if len(t) > context_length]
        if too_long:
            raise ValueError(f"a prompt has {max(too_long)} tokens but the text encoder takes at most {context_length}")
        self.register_buffer("input_ids", torch.zeros(rows, context_length, dtype=torch.long), persistent=False)
        self.register_buffer("eos_positions", torch.zeros(rows, dtype=torch.long), persistent=False)
        self.reset_buffers()

    @property
    def is_tokenized(self) -> bool:
        return self.token_ids is not None

    @property
    def max_length(self) -> int:
        """Length of the longest sequence. Under causal attention the positions after it never reach a
        pooled end-of-text token, so `input_ids[:, :max_length]` gives the same text embeddings."""
        return max(map(len, self.token_ids)) if self.token_ids else self.input_ids.shape[1]

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """(Re)build the buffers from `token_ids` (also after meta-device loading)."""
        if self.token_ids is None or self.input_ids.is_meta:
            return
        ids = torch.zeros_like(self.input_ids, device="cpu")
        for row, sequence in enumerate(self.token_ids):
            ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        self.input_ids.copy_(ids)
        self.eos_positions.copy_(torch.tensor([len(t) - 1 for t in self.token_ids]))
