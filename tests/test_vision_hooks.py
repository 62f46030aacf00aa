"""Vision-loop hooks for methods that change the tower: head weights (HeadCLIP), dense-stream adapters
(DA-CLIP) and activation checkpointing, against naive per-head code written here."""

import math

import pytest
import torch
from transformers import CLIPModel

from zsad.clip.vision import encode_image, vision_forward
from zsad.testing import tiny_clip_config

START = 2


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config()).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a misplaced scale cannot hide
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layrnorm" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


def naive_weighted_dual_path(clip, pixels, head_weights, dense_head_weights, adapters):
    """Both streams with explicit per-head loops: head h's output of layer l scaled by its weight
    (per image) before `out_proj`, V-V dense attention from layer START on, adapters after the update."""
    vision = clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixels))
    dense = None
    for index, layer in enumerate(vision.encoder.layers, start=1):
        attn = layer.self_attn
        x = layer.layer_norm1(hidden)
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        standard_heads, dense_heads = [], []
        for h in range(attn.num_heads):
            part = slice(h * attn.head_dim, (h + 1) * attn.head_dim)
            qh, kh, vh = q[..., part], k[..., part], v[..., part]
            scale = 1 / math.sqrt(attn.head_dim)
            standard = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1) @ vh
            vv = torch.softmax(vh @ vh.transpose(-1, -2) * scale, dim=-1) @ vh
            w = head_weights.get(index)
            wd = dense_head_weights.get(index)
            standard_heads.append(standard * (w[:, h, None, None] if w is not None else 1.0))
            dense_heads.append(vv * (wd[:, h, None, None] if wd is not None else 1.0))
        if index >= START:
            update = attn.out_proj(torch.cat(dense_heads, dim=-1))
            dense = (hidden if dense is None else dense) + update
            if index in adapters:
                dense = adapters[index](dense)
        hidden = hidden + attn.out_proj(torch.cat(standard_heads, dim=-1))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return hidden, dense


def test_head_weights_and_dense_adapters_equal_naive_per_head(clip):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 28, 28)
    head_weights = {1: torch.rand(2, 4) * 2, 3: torch.rand(4).expand(2, 4)}
    dense_head_weights = {2: torch.rand(2, 4) * 2, 4: torch.rand(2, 4)}
    delta = torch.randn(32, 32) * 0.1
    adapters = {3: lambda z: z + z @ delta}
    with torch.no_grad():
        last, taps, _ = vision_forward(clip.vision_model, pixels, tap_layers=(3, 4), dense_attention="vv", dense_start_layer=START)
        features = encode_image(
            clip,
            pixels,
            feature_layers=[4],
            dense_attention="vv",
            dense_start_layer=START,
            head_weights={1: head_weights[1], 3: head_weights[3][0]},  # (B, H) and (H,) forms
            dense_head_weights=dense_head_weights,
            dense_adapters=adapters,
            project_patches=False,
        )
        naive_last, naive_dense = naive_weighted_dual_path(clip, pixels, head_weights, dense_head_weights, adapters)
        plain_last, plain_dense = naive_weighted_dual_path(clip, pixels, {}, {}, {})
    assert (last - plain_last).abs().max() < 1e-5 and (taps[4] - plain_dense).abs().max() < 1e-5
    assert (features.last_hidden_state - naive_last).abs().max() < 1e-5
    assert (features.patch_embeds[0] - naive_dense[:, 1:]).abs().max() < 1e-5
    assert (features.patch_embeds[0] - plain_dense[:, 1:]).abs().max() > 1e-2  # the hooks did something


def test_unit_head_weights_and_identity_adapters_change_nothing(clip):
    pixels = torch.randn(2, 3, 28, 28)
    settings = {"feature_layers": [4], "dense_attention": "vv", "dense_start_layer": START}
    with torch.no_grad():
        plain = encode_image(clip, pixels, **settings)
        hooked = encode_image(
            clip,
            pixels,
            **settings,
            head_weights={layer: torch.ones(4) for layer in range(1, 5)},
            dense_head_weights={layer: torch.ones(2, 4) for layer in range(START, 5)},
            dense_adapters={4: lambda z: z},
        )
    assert torch.equal(plain.patch_embeds[0], hooked.patch_embeds[0])
    assert torch.equal(plain.global_embeds, hooked.global_embeds)


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ({"dense_adapters": {1: lambda z: z}}, "dense stream"),
        ({"dense_head_weights": {1: torch.ones(4)}}, "dense stream"),
        ({"head_weights": {5: torch.ones(4)}}, "within 1..4"),
        ({"head_weights": {2: torch.ones(3)}}, "head weights must have shape"),
    ],
)
def test_invalid_hooks_are_clear_errors(clip, hooks, message):
    with pytest.raises(ValueError, match=message):
        encode_image(clip, torch.randn(1, 3, 28, 28), feature_layers=[4], dense_attention="vv", dense_start_layer=START, **hooks)


def test_activation_checkpointing_changes_no_value_or_gradient(clip):
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 28, 28)
    weights = torch.ones(2, 4, requires_grad=True)
    prompts = torch.randn(2, 3, 32, requires_grad=True)

    def run():
        features = encode_image(
            clip,
            pixels,
            feature_layers=[3, 4],
            dense_attention="vv",
            dense_start_layer=START,
            dense_head_weights={3: weights},
            visual_prompts={1: prompts, 2: prompts * 2},
        )
        loss = sum(p.square().mean() for p in features.patch_embeds) + features.global_embeds.sum()
        return loss, torch.autograd.grad(loss, (weights, prompts))

    loss, grads = run()
    calls = []

    def checkpoint(function, *args):
        calls.append(args[1])  # the layer index
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)

    for layer in clip.vision_model.encoder.layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = checkpoint
    try:
        checkpointed_loss, checkpointed_grads = run()
    finally:
        for layer in clip.vision_model.encoder.layers:
            layer.gradient_checkpointing = False
    assert calls == [1, 2, 3, 4]
    assert (loss - checkpointed_loss).abs() < 1e-6
    for plain, checkpointed in zip(grads, checkpointed_grads):
        assert plain.abs().max() > 0 and (plain - checkpointed).abs().max() < 1e-6
