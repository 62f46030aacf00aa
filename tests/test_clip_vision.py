"""The manual vision loop against `CLIPVisionModel`, and the dense attention against naive per-head code."""

import math

import pytest
import torch
import torch.nn.functional as F

from zsad.clip.vision import DENSE_ATTENTION_KINDS, encode_image, position_embeddings, vision_forward
from zsad.testing import tiny_clip_model


@pytest.fixture(scope="module")
def clip():
    """Random biases and LayerNorms: a swapped LayerNorm or a dropped bias changes the result."""
    return tiny_clip_model(seed=0)


@pytest.mark.parametrize("size", [28, 56, (56, 40)])
def test_manual_loop_equals_clip_vision_model(clip, size):
    height, width = (size, size) if isinstance(size, int) else size
    pixels = torch.randn(3, 3, height, width)
    with torch.no_grad():
        reference = clip.vision_model(pixels, interpolate_pos_encoding=True)
        last, taps, grid = vision_forward(clip.vision_model, pixels, tap_layers=(2, 4))
        reference_taps = clip.vision_model(pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
    assert grid == (height // 4, width // 4)
    assert (last - reference.last_hidden_state).abs().max() < 1e-5
    assert (clip.vision_model.post_layernorm(last[:, 0]) - reference.pooler_output).abs().max() < 1e-5
    assert (taps[2] - reference_taps[2]).abs().max() < 1e-5


def test_global_embedding_equals_get_image_features(clip):
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        features = encode_image(clip, pixels, feature_layers=[4], dense_attention=None)
        reference = clip.get_image_features(pixels).pooler_output
    assert (features.global_embeds - reference).abs().max() < 1e-5


def naive_self_correlation(x_heads, v_heads):
    """softmax(X X^T / sqrt(d)) V for one head, written out."""
    scores = x_heads @ x_heads.transpose(-1, -2) / math.sqrt(x_heads.shape[-1])
    return torch.softmax(scores, dim=-1) @ v_heads


def naive_dual_path(clip, pixels, kinds, start):
    """Both streams layer by layer with explicit per-head loops and HF's own encoder layers."""
    vision = clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixels))
    dense = None
    for index, layer in enumerate(vision.encoder.layers, start=1):
        if index >= start:
            attn = layer.self_attn
            x = layer.layer_norm1(hidden)
            head_dim = attn.head_dim
            projections = {"q": attn.q_proj(x), "k": attn.k_proj(x), "v": attn.v_proj(x)}
            outputs = []
            for h in range(attn.num_heads):
                part = slice(h * head_dim, (h + 1) * head_dim)
                v = projections["v"][..., part]
                outputs.append(sum(naive_self_correlation(projections[kind][..., part], v) for kind in kinds))
            update = attn.out_proj(torch.cat(outputs, dim=-1))
            dense = (hidden if dense is None else dense) + update
        hidden = layer(hidden, None)
    return hidden, dense


@pytest.mark.parametrize("kind", sorted(DENSE_ATTENTION_KINDS))
def test_dense_path_equals_naive_per_head(clip, kind):
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        last, taps, _ = vision_forward(clip.vision_model, pixels, tap_layers=(4,), dense_attention=kind, dense_start_layer=2)
        naive_last, naive_dense = naive_dual_path(clip, pixels, DENSE_ATTENTION_KINDS[kind], start=2)
    assert (last - naive_last).abs().max() < 1e-5  # the original stream is untouched
    assert (taps[4] - naive_dense).abs().max() < 1e-5


def test_dense_taps_before_start_are_original_stream(clip):
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        _, dense_taps, _ = vision_forward(clip.vision_model, pixels, tap_layers=(1, 3), dense_attention="vv", dense_start_layer=3)
        _, plain_taps, _ = vision_forward(clip.vision_model, pixels, tap_layers=(1, 3))
    assert torch.equal(dense_taps[1], plain_taps[1])
    assert not torch.allclose(dense_taps[3], plain_taps[3])


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_position_embedding_interpolation(clip, mode):
    embeddings = clip.vision_model.embeddings
    table = embeddings.position_embedding.weight
    assert position_embeddings(embeddings, (7, 7), mode) is table  # native grid: unchanged
    resized = position_embeddings(embeddings, (14, 10), mode)
    assert resized.shape == (1 + 140, table.shape[1])
    grid = table[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(14, 10), mode=mode, align_corners=False).permute(0, 2, 3, 1).reshape(140, -1)
    assert torch.equal(resized[0], table[0]) and torch.allclose(resized[1:], expected)
    assert torch.equal(embeddings.position_embedding.weight, table)  # weights never modified in place


def test_patch_embeddings_go_through_post_layernorm_and_projection(clip):
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        features = encode_image(clip, pixels, feature_layers=[4], dense_attention="vv", dense_start_layer=2)
        _, taps, _ = vision_forward(clip.vision_model, pixels, tap_layers=(4,), dense_attention="vv", dense_start_layer=2)
    expected = clip.visual_projection(clip.vision_model.post_layernorm(taps[4][:, 1:]))
    assert features.patch_embeds[0].shape == (2, 49, 32)
    assert torch.allclose(features.patch_embeds[0], expected)
