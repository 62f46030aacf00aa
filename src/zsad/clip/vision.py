"""Manual CLIP vision loop with the dual-path dense attention family.

With nothing changed, `vision_forward` reproduces `CLIPVisionModel` exactly. From `dense_start_layer`
on, a second token stream z accumulates dense self-correlation attention computed from the *original*
stream's normalised hidden states, without MLP (CLIP-Surgery style):

    z_s = h_{s-1} + A(LN1(h_{s-1})),    z_l = z_{l-1} + A(LN1(h_{l-1})) for l > s,

where A is W_O(sum_x softmax(X X^T / sqrt(d)) V) over X in {Q, K, V} as selected by `dense_attention`
(`vv` = AnomalyCLIP's DPAM, `qq+kk+vv` = Crane's E-Attn). The standard q-k attention and the dense
attentions of a layer share one q/k/v projection and run in a single `scaled_dot_product_attention`
call, so both streams cost one pass; nothing in the loop synchronises with the host.

Further hooks serve the methods that change the tower:
- `visual_prompts` (deep visual prompt tuning): learnable tokens appended after the
  1 + N tokens before the first prompted layer and replacing those trailing tokens before every later
  prompted layer; they travel through the remaining layers and are dropped at readout.
- `guided_attention` (Crane+'s D-Attn): at a chosen layer, an external patch-to-patch
  attention matrix A gives W_O(A V) at the patch tokens (no residual). V is that layer's projection of
  LN1 of the original stream either after the layer's attention residual, h + Attn(LN1(h))
  (`guided_value_source="post_attention"`, what the Crane reference computes and its released weights
  were trained with), or of the layer input h (`"layer_input"`, the paper's wording).
- `head_weights` / `dense_head_weights` (HeadCLIP's learnable head weights): per layer,
  each head's output `A_h V_h` is scaled before `out_proj`, in the standard or the dense attention, inside
  the batched SDPA path (no per-head loop).
- `dense_adapters` (DA-CLIP's DAKA): per layer, a callable applied to the dense stream
  after that layer's update (it returns the new stream, e.g. `z + residual`).

When `model.gradient_checkpointing_enable()` has set the encoder layers' `gradient_checkpointing` flag
and gradients are enabled, every layer step runs under activation checkpointing (same values).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPVisionEmbeddings, CLIPVisionModel

# Which projections form the self-correlation maps of each dense attention kind.
DENSE_ATTENTION_KINDS: dict[str, tuple[str, ...]] = {
    "vv": ("v",),
    "kk": ("k",),
    "qq": ("q",),
    "qq+kk": ("q", "k"),
    "qq+kk+vv": ("q", "k", "v"),
}
# Where guided attention takes its values: LN1 of the stream after the layer's attention residual (the
# Crane reference) or LN1 of the layer input (the paper's description).
GUIDED_VALUE_SOURCES = ("post_attention", "layer_input")


@dataclass
class VisionFeatures:
    """Result of one vision pass.

    Attributes:
        global_embeds: `(B, P)` projected CLS embedding of the original stream.
        patch_embeds: per requested layer, `(B, N, P)` patch tokens (dense stream when active) through
            `post_layernorm` and the visual projection, or the raw `(B, N, W)` residual-stream tokens
            when `encode_image(project_patches=False)`.
        grid_size: `(rows, cols)` of the patch grid, `N = rows * cols`.
        last_hidden_state: `(B, 1 + N, W)` original-stream output of the last layer (prompts dropped).
        guided_patch_embeds: per layer of `guided_attention`, the `(B, N, P)` (or raw `(B, N, W)`) output
            of the guided attention.
        extras: method-specific values computed with the features (e.g. the prompt-free embedding that
            conditions AdaCLIP's prompts, DA-CLIP's router probabilities), read by later pipeline steps.
    """

    global_embeds: torch.Tensor
    patch_embeds: tuple[torch.Tensor, ...]
    grid_size: tuple[int, int]
    last_hidden_state: torch.Tensor
    guided_patch_embeds: tuple[torch.Tensor, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)


def position_embeddings(
    embeddings: CLIPVisionEmbeddings, grid_size: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """`(1 + rows * cols, W)` position embeddings resized to the patch grid (CLS position unchanged).

    `bicubic` matches transformers' `interpolate_pos_encoding`; `bilinear` matches the AnomalyCLIP/Crane
    reference code. The weights are never modified in place.
    """
    table = embeddings.position_embedding.weight
    side = int(round((table.shape[0] - 1) ** 0.5))
    if tuple(grid_size) == (side, side):
        return table
    width = table.shape[-1]
    patch_table = table[1:].reshape(1, side, side, width).permute(0, 3, 1, 2)
    patch_table = F.interpolate(patch_table, size=tuple(grid_size), mode=mode, align_corners=False)
    return torch.cat([table[:1], patch_table.permute(0, 2, 3, 1).reshape(-1, width)])


def embed_patches(
    embeddings: CLIPVisionEmbeddings, pixel_values: torch.Tensor, mode: str = "bicubic"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch + class embeddings with (interpolated) position embeddings: `(B, 1 + N, W)`, grid size."""
    weight = embeddings.patch_embedding.weight
    patches = embeddings.patch_embedding(pixel_values.to(dtype=weight.dtype))
    grid_size = (patches.shape[-2], patches.shape[-1])
    patches = patches.flatten(2).transpose(1, 2)
    cls_token = embeddings.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
    tokens = torch.cat([cls_token, patches], dim=1)
    return tokens + position_embeddings(embeddings, grid_size, mode), grid_size


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _head_scale(weights: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """`(H,)` or `(B, H)` head weights -> `(B, H, 1, 1)`, checked."""
    if weights.shape[-1] != heads or weights.dim() not in (1, 2) or (weights.dim() == 2 and weights.shape[0] != batch):
        raise ValueError(f"head weights must have shape ({heads},) or ({batch}, {heads}); got {tuple(weights.shape)}")
    return weights.expand(batch, heads).reshape(batch, heads, 1, 1)


def dual_path_attention(
    layer: CLIPEncoderLayer,
    hidden_states: torch.Tensor,
    dense_kinds: Sequence[str] = (),
    head_weights: torch.Tensor | None = None,
    dense_head_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention of `layer` on `hidden_states` (already layer-normed), plus the dense attention.

    Returns `(standard, dense)`, both after `out_proj`; `dense` is None when `dense_kinds` is empty.
    The q/k/v projections run once; the standard and every dense self-correlation share one SDPA call
    (stacked along the batch); the dense self-correlations are summed per head before the shared
    `out_proj` matmul, so a dense attention of any kind costs one extra `out_proj`. `head_weights` / `dense_head_weights` (`(H,)`
    or `(B, H)`) scale each head's output of the standard / dense attention before `out_proj`.
    """
    attention = layer.self_attn
    heads = attention.num_heads
    q = _split_heads(attention.q_proj(hidden_states), heads)
    k = _split_heads(attention.k_proj(hidden_states), heads)
    v = _split_heads(attention.v_proj(hidden_states), heads)
    queries, keys, values = q, k, v
    if dense_kinds:
        projected = {"q": q, "k": k, "v": v}
        queries = torch.cat([q] + [projected[x] for x in dense_kinds])
        keys = torch.cat([k] + [projected[x] for x in dense_kinds])
        values = v.repeat(1 + len(dense_kinds), 1, 1, 1)
    out = F.scaled_dot_product_attention(queries, keys, values, scale=attention.scale)
    batch = hidden_states.shape[0]
    if dense_kinds:  # W_O(sum_x A_x V) + b: sum the self-correlations before the one dense out_proj
        out = torch.cat([out[:batch], out[batch:].view(len(dense_kinds), batch, *out.shape[1:]).sum(0)])
    if head_weights is not None or (dense_kinds and dense_head_weights is not None):
        ones = out.new_ones(heads)
        scales = [_head_scale(head_weights if head_weights is not None else ones, batch, heads)]
        if dense_kinds:
            scales.append(_head_scale(dense_head_weights if dense_head_weights is not None else ones, batch, heads))
        out = out * torch.cat(scales).to(out.dtype)
    out = attention.out_proj(_merge_heads(out))
    return (out[:batch], out[batch:]) if dense_kinds else (out, None)


def guided_attention_output(layer: CLIPEncoderLayer, normed_patches: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """`W_O(A V)` of `layer` for an external attention `A (B, N, N)` over `normed_patches (B, N, W)`.

    `normed_patches` are LN1-normalised patch tokens (CLS excluded); A is shared by all heads, so the
    per-head products concatenate to `A V` with the full-width V (Crane+'s D-Attn).
    """
    batch, length = normed_patches.shape[:2]
    if tuple(attention.shape) != (batch, length, length):
        raise ValueError(
            f"guided attention must have shape {(batch, length, length)} for {length} patch tokens; "
            f"got {tuple(attention.shape)}"
        )
    attention_module = layer.self_attn
    values = attention_module.v_proj(normed_patches)
    return attention_module.out_proj(attention.to(values.dtype) @ values)


def _with_prompt_tokens(hidden_states: torch.Tensor, prompts: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The first `num_tokens` tokens of `hidden_states` followed by `prompts` (`(n, W)` or `(B, n, W)`)."""
    batch = hidden_states.shape[0]
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(batch, -1, -1)
    if prompts.dim() != 3 or prompts.shape[0] != batch or prompts.shape[-1] != hidden_states.shape[-1]:
        raise ValueError(
            f"visual prompts must have shape (n, {hidden_states.shape[-1]}) or ({batch}, n, {hidden_states.shape[-1]}); "
            f"got {tuple(prompts.shape)}"
        )
    return torch.cat([hidden_states[:, :num_tokens], prompts.to(hidden_states.dtype)], dim=1)


@dataclass
class TowerHooks:
    """Per-layer changes to the vision tower (1-indexed layers); see the module docstring."""

    visual_prompts: Mapping[int, torch.Tensor] = field(default_factory=dict)
    guided_attention: Mapping[int, torch.Tensor] = field(default_factory=dict)
    head_weights: Mapping[int, torch.Tensor] = field(default_factory=dict)
    dense_head_weights: Mapping[int, torch.Tensor] = field(default_factory=dict)
    dense_adapters: Mapping[int, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    guided_value_source: str = "post_attention"

    def check(self, depth: int, dense_start_layer: int | None) -> None:
        if self.guided_value_source not in GUIDED_VALUE_SOURCES:
            raise ValueError(
                f"guided_value_source must be one of {GUIDED_VALUE_SOURCES}; got {self.guided_value_source!r}"
            )
        layers = [*self.visual_prompts, *self.guided_attention, *self.head_weights, *self.dense_head_weights, *self.dense_adapters]
        outside = [layer for layer in layers if not 1 <= layer <= depth]
        if outside:
            raise ValueError(f"vision hook layers must be within 1..{depth}; got {outside}")
        prompt_counts = {layer: prompts.shape[-2] for layer, prompts in self.visual_prompts.items()}
        if len(set(prompt_counts.values())) > 1:
            raise ValueError(f"every prompted layer must receive the same number of visual prompt tokens; got {prompt_counts}")
        dense_only = [*self.dense_head_weights, *self.dense_adapters]
        without_dense = [layer for layer in dense_only if dense_start_layer is None or layer < dense_start_layer]
        if without_dense:
            raise ValueError(
                f"dense head weights and dense adapters need the dense stream, which starts at layer "
                f"{dense_start_layer}; got layers {sorted(without_dense)}"
            )


def _layer_step(
    layer: CLIPEncoderLayer,
    index: int,
    hidden: torch.Tensor,
    dense: torch.Tensor | None,
    num_tokens: int,
    dense_kinds: Sequence[str] | None,
    hooks: TowerHooks,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One layer of both streams: returns `(hidden, dense, guided output or None)`.

    `dense_kinds` is None before the dense path starts; the dense stream is created at its first layer.
    """
    if index in hooks.visual_prompts:  # appended at the first prompted layer, replaced afterwards
        hidden = _with_prompt_tokens(hidden, hooks.visual_prompts[index], num_tokens)
    guided = None
    guided_attention = hooks.guided_attention.get(index)
    if guided_attention is not None and hooks.guided_value_source == "layer_input":
        guided = guided_attention_output(layer, layer.layer_norm1(hidden[:, 1:num_tokens]), guided_attention)
    attended, dense_update = dual_path_attention(
        layer,
        layer.layer_norm1(hidden),
        dense_kinds or (),
        hooks.head_weights.get(index),
        hooks.dense_head_weights.get(index),
    )
    if dense_kinds is not None:
        dense = (hidden if dense is None else dense) + dense_update
        if index in hooks.dense_adapters:
            dense = hooks.dense_adapters[index](dense)
    hidden = hidden + attended
    if guided_attention is not None and hooks.guided_value_source == "post_attention":
        guided = guided_attention_output(layer, layer.layer_norm1(hidden[:, 1:num_tokens]), guided_attention)
    hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return hidden, dense, guided


def _vision_tower(
    vision_model: CLIPVisionModel,
    pixel_values: torch.Tensor,
    tap_layers: Sequence[int],
    dense_attention: str | None,
    dense_start_layer: int | None,
    pos_embed_interpolation: str,
    hooks: TowerHooks,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int], dict[int, torch.Tensor]]:
    """The loop behind `vision_forward` and `encode_image`; also returns the guided-attention outputs."""
    dense_kinds = DENSE_ATTENTION_KINDS[dense_attention] if dense_attention else ()
    start = dense_start_layer if dense_attention else None
    hooks.check(len(vision_model.encoder.layers), start)
    hidden, grid_size = embed_patches(vision_model.embeddings, pixel_values, pos_embed_interpolation)
    num_tokens = hidden.shape[1]  # 1 + N: everything after them is a prompt token
    hidden = vision_model.pre_layrnorm(hidden)
    dense = None
    taps: dict[int, torch.Tensor] = {}
    guided: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(vision_model.encoder.layers, start=1):
        kinds = dense_kinds if start is not None and index >= start else None
        arguments = (layer, index, hidden, dense, num_tokens, kinds, hooks)
        if getattr(layer, "gradient_checkpointing", False) and torch.is_grad_enabled():
            hidden, dense, guided_output = layer._gradient_checkpointing_func(_layer_step, *arguments)
        else:
            hidden, dense, guided_output = _layer_step(*arguments)
        if guided_output is not None:
            guided[index] = guided_output
        if index in tap_layers:
            taps[index] = (dense if dense is not None else hidden)[:, :num_tokens]
    return hidden[:, :num_tokens], taps, grid_size, guided


def vision_forward(
    vision_model: CLIPVisionModel,
    pixel_values: torch.Tensor,
    *,
    tap_layers: Sequence[int] = (),
    dense_attention: str | None = None,
    dense_start_layer: int | None = None,
    pos_embed_interpolation: str = "bicubic",
    visual_prompts: Mapping[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int]]:
    """Run the CLIP vision tower by hand.

    Returns `(last_hidden_state, taps, grid_size)`: the original stream's output `(B, 1 + N, W)` (before
    `post_layernorm`, like `CLIPVisionModel.last_hidden_state`) and, for every 1-indexed layer in
    `tap_layers`, that layer's output tokens: the dense stream where it exists, else the original stream.

    `visual_prompts` maps 1-indexed layers to prompt tokens `(n, W)` or `(B, n, W)`: appended after the
    1 + N tokens before the first of these layers, replacing the trailing n tokens before the later
    ones. Prompt tokens are never part of the returned tokens.
    """
    last, taps, grid_size, _ = _vision_tower(
        vision_model,
        pixel_values,
        tap_layers,
        dense_attention,
        dense_start_layer,
        pos_embed_interpolation,
        TowerHooks(visual_prompts=visual_prompts or {}),
    )
    return last, taps, grid_size


def project_tokens(clip: CLIPModel, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's read-out of `(..., W)` vision tokens into the joint space: `post_layernorm`, then the visual
    projection -> `(..., P)`."""
    return clip.visual_projection(clip.vision_model.post_layernorm(tokens))


def encode_image(
    clip: CLIPModel,
    pixel_values: torch.Tensor,
    *,
    feature_layers: Sequence[int],
    dense_attention: str | None = "vv",
    dense_start_layer: int | None = None,
    pos_embed_interpolation: str = "bicubic",
    global_post_layernorm: bool = True,
    visual_prompts: Mapping[int, torch.Tensor] | None = None,
    guided_attention: Mapping[int, torch.Tensor] | None = None,
    head_weights: Mapping[int, torch.Tensor] | None = None,
    dense_head_weights: Mapping[int, torch.Tensor] | None = None,
    dense_adapters: Mapping[int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    guided_value_source: str = "post_attention",
    project_patches: bool = True,
) -> VisionFeatures:
    """Global embedding and patch embeddings at `feature_layers` in one vision pass.

    Args (besides `vision_forward`'s):
        global_post_layernorm: apply `post_layernorm` to the CLS token before the projection.
        guided_attention: `{layer: A (B, N, N)}`: per layer, `W_O(A V)` of the patch tokens (see
            `guided_attention_output`) in `VisionFeatures.guided_patch_embeds`.
        guided_value_source: `post_attention` (V from LN1 of the layer's stream after its attention
            residual, the Crane reference) or `layer_input` (V from LN1 of the layer input).
        head_weights / dense_head_weights: `{layer: (H,) or (B, H)}` per-head output scales of the
            standard / dense attention (HeadCLIP).
        dense_adapters: `{layer: f}`, the dense stream becomes `f(z)` after that layer (DA-CLIP's DAKA).
        project_patches: pass patch tokens through `post_layernorm` and the visual projection; False
            returns the raw residual-stream tokens (AdaCLIP learns its own projections, §3.1).
    """
    vision = clip.vision_model
    last, taps, grid_size, guided = _vision_tower(
        vision,
        pixel_values,
        feature_layers,
        dense_attention,
        dense_start_layer,
        pos_embed_interpolation,
        TowerHooks(
            visual_prompts=visual_prompts or {},
            guided_attention=guided_attention or {},
            head_weights=head_weights or {},
            dense_head_weights=dense_head_weights or {},
            dense_adapters=dense_adapters or {},
            guided_value_source=guided_value_source,
        ),
    )
    cls_token = last[:, 0]
    if global_post_layernorm:
        cls_token = vision.post_layernorm(cls_token)

    def readout(tokens: torch.Tensor) -> torch.Tensor:
        return project_tokens(clip, tokens) if project_patches else tokens

    return VisionFeatures(
        global_embeds=clip.visual_projection(cls_token),
        patch_embeds=tuple(readout(taps[layer][:, 1:]) for layer in feature_layers),
        grid_size=grid_size,
        last_hidden_state=last,
        guided_patch_embeds=tuple(readout(guided[layer]) for layer in sorted(guided)),
    )
