"""Manual CLIP vision loop with the dual-path dense attention family (METHODS.md §2.1, §5.1).

With nothing changed, `vision_forward` reproduces `CLIPVisionModel` exactly. From `dense_start_layer`
on, a second token stream z accumulates dense self-correlation attention computed from the *original*
stream's normalised hidden states, without MLP (CLIP-Surgery style):

    z_s = h_{s-1} + A(LN1(h_{s-1})),    z_l = z_{l-1} + A(LN1(h_{l-1})) for l > s,

where A is W_O(sum_x softmax(X X^T / sqrt(d)) V) over X in {Q, K, V} as selected by `dense_attention`
(`vv` = AnomalyCLIP's DPAM, `qq+kk+vv` = Crane's E-Attn). The standard q-k attention and the dense
attentions of a layer share one q/k/v projection and run in a single `scaled_dot_product_attention`
call, so both streams cost one pass; nothing in the loop synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class VisionFeatures:
    """Result of one vision pass.

    Attributes:
        global_embeds: `(B, P)` projected CLS embedding of the original stream.
        patch_embeds: per requested layer, `(B, N, P)` patch tokens (dense stream when active) through
            `post_layernorm` and the visual projection.
        grid_size: `(rows, cols)` of the patch grid, `N = rows * cols`.
        last_hidden_state: `(B, 1 + N, W)` original-stream output of the last layer.
    """

    global_embeds: torch.Tensor
    patch_embeds: tuple[torch.Tensor, ...]
    grid_size: tuple[int, int]
    last_hidden_state: torch.Tensor


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


def dual_path_attention(
    layer: CLIPEncoderLayer, hidden_states: torch.Tensor, dense_kinds: Sequence[str] = ()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention of `layer` on `hidden_states` (already layer-normed), plus the dense attention.

    Returns `(standard, dense)`, both after `out_proj`; `dense` is None when `dense_kinds` is empty.
    The q/k/v projections run once; the standard and every dense self-correlation share one SDPA call
    (stacked along the batch) and one `out_proj` matmul.
    """
    attention = layer.self_attn
    heads = attention.num_heads
    q = _split_heads(attention.q_proj(hidden_states), heads)
    k = _split_heads(attention.k_proj(hidden_states), heads)
    v = _split_heads(attention.v_proj(hidden_states), heads)
    projected = {"q": q, "k": k, "v": v}
    queries = torch.cat([q] + [projected[x] for x in dense_kinds])
    keys = torch.cat([k] + [projected[x] for x in dense_kinds])
    values = v.repeat(1 + len(dense_kinds), 1, 1, 1) if dense_kinds else v
    out = F.scaled_dot_product_attention(queries, keys, values, scale=attention.scale)
    out = attention.out_proj(_merge_heads(out))
    batch = hidden_states.shape[0]
    standard = out[:batch]
    if not dense_kinds:
        return standard, None
    # Sum the self-correlation outputs before the bias: W_O(sum_x A_x V) + b.
    dense = out[batch:].view(len(dense_kinds), batch, *out.shape[1:]).sum(0)
    if attention.out_proj.bias is not None:
        dense = dense - (len(dense_kinds) - 1) * attention.out_proj.bias
    return standard, dense


def encoder_layer_forward(layer: CLIPEncoderLayer, hidden_states: torch.Tensor) -> torch.Tensor:
    """A standard pre-LN CLIP block (attention through SDPA, then MLP)."""
    attended, _ = dual_path_attention(layer, layer.layer_norm1(hidden_states))
    hidden_states = hidden_states + attended
    return hidden_states + layer.mlp(layer.layer_norm2(hidden_states))


def vision_forward(
    vision_model: CLIPVisionModel,
    pixel_values: torch.Tensor,
    *,
    tap_layers: Sequence[int] = (),
    dense_attention: str | None = None,
    dense_start_layer: int | None = None,
    pos_embed_interpolation: str = "bicubic",
) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int]]:
    """Run the CLIP vision tower by hand.

    Returns `(last_hidden_state, taps, grid_size)`: the original stream's output `(B, 1 + N, W)` (before
    `post_layernorm`, like `CLIPVisionModel.last_hidden_state`) and, for every 1-indexed layer in
    `tap_layers`, that layer's output tokens: the dense stream where it exists, else the original stream.
    """
    dense_kinds = DENSE_ATTENTION_KINDS[dense_attention] if dense_attention else ()
    start = dense_start_layer if dense_attention else None
    hidden, grid_size = embed_patches(vision_model.embeddings, pixel_values, pos_embed_interpolation)
    hidden = vision_model.pre_layrnorm(hidden)
    dense = None
    taps: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(vision_model.encoder.layers, start=1):
        if start is not None and index >= start:
            attended, dense_update = dual_path_attention(layer, layer.layer_norm1(hidden), dense_kinds)
            dense = (hidden if dense is None else dense) + dense_update
            hidden = hidden + attended
            hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        else:
            hidden = encoder_layer_forward(layer, hidden)
        if index in tap_layers:
            taps[index] = dense if dense is not None else hidden
    return hidden, taps, grid_size


def encode_image(
    clip: CLIPModel,
    pixel_values: torch.Tensor,
    *,
    feature_layers: Sequence[int],
    dense_attention: str | None = "vv",
    dense_start_layer: int | None = None,
    pos_embed_interpolation: str = "bicubic",
    global_post_layernorm: bool = True,
) -> VisionFeatures:
    """Global embedding and projected patch embeddings at `feature_layers` in one vision pass."""
    vision = clip.vision_model
    last, taps, grid_size = vision_forward(
        vision,
        pixel_values,
        tap_layers=feature_layers,
        dense_attention=dense_attention,
        dense_start_layer=dense_start_layer,
        pos_embed_interpolation=pos_embed_interpolation,
    )
    cls_token = last[:, 0]
    if global_post_layernorm:
        cls_token = vision.post_layernorm(cls_token)
    patch_embeds = tuple(clip.visual_projection(vision.post_layernorm(taps[layer][:, 1:])) for layer in feature_layers)
    return VisionFeatures(
        global_embeds=clip.visual_projection(cls_token),
        patch_embeds=patch_embeds,
        grid_size=grid_size,
        last_hidden_state=last,
    )
