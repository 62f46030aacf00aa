"""AdaCLIP (METHODS.md §3): parameter budget, prompts and features against naive code, HSF, batch
invariance, loss, training steps, checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModel, AutoTokenizer
from transformers.masking_utils import create_causal_mask

from zsad import AdaCLIPConfig, AdaCLIPModel
from zsad.clip.text import eos_positions
from zsad.losses import dice_loss, focal_loss
from zsad.models.adaclip.modeling_adaclip import hybrid_semantic_fusion, kmeans
from zsad.models.zsad_clip.configuration_zsad_clip import ANOMALY_STATES, NORMAL_STATES
from zsad.scoring import gaussian_blur
from zsad.testing import optimizer_steps, save_tiny_backbone, tiny_clip_config

SIZE = 56  # 14 x 14 = 196 patches: HSF clusters its full 100 top patches
TEMPLATES = ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
             "a cropped photo of the {}.")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """8 vision layers (taps 2/4/6/8) and 4 text layers, so the 4 prompted layers of both towers exist."""
    return str(save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip-adaclip"), vision_layers=8, text_layers=4))


@pytest.fixture(scope="module")
def model(backbone):
    torch.manual_seed(0)
    model = AdaCLIPModel.from_backbone(backbone, image_size=SIZE, class_names=["pcb"])
    with torch.no_grad():  # stand-in for training: prompts large enough to matter
        model.vision_prompts.static.normal_(std=0.5)
        model.text_prompts.static.normal_(std=0.5)
    return model.eval()


def test_vit_l14_336_trainable_parameters_on_meta_device():
    with torch.device("meta"):
        model = AdaCLIPModel(AdaCLIPConfig())
    cfg = model.config
    assert (cfg.feature_layers, cfg.prompt_depth, cfg.prompt_length, cfg.dense_attention) == ([6, 12, 18, 24], 4, 5, None)
    def size(module):
        return sum(p.numel() for p in module.parameters())

    counts = {
        "text static": model.text_prompts.static.numel(),
        "vision static": model.vision_prompts.static.numel(),
        "patch projections": size(model.projections.patch),
        "global projection": size(model.projections.image),
        "vision generator": size(model.vision_prompts.generator),
        "text generator": size(model.text_prompts.generator),
    }
    # METHODS.md §3.4, "Trainable parameters (computed from the code)".
    assert counts == {
        "text static": 15_360,
        "vision static": 20_480,
        "patch projections": 3_148_800,
        "global projection": 590_592,
        "vision generator": 3_937_280,
        "text generator": 2_952_960,
    }
    assert model.num_trainable_parameters() == 10_665_472 == sum(counts.values())
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_depth_relative_defaults_and_invalid_configs():
    config = AdaCLIPConfig(clip_config=tiny_clip_config(vision_layers=8, text_layers=2))
    assert (config.feature_layers, config.prompt_depth, config.temperature) == ([2, 4, 6, 8], 2, 0.01)
    for kwargs, message in [
        ({"prompt_depth": 3}, "prompt_depth"),
        ({"prompt_length": 0}, "prompt_length"),
        ({"hsf_weight": 1.5}, "hsf_weight"),
        ({"hsf_num_clusters": 0}, "hsf_num_clusters"),
    ]:
        with pytest.raises(ValueError, match=message):
            AdaCLIPConfig(clip_config=tiny_clip_config(vision_layers=8, text_layers=2), **kwargs)


def test_class_aware_prompt_ensemble(model, backbone):
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    normal = [t.format(s.format("pcb")) for s in NORMAL_STATES for t in TEMPLATES]
    anomaly = [t.format(s.format("pcb")) for s in ANOMALY_STATES for t in TEMPLATES]
    assert len(normal) == 28 and len(anomaly) == 20
    assert model.config.prompt_token_ids == [tokenizer(normal + anomaly)["input_ids"]]


def test_set_class_names_retargets_the_prompts(backbone):
    model = AdaCLIPModel.from_backbone(backbone, image_size=SIZE).eval()
    prompts = torch.randn(2, 4, 5, 32)
    with torch.no_grad():
        before = model.encode_prompt_ensemble(prompts, [0, 0])
        model.set_class_names(["candle", "pcb"])
        after = model.encode_prompt_ensemble(prompts, [0, 0])
    assert model.config.class_names == ["candle", "pcb"] and model.prompt_tokens.input_ids.shape[0] == 96
    assert not torch.allclose(before, after)
    fresh = AdaCLIPModel.from_backbone(backbone, image_size=SIZE, class_names=["candle", "pcb"])
    assert model.config.prompt_token_ids == fresh.config.prompt_token_ids
    with pytest.raises(ValueError, match="distinct"):
        model.set_class_names(["pcb", "pcb"])
    assert model.config.class_names == ["candle", "pcb"]  # unchanged by the failed call


def test_categories_select_each_images_prompts(model, backbone):
    """A two-class model scores each image with its own class's ensemble, as single-class models do."""
    pixels = torch.randn(2, 3, SIZE, SIZE)
    two = AdaCLIPModel.from_backbone(backbone, image_size=SIZE, class_names=["pcb", "candle"]).eval()
    two.load_state_dict(model.state_dict())
    candle = AdaCLIPModel.from_backbone(backbone, image_size=SIZE, class_names=["candle"]).eval()
    candle.load_state_dict(model.state_dict())
    with torch.no_grad():
        mixed = two(pixels, categories=["candle", "pcb"])
        expected = [candle(pixels[:1]), model(pixels[1:])]
    torch.testing.assert_close(mixed.pred_scores, torch.cat([e.pred_scores for e in expected]), rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed.anomaly_maps, torch.cat([e.anomaly_maps for e in expected]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="pass categories"):
        two(pixels)
    with pytest.raises(ValueError, match=r"no prompts for the categories \['screw'\]"):
        two(pixels, categories=["screw", "pcb"])
    with pytest.raises(ValueError, match="one class per image"):
        two(pixels, categories=["pcb"])


def naive_prompts(adapter, image_embeds):
    """S_j + [A_i e + b_i]_i with one explicit affine map per token."""
    depth, length, width = adapter.static.shape
    weight, bias = adapter.generator.weight, adapter.generator.bias
    dynamic = torch.stack(
        [F.linear(image_embeds, weight[i * width : (i + 1) * width], bias[i * width : (i + 1) * width]) for i in range(length)],
        dim=1,
    )
    return adapter.static.unsqueeze(0) + dynamic.unsqueeze(1)


def naive_text_features(model, text_prompts):
    """Per image, every sentence through HF's text layers with an explicit causal mask, positions 1..5
    overwritten before layers 2..4, pooled at the end-of-text token; group means re-normalised."""
    clip, cfg = model.clip, model.config
    text = clip.text_model
    ids = torch.tensor([t + [0] * (77 - len(t)) for t in cfg.prompt_token_ids[0]])
    features = []
    for prompts in text_prompts:
        hidden = text.embeddings(input_ids=ids)
        mask = create_causal_mask(text.config, hidden, None, None)  # config, embeds, attention mask, cache (renamed in 5.x: positional)
        for index, layer in enumerate(text.encoder.layers, start=1):
            if 2 <= index <= cfg.prompt_depth:
                hidden = hidden.clone()
                hidden[:, 1 : 1 + cfg.prompt_length] = prompts[index - 1]
            hidden = layer(hidden, mask, is_causal=True)
        hidden = text.final_layer_norm(hidden)
        pooled = clip.text_projection(hidden[torch.arange(len(ids)), eos_positions(ids, text.eos_token_id)])
        pooled = F.normalize(pooled, dim=-1)
        normal, anomaly = pooled[:28].mean(0), pooled[28:].mean(0)
        features.append(F.normalize(torch.stack([normal, anomaly]), dim=-1))
    return torch.stack(features)


def naive_vision(model, pixels):
    """Prompt-free embedding e, then HF layers with 5 prompt tokens appended before layer 1 and replacing
    the last 5 tokens before layers 2..4; raw taps -> per-layer Linear; pooled CLS -> Linear."""
    clip, cfg = model.clip, model.config
    vision = clip.vision_model
    image_embeds = clip.get_image_features(pixels, interpolate_pos_encoding=True).pooler_output
    prompts = naive_prompts(model.vision_prompts, image_embeds)
    hidden = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
    tokens = hidden.shape[1]
    taps = []
    for index, layer in enumerate(vision.encoder.layers, start=1):
        if index <= cfg.prompt_depth:
            hidden = torch.cat([hidden[:, :tokens], prompts[:, index - 1]], dim=1)
        hidden = layer(hidden, None)
        if index in cfg.feature_layers:
            taps.append(hidden[:, 1:tokens])
    patches = [F.normalize(proj(tap), dim=-1) for proj, tap in zip(model.projections.patch, taps)]
    pooled = clip.visual_projection(vision.post_layernorm(hidden[:, 0]))
    return image_embeds, patches, F.normalize(model.projections.image(pooled), dim=-1)


def test_prompted_encoders_equal_naive_computation(model):
    pixels = torch.randn(2, 3, SIZE, SIZE)
    model.config.hybrid_semantic_fusion = False
    try:
        with torch.no_grad():
            out = model(pixels)
            image_embeds, patches, global_features = naive_vision(model, pixels)
            text = naive_text_features(model, naive_prompts(model.text_prompts, image_embeds))
    finally:
        model.config.hybrid_semantic_fusion = True
    assert len(out.patch_logits) == 4
    for ours, layer in zip(out.patch_logits, patches):
        assert (ours - 100 * layer @ text.transpose(1, 2)).abs().max() < 1e-3  # logits x100
    expected_image = 100 * (global_features.unsqueeze(1) @ text.transpose(1, 2)).squeeze(1)
    assert (out.image_logits - expected_image).abs().max() < 1e-3
    # Test-time map: softmax of the layer-mean logits, bilinear with align_corners=True, sigma 4.
    mean_logits = torch.stack(out.patch_logits).mean(0).transpose(1, 2).reshape(2, 2, 14, 14)
    upsampled = F.interpolate(mean_logits, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    expected_maps = gaussian_blur(upsampled.softmax(1)[:, 1], 4.0)
    assert (out.anomaly_maps - expected_maps).abs().max() < 1e-5
    assert torch.allclose(out.pred_scores, out.image_logits.softmax(-1)[:, 1])


def test_text_prompts_differ_per_image(model):
    """Dynamic prompts make the text features image-dependent (the reason batch > 1 crashed upstream)."""
    embed_dim = model.config.clip_config.projection_dim
    with torch.no_grad():
        text = model.encode_prompt_ensemble(model.text_prompts(torch.randn(2, embed_dim)), [0, 0])
    assert text.shape == (2, 2, embed_dim) and not torch.allclose(text[0], text[1])


def test_kmeans_finds_separated_clusters_deterministically():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(7)
    points = centers[truth] + 0.3 * torch.randn(21, 2, generator=generator)
    order = torch.randperm(21, generator=generator)
    points, truth = points[order], truth[order]
    batch = torch.stack([points, points.flip(0) * 2])
    labels = kmeans(batch, 3, iterations=10)
    for image_labels, image_truth in zip(labels, (truth, truth.flip(0))):
        # the same partition, whatever the cluster numbering
        assert torch.equal(image_labels[:, None] == image_labels[None], image_truth[:, None] == image_truth[None])
    assert torch.equal(labels[1:], kmeans(batch[1:], 3, iterations=10))
    assert torch.equal(labels, kmeans(batch, 3, iterations=10))
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(batch, 22, iterations=1)


def test_kmeans_result_is_a_lloyd_fixed_point():
    points = torch.randn(2, 100, 12, generator=torch.Generator().manual_seed(1))
    labels = kmeans(points, 20, iterations=50)
    for image_points, image_labels in zip(points, labels):
        centers = torch.stack([image_points[image_labels == k].mean(0) for k in image_labels.unique()])
        nearest = torch.cdist(image_points, centers).argmin(1)
        assert torch.equal(image_labels.unique()[nearest], image_labels)


def test_hybrid_semantic_fusion_equals_its_definition():
    generator = torch.Generator().manual_seed(2)
    layers = [F.normalize(torch.randn(2, 30, 8, generator=generator), dim=-1) for _ in range(3)]
    probabilities = torch.rand(2, 30, generator=generator)
    global_features = F.normalize(torch.randn(2, 8, generator=generator), dim=-1)
    fused = hybrid_semantic_fusion(
        layers, probabilities, global_features, num_clusters=4, patches_per_cluster=5, weight=0.2, iterations=10
    )
    for b in range(2):
        top = probabilities[b].argsort(descending=True)[:20]
        tokens = torch.stack([layer[b, top] for layer in layers], dim=1)  # (20, layers, D)
        labels = kmeans(tokens.flatten(1)[None], 4, iterations=10)[0]
        centroids = [tokens[labels == k].mean(dim=(0, 1)) for k in labels.unique()]
        c = F.normalize(torch.stack(centroids).mean(0), dim=0)
        expected = F.normalize(0.2 * c + 0.8 * global_features[b], dim=0)
        assert torch.allclose(fused[b], expected, atol=1e-6)
    # fewer patches than clusters x 5: everything is clustered, with at most as many clusters as patches
    small = hybrid_semantic_fusion(
        [layer[:, :6] for layer in layers], probabilities[:, :6], global_features,
        num_clusters=20, patches_per_cluster=5, weight=0.2, iterations=3,
    )
    assert small.shape == (2, 8) and torch.isfinite(small).all()


def test_batch_of_one_equals_batch_of_four(model):
    pixels = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        batched = model(pixels)
        singles = [model(pixels[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(batched.anomaly_maps, torch.cat([s.anomaly_maps for s in singles]), rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.pred_scores, torch.cat([s.pred_scores for s in singles]), rtol=0, atol=1e-5)


def test_loss_matches_its_definition(model):
    """Focal(image probabilities) + sum over the 4 layers of focal + dice_a + dice_n (align_corners=True)."""
    pixels = torch.randn(2, 3, SIZE, SIZE)
    masks = torch.zeros(2, SIZE, SIZE)
    masks[0, 10:30, 20:50] = 1
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        out = model(pixels, masks=masks, labels=labels)
        image_only = model(pixels, labels=labels)
    expected = focal_loss(out.image_logits.softmax(-1)[:, :, None, None], labels[:, None, None])
    assert torch.allclose(image_only.loss, expected, atol=1e-6)
    for logits in out.patch_logits:
        grid = logits.transpose(1, 2).reshape(2, 2, 14, 14)
        probs = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True).softmax(1)
        expected = expected + focal_loss(probs, masks) + dice_loss(probs[:, 1], masks) + dice_loss(probs[:, 0], 1 - masks)
    assert torch.allclose(out.loss, expected, atol=1e-5)


def test_gradients_reach_the_adapters_only(backbone):
    model = AdaCLIPModel.from_backbone(backbone, image_size=28).train()
    masks = torch.zeros(2, 28, 28)
    masks[0, 4:16, 8:20] = 1
    model(torch.randn(2, 3, 28, 28), masks=masks).loss.backward()
    assert all(p.grad is None for p in model.clip.parameters())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # text prompts start at layer 2: the layer-1 static text tokens (kept for the reference's layout) get zeros
    assert torch.equal(model.text_prompts.static.grad[0], torch.zeros_like(model.text_prompts.static[0]))
    assert model.text_prompts.static.grad[1:].abs().sum() > 0


def test_adam_steps_decrease_the_loss(backbone):
    torch.manual_seed(0)
    model = AdaCLIPModel.from_backbone(backbone, image_size=28).train()
    pixels = torch.randn(4, 3, 28, 28)
    masks = torch.zeros(4, 28, 28)
    masks[1, 4:14, 6:20] = 1
    masks[3, 12:26, 2:10] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.5, 0.999))
    losses = optimizer_steps(model, optimizer, 6, pixel_values=pixels, masks=masks)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_adapter_only_round_trip(model, tmp_path):
    pixels = torch.randn(2, 3, SIZE, SIZE)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert keys and not any(k.startswith("clip.") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"vision_prompts", "text_prompts", "projections"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "zsad_adaclip" and config["class_names"] == ["pcb"]
    assert "AdaCLIP" in (tmp_path / "README.md").read_text()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is AdaCLIPModel
    with torch.no_grad():
        ours, theirs = model(pixels), loaded(pixels)
    assert torch.equal(ours.anomaly_maps, theirs.anomaly_maps) and torch.equal(ours.pred_scores, theirs.pred_scores)


def test_model_without_token_ids_explains_itself():
    model = AdaCLIPModel(AdaCLIPConfig(clip_config=tiny_clip_config(), image_size=28))
    with pytest.raises(ValueError, match="from_backbone"):
        model(torch.randn(1, 3, 28, 28))


def test_bad_visual_prompts_are_clear_errors(model):
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"within 1\.\.8"):
        model.encode_image(pixels, visual_prompts={9: torch.zeros(5, 32)})
    with pytest.raises(ValueError, match="same number of visual prompt tokens"):
        model.encode_image(pixels, visual_prompts={1: torch.zeros(5, 32), 2: torch.zeros(4, 32)})
    with pytest.raises(ValueError, match=r"visual prompts must have shape \(n, 32\)"):
        model.encode_image(pixels, visual_prompts={1: torch.zeros(5, 16)})


def test_backbone_runs_with_exact_gelu_in_both_towers(model, backbone, tmp_path):
    """The reference runs the OpenAI weights with exact GELU (METHODS.md §11.3): both towers of AdaCLIP's
    backbone equal a transformers CLIP built with hidden_act="gelu", not the backbone's own quick_gelu."""
    from transformers import CLIPConfig, CLIPModel

    own = CLIPModel.from_pretrained(backbone).eval()
    assert own.config.vision_config.hidden_act == own.config.text_config.hidden_act == "quick_gelu"
    exact_config = CLIPConfig.from_pretrained(backbone)
    exact_config.vision_config.hidden_act = exact_config.text_config.hidden_act = "gelu"
    exact = CLIPModel(exact_config).eval()
    exact.load_state_dict(own.state_dict())
    pixels = torch.randn(2, 3, 28, 28)
    ids = torch.tensor([model.config.prompt_token_ids[0][0]])
    with torch.no_grad():
        ours = (model.clip.get_image_features(pixel_values=pixels), model.clip.get_text_features(input_ids=ids))
        expected = (exact.get_image_features(pixel_values=pixels), exact.get_text_features(input_ids=ids))
        quick = (own.get_image_features(pixel_values=pixels), own.get_text_features(input_ids=ids))
        x = torch.randn(3, 32)
        mlp = model.clip.vision_model.encoder.layers[0].mlp
        assert torch.allclose(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))), atol=1e-6)
    for a, b, c in zip(ours, expected, quick):
        a, b, c = (t.pooler_output if hasattr(t, "pooler_output") else t for t in (a, b, c))
        assert (a - b).abs().max() < 1e-5 and (a - c).abs().max() > 1e-4
    model.save_pretrained(tmp_path)
    reloaded = AdaCLIPModel.from_pretrained(tmp_path)
    assert reloaded.config.backbone_hidden_act == "gelu"
    assert reloaded.clip.config.vision_config.hidden_act == reloaded.clip.config.text_config.hidden_act == "gelu"
    kept = AdaCLIPModel.from_backbone(backbone, image_size=SIZE, backbone_hidden_act=None)
    assert kept.clip.config.vision_config.hidden_act == "quick_gelu"
    with pytest.raises(ValueError, match="backbone_hidden_act"):
        AdaCLIPConfig(clip_config=tiny_clip_config(vision_layers=8, text_layers=4), backbone_hidden_act="swishy")


def test_hyphens_in_class_names_become_spaces(backbone):
    """The reference prompts "metal-nut" as "metal nut" (METHODS.md §11.4); the category name is kept."""
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AdaCLIPModel.from_backbone(backbone, image_size=SIZE, class_names=["metal-nut"])
    normal = [t.format(s.format("metal nut")) for s in NORMAL_STATES for t in TEMPLATES]
    anomaly = [t.format(s.format("metal nut")) for s in ANOMALY_STATES for t in TEMPLATES]
    assert model.config.class_names == ["metal-nut"]
    assert model.config.prompt_token_ids == [tokenizer(normal + anomaly)["input_ids"]]
    with torch.no_grad():
        assert model(torch.randn(1, 3, SIZE, SIZE), categories="metal-nut").pred_scores.shape == (1,)
