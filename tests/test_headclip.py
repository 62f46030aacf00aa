"""HeadCLIP (METHODS.md §4.2): parameter budget, identity with AnomalyCLIP at unit head weights, random head
weights against a per-head computation written here, gradients, activation checkpointing, batch invariance,
checkpoints, the joint score, and the command line."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import AutoModel, CLIPModel

import zsad
from zsad import AnomalyCLIPModel, HeadCLIPConfig, HeadCLIPModel
from zsad.adapters.head_weights import HeadWeights
from zsad.cli import main
from zsad.data import make_synthetic_dataset
from zsad.testing import save_tiny_backbone, tiny_clip_config

SIZE = 28  # the tiny backbone's native size: 7 x 7 patches of 4 px, no position interpolation
MODES = [
    {"head_weight_streams": "both", "head_weight_mode": "static"},
    {"head_weight_streams": "dense", "head_weight_mode": "static"},
    {"head_weight_streams": "both", "head_weight_mode": "dynamic"},
    {"head_weight_streams": "dense", "head_weight_mode": "dynamic"},
]
MODE_IDS = ["both-static", "dense-static", "both-dynamic", "dense-dynamic"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """Tiny CLIP (4 vision layers, 4 heads of width 4) with non-trivial biases and LayerNorms, so a
    misplaced head scale cannot hide behind a zero bias or a unit norm."""
    path = save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip-headclip"), hidden_size=16)
    clip = CLIPModel.from_pretrained(path)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in clip.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    clip.save_pretrained(path)
    return str(path)


def build(backbone, seed=0, **config):
    torch.manual_seed(seed)
    return HeadCLIPModel.from_backbone(backbone, image_size=SIZE, **config).eval()


def randomize_head_weights(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.head_weights.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def pixels(batch, seed=0):
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def targets(batch):
    masks = torch.zeros(batch, SIZE, SIZE)
    masks[0, 4:14, 8:20] = 1
    return {"masks": masks, "labels": (masks.flatten(1).amax(1) > 0).long()}


# ---------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("config", "head_parameters", "total"),
    [
        ({}, {"head_weights.delta": 24 * 16 + 19 * 16}, 43_696),
        ({"head_weight_streams": "dense"}, {"head_weights.delta": 19 * 16}, 43_312),
        ({"head_weight_mode": "dynamic"},
         {"head_weights.generator.weight": 768 * 688, "head_weights.generator.bias": 688}, 572_080),
        ({"head_weight_mode": "dynamic", "head_weight_streams": "dense"},
         {"head_weights.generator.weight": 768 * 304, "head_weights.generator.bias": 304}, 276_784),
    ],
    ids=["both-static", "dense-static", "both-dynamic", "dense-dynamic"],
)
def test_vit_l14_336_trainable_parameters_on_meta_device(config, head_parameters, total):
    with torch.device("meta"):
        model = HeadCLIPModel(HeadCLIPConfig(**config))
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.context": 2 * 12 * 768, "prompt_learner.deep_tokens": 8 * 4 * 768, **head_parameters}
    assert model.num_trainable_parameters() == total == 43_008 + sum(head_parameters.values())
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_defaults_are_anomalyclip_plus_head_weights_and_the_joint_score():
    config = HeadCLIPConfig()
    assert (config.model_type, config.head_weight_streams, config.head_weight_mode) == ("zsad_headclip", "both", "static")
    assert (config.image_score, config.joint_score_alpha, config.joint_score_pooling) == ("joint", 0.5, "max")
    assert config.head_weight_layers == list(range(1, 25)) and config.dense_head_weight_layers == list(range(6, 25))
    anomalyclip = zsad.AnomalyCLIPConfig()
    for field in ("dense_attention", "dense_start_layer", "feature_layers", "global_post_layernorm", "pos_embed_interpolation",
                  "num_context_tokens", "deep_prompt_layers", "local_loss_weight", "temperature", "gaussian_sigma"):
        assert getattr(config, field) == getattr(anomalyclip, field), field
    assert HeadCLIPConfig.training_defaults == {
        "optimizer": "adam", "learning_rate": 1e-3, "betas": (0.5, 0.999), "weight_decay": 0.0,
        "batch_size": 8, "num_epochs": 15, "seed": 111,
    }
    assert zsad.MODEL_CLASSES["headclip"] is HeadCLIPModel and HeadCLIPModel.trains_through_vision


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head_weight_streams": "qk"}, "head_weight_streams"),
        ({"head_weight_mode": "learned"}, "head_weight_mode"),
        ({"dense_attention": None}, "dense_attention cannot be None"),
        ({"joint_score_alpha": -0.1}, "joint_score_alpha"),
    ],
)
def test_invalid_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadCLIPConfig(clip_config=tiny_clip_config(vision_layers=4, text_layers=2), **kwargs)


def test_head_weight_adapter_checks_its_input():
    static, dynamic = HeadWeights([1, 2], [2], num_heads=4), HeadWeights([], [2, 3], num_heads=4, embed_dim=8)
    standard, dense = static()
    assert [tuple(w.shape) for w in standard.values()] == [(4,), (4,)] and list(dense) == [2]
    standard, dense = dynamic(torch.randn(3, 8))
    assert standard == {} and [tuple(w.shape) for w in dense.values()] == [(3, 4), (3, 4)]
    assert all(torch.equal(w, torch.ones_like(w)) for w in dense.values())  # G = 0 at initialisation
    with pytest.raises(ValueError, match="static head weights"):
        static(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"shape \(B, 8\)"):
        dynamic()
    with pytest.raises(ValueError, match=r"shape \(B, 8\)"):
        dynamic(torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least one layer"):
        HeadWeights([], [], num_heads=4)


# ---------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("config", MODES, ids=MODE_IDS)
def test_unit_head_weights_give_exactly_anomalyclip(backbone, config):
    headclip = build(backbone, **config)
    anomalyclip = AnomalyCLIPModel.from_backbone(backbone, image_size=SIZE, image_score="joint").eval()
    anomalyclip.prompt_learner.load_state_dict(headclip.prompt_learner.state_dict())
    x, y = pixels(3), targets(3)
    with torch.no_grad():
        ours, theirs = headclip(x, **y), anomalyclip(x, **y)
    for field in ("anomaly_maps", "pred_scores", "image_logits", "loss"):
        assert (getattr(ours, field) - getattr(theirs, field)).abs().max() <= 1e-6, field
    assert (ours.patch_logits[0] - theirs.patch_logits[0]).abs().max() <= 1e-6
    randomize_head_weights(headclip)
    with torch.no_grad():
        moved = headclip(x)
    assert (moved.anomaly_maps - theirs.anomaly_maps).abs().max() > 1e-2  # the weights do act


def naive_headclip(model, pixel_values):
    """HeadCLIP written out with the HF CLIP modules' weights and an explicit loop over heads.

    Returns `(patch_logits, image_logits, anomaly_maps, joint scores)` for a model with `gaussian_sigma=0`
    at the backbone's native resolution (no position interpolation).
    """
    cfg, clip = model.config, model.clip
    vision = clip.vision_model
    heads = cfg.clip_config.vision_config.num_attention_heads
    batch = pixel_values.shape[0]
    adapter = model.head_weights
    if cfg.head_weight_mode == "static":
        table = (1 + adapter.delta).expand(batch, -1, -1)
    else:  # e0: CLIP's own forward, CLS without post_layernorm (AnomalyCLIP's global embedding)
        e0 = clip.visual_projection(vision(pixel_values=pixel_values).last_hidden_state[:, 0])
        e0 = e0 / e0.norm(dim=-1, keepdim=True)
        table = 1 + (e0 @ adapter.generator.weight.T + adapter.generator.bias).view(batch, -1, heads)
    standard_rows = cfg.head_weight_layers
    standard = {layer: table[:, i] for i, layer in enumerate(standard_rows)}
    dense_weights = {layer: table[:, len(standard_rows) + i] for i, layer in enumerate(cfg.dense_head_weight_layers)}

    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    dense = None
    for index, layer in enumerate(vision.encoder.layers, start=1):
        attention = layer.self_attn
        x = layer.layer_norm1(hidden)
        q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
        width = attention.head_dim
        standard_heads, dense_heads = [], []
        for h in range(heads):
            qh, kh, vh = (t[..., h * width : (h + 1) * width] for t in (q, k, v))
            qk = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(width), dim=-1) @ vh
            vv = torch.softmax(vh @ vh.transpose(-1, -2) / math.sqrt(width), dim=-1) @ vh
            standard_heads.append(qk * standard[index][:, h, None, None] if index in standard else qk)
            dense_heads.append(vv * dense_weights[index][:, h, None, None] if index in dense_weights else vv)
        if index >= cfg.dense_start_layer:
            dense = (hidden if dense is None else dense) + attention.out_proj(torch.cat(dense_heads, dim=-1))
        hidden = hidden + attention.out_proj(torch.cat(standard_heads, dim=-1))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))

    text = model.text_features()  # the learned prompts: AnomalyCLIP's, tested in test_anomalyclip.py
    patches = clip.visual_projection(vision.post_layernorm(dense[:, 1:]))
    patch_logits = F.normalize(patches, dim=-1) @ text.T / cfg.temperature
    image_logits = F.normalize(clip.visual_projection(hidden[:, 0]), dim=-1) @ text.T / cfg.temperature
    side = int(math.isqrt(patches.shape[1]))
    probabilities = patch_logits.softmax(-1).permute(0, 2, 1).reshape(batch, 2, side, side)
    probabilities = F.interpolate(probabilities, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    maps = (probabilities[:, 1] + 1 - probabilities[:, 0]) / 2
    scores = 0.5 * image_logits.softmax(-1)[:, 1] + 0.5 * maps.flatten(1).amax(1)
    return patch_logits, image_logits, maps, scores


@pytest.mark.parametrize("config", MODES, ids=MODE_IDS)
def test_random_head_weights_equal_a_per_head_computation(backbone, config):
    model = randomize_head_weights(build(backbone, gaussian_sigma=0.0, **config))
    x = pixels(3, seed=4)
    with torch.no_grad():
        out = model(x)
        patch_logits, image_logits, maps, scores = naive_headclip(model, x)
    torch.testing.assert_close(out.patch_logits[0], patch_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.image_logits, image_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.anomaly_maps, maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pred_scores, scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", MODES, ids=MODE_IDS)
def test_batch_of_one_equals_batch_of_four(backbone, config):
    model = randomize_head_weights(build(backbone, **config))
    x = pixels(4, seed=5)
    with torch.no_grad():
        batched = model(x)
        singles = [model(x[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(batched.anomaly_maps, torch.cat([s.anomaly_maps for s in singles]), rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.pred_scores, torch.cat([s.pred_scores for s in singles]), rtol=0, atol=1e-6)


def test_joint_score_is_the_default(backbone):
    model = randomize_head_weights(build(backbone))
    with torch.no_grad():
        out = model(pixels(3))
    global_scores = out.image_logits.softmax(-1)[:, 1]
    torch.testing.assert_close(out.pred_scores, (global_scores + out.anomaly_maps.flatten(1).amax(1)) / 2, rtol=0, atol=1e-6)
    model.config.image_score = "global"
    with torch.no_grad():
        torch.testing.assert_close(model(pixels(3)).pred_scores, global_scores, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- training
def _loss_and_gradients(model, x, y):
    loss = model(x, **y).loss
    trainable = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, trainable)


@pytest.mark.parametrize("config", MODES[::2], ids=MODE_IDS[::2])
def test_gradients_reach_the_head_weights_and_not_clip(backbone, config):
    model = build(backbone, **config).train()
    model(pixels(2), **targets(2)).loss.backward()
    assert all(p.grad is None for p in model.clip.parameters())
    assert not model.clip.training
    assert model.prompt_learner.context.grad.abs().sum() > 0 and model.prompt_learner.deep_tokens.grad.abs().sum() > 0
    if config["head_weight_mode"] == "static":
        assert (model.head_weights.delta.grad != 0).all()  # every layer x head of both tables
    else:
        generator = model.head_weights.generator
        assert (generator.bias.grad != 0).all() and (generator.weight.grad.abs().sum(dim=1) > 0).all()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5.24 renames it activation_checkpointing_enable
@pytest.mark.parametrize("config", MODES[::2], ids=MODE_IDS[::2])
def test_gradient_checkpointing_changes_no_value(backbone, config):
    model = randomize_head_weights(build(backbone, **config)).train()
    x, y = pixels(2, seed=6), targets(2)
    loss, gradients = _loss_and_gradients(model, x, y)
    model.gradient_checkpointing_enable()
    calls = []
    for layer in model.clip.vision_model.encoder.layers:
        checkpoint = layer._gradient_checkpointing_func

        def counted(function, *args, checkpoint=checkpoint, **kwargs):
            calls.append(args[1])  # the layer index
            return checkpoint(function, *args, **kwargs)

        layer._gradient_checkpointing_func = counted
    checkpointed_loss, checkpointed_gradients = _loss_and_gradients(model, x, y)
    assert calls == [1, 2, 3, 4]  # the prompt-free pass of the dynamic mode runs without gradients
    assert (loss - checkpointed_loss).abs() <= 1e-6
    for plain, checkpointed in zip(gradients, checkpointed_gradients, strict=True):
        assert plain.abs().max() > 0 and (plain - checkpointed).abs().max() <= 1e-6


# ---------------------------------------------------------------------------------------------- checkpoints, CLI
@pytest.mark.parametrize("config", MODES[::2], ids=MODE_IDS[::2])
def test_save_and_automodel_round_trip_holds_adapters_only(backbone, config, tmp_path):
    model = randomize_head_weights(build(backbone, **config))
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    head_keys = {"head_weights.delta"} if config["head_weight_mode"] == "static" else {
        "head_weights.generator.weight", "head_weights.generator.bias"}
    assert keys == {"prompt_learner.context", "prompt_learner.deep_tokens", *head_keys}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "zsad_headclip" and saved["head_weight_mode"] == config["head_weight_mode"]
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is HeadCLIPModel
    x = pixels(2, seed=7)
    with torch.no_grad():
        ours, theirs = model(x), loaded(x)
    assert torch.equal(ours.anomaly_maps, theirs.anomaly_maps) and torch.equal(ours.pred_scores, theirs.pred_scores)
    assert "HeadCLIP" in (tmp_path / "README.md").read_text()


def test_detect_and_evaluate_commands_run_a_headclip_checkpoint(backbone, tmp_path):
    model = randomize_head_weights(build(backbone, head_weight_mode="dynamic"))
    model.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(images / name)
    assert main(["detect", str(images), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        scores = {row["image"].rsplit("/", 1)[-1]: float(row["score"]) for row in csv.DictReader(handle)}
    processor = zsad.ZSADImageProcessor(image_size=SIZE)
    batch = torch.stack([processor.preprocess_image(Image.open(images / name).convert("RGB")) for name in ("a.png", "b.png")])
    with torch.no_grad():
        expected = model(batch).pred_scores.tolist()
    assert scores["a.png"] == pytest.approx(expected[0], abs=1e-6) and scores["b.png"] == pytest.approx(expected[1], abs=1e-6)

    make_synthetic_dataset(2, 2, size=SIZE, textures=["grid"], seed=0).save_to_disk(str(tmp_path / "grid"))
    assert main(["evaluate", str(tmp_path / "grid"), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "grid" / "metrics.json").read_text())
    assert 0.0 <= metrics["macro"]["pixel_auroc"] <= 1.0 and metrics["counts"]["texture_grid"]["images"] == 4
