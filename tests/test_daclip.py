"""DA-CLIP (METHODS.md §6.2, our design): parameter budget, reduction to AnomalyCLIP, router and DAKA
against naive code written here, routing distributions, auxiliary losses, gradients, activation
checkpointing, batch invariance, checkpoints, optimiser groups, the §6.2.4 multi-layer read-out."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModel

import zsad
from zsad import AnomalyCLIPModel, DACLIPConfig, DACLIPModel
from zsad.testing import tiny_clip_config
from zsad.training import build_optimizer

SIZE = 28


def _acting_daclip(tiny_backbone, seed=0, **config_kwargs):
    """DA-CLIP on the 4-layer backbone with LoRA B randomised so that the experts act (an untrained B = 0
    makes DAKA the identity)."""
    torch.manual_seed(seed)
    model = DACLIPModel.from_backbone(tiny_backbone, image_size=SIZE, **config_kwargs).eval()
    with torch.no_grad():
        for layer in model.daka.experts:
            layer.lora_B.normal_(std=0.5)
    return model


@pytest.fixture(scope="module")
def daclip(tiny_backbone):
    """Default DA-CLIP (visual prompts at layer 1, DAKA at 2-4), experts acting."""
    return _acting_daclip(tiny_backbone)


def _pixels(batch, seed=1):
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _masks(batch):
    masks = torch.zeros(batch, SIZE, SIZE)
    masks[0, 4:14, 6:20] = 1
    return masks


def test_vit_l14_336_trainable_parameters_on_meta_device():
    with torch.device("meta"):
        model = DACLIPModel(DACLIPConfig())
    config = model.config
    assert (config.visual_prompt_layers, config.daka_layers) == ([1, 2, 3, 4], [6, 12, 18, 24])
    assert config.deep_prompt_layers == list(range(2, 10)) and config.feature_layers == [24]
    counts = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            group = name.split(".")[-1] if name.startswith("daka.") else name
            counts[group] = counts.get(group, 0) + parameter.numel()
    lora = counts.pop("lora_A") + counts.pop("lora_B")
    gates = counts.pop("weight") + counts.pop("bias")
    assert counts == {
        "domain_prompts.text_tokens": 98_304,  # 4 domains x 8 text layers x 4 tokens x 768
        "prompt_learner.context": 18_432,  # shared 12 + 12 context tokens
        "domain_prompts.visual_tokens": 65_536,  # 4 x 4 vision layers x 4 tokens x 1024
        "domain_prompts.keys": 3_072,  # 4 x 768
        "router.projection.weight": 589_824,
        "router.projection.bias": 768,  # W_r + bias: 590,592
    }
    assert lora == 262_144 == 4 * 4 * (8 * 1024 + 1024 * 8)
    assert gates == 32_784 == 4 * (2048 * 4 + 4)
    assert model.num_trainable_parameters() == 1_070_864
    assert not any(p.requires_grad for p in model.clip.parameters())


@pytest.mark.parametrize(
    ("vision_layers", "visual", "daka", "projected"),
    [(4, [1], [2, 3, 4], [2, 3]), (12, [1, 2], [3, 6, 9, 12], [3, 6, 9]), (24, [1, 2, 3, 4], [6, 12, 18, 24], [6, 12, 18])],
)
def test_depth_relative_defaults(vision_layers, visual, daka, projected):
    config = DACLIPConfig(clip_config=tiny_clip_config(vision_layers=vision_layers))
    assert (config.visual_prompt_layers, config.daka_layers) == (visual, daka)
    assert config.projected_daka_layers == []  # the §6.2.4 read-out ablation is off by default
    config = DACLIPConfig(clip_config=tiny_clip_config(vision_layers=vision_layers), project_daka_layers=True)
    assert config.projected_daka_layers == projected  # every DAKA layer but the final feature layer


def test_ablation_switches_shape_the_adapters():
    with torch.device("meta"):
        model = DACLIPModel(DACLIPConfig(visual_prompt_layers=[], daka_layers=[]))
    assert model.domain_prompts.visual_tokens is None and len(model.daka.experts) == 0
    assert model.num_trainable_parameters() == 1_070_864 - 65_536 - 262_144 - 32_784
    with torch.device("meta"):
        prompts_off = DACLIPModel(DACLIPConfig(visual_prompt_layers=[]))
    # Without visual prompts the token gates are conditioned on the image router's weights instead.
    assert prompts_off.daka.experts[0].gate.in_features == 1024 + 4
    with torch.device("meta"):
        image_routed = DACLIPModel(DACLIPConfig(daka_routing="image"))
        shared = DACLIPModel(DACLIPConfig(per_domain_prompts=False))
    assert image_routed.daka.experts[0].gate is None
    assert image_routed.num_trainable_parameters() == 1_070_864 - 32_784
    assert shared.domain_prompts.text_tokens.shape[0] == shared.domain_prompts.visual_tokens.shape[0] == 1
    assert shared.num_trainable_parameters() == 1_070_864 - 3 * (98_304 + 65_536) // 4


def test_image_level_routing_mixes_every_token_with_the_router_weights(tiny_backbone):
    model = _acting_daclip(tiny_backbone, seed=4, daka_routing="image")
    with torch.no_grad():
        pixels = _pixels(2)
        features = model.image_features(pixels)
        router_probs = features.extras["router_probs"]
        combined = torch.einsum("be,e...->b...", router_probs, model.domain_prompts.visual_tokens)

        def naive(layer):
            def apply(dense):
                out = dense.clone()
                for b in range(dense.shape[0]):
                    for e in range(router_probs.shape[1]):
                        update = dense[b, 1:] @ layer.lora_A[e].t() @ layer.lora_B[e].t()
                        out[b, 1:] = out[b, 1:] + router_probs[b, e] * 0.1 * 2.0 * update
                return out

            return apply

        reference = model.encode_image(
            pixels,
            visual_prompts={1: combined[:, 0]},
            dense_adapters={index: naive(layer) for index, layer in zip(model.config.daka_layers, model.daka.experts)},
        )
    assert features.extras["token_gates"] == {}
    assert (features.patch_embeds[0] - reference.patch_embeds[0]).abs().max() <= 1e-5


def test_shared_prompts_are_the_same_for_every_image(tiny_backbone):
    torch.manual_seed(5)
    model = DACLIPModel.from_backbone(tiny_backbone, image_size=SIZE, per_domain_prompts=False).eval()
    with torch.no_grad():
        out = model(_pixels(3))
        text = model.compute_text_features(out.router_probs)
    assert text.shape[0] == 3 and (text - text[:1]).abs().max() <= 1e-6
    assert out.aux_losses["diversity"] == 0 and torch.isfinite(out.aux_losses["load_balance"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k_experts": 5}, "top_k_experts must be within 1..num_experts"),
        ({"token_top_k": 0}, "token_top_k must be within 1..num_experts"),
        ({"num_experts": 0}, "num_experts"),
        ({"router_temperature": 0.0}, "router_temperature"),
        ({"visual_prompt_layers": [5]}, "visual_prompt_layers must be within 1..4"),
        ({"daka_layers": [1]}, "daka_layers must be within the dense stream, 2..4"),
        ({"dense_attention": None, "daka_layers": [3]}, "need dense_attention"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"daka_mix": -1.0}, "daka_mix"),
        ({"daka_routing": "patch"}, "daka_routing"),
        ({"project_daka_layers": "yes"}, "config field project_daka_layers must be bool; got 'yes'"),
        ({"project_daka_layers": True, "daka_layers": [4]}, r"project_daka_layers .* daka_layers \[4\] has none outside"),
        ({"project_daka_layers": True, "daka_layers": []}, "project_daka_layers reads out the DAKA layers"),
    ],
)
def test_invalid_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DACLIPConfig(clip_config=tiny_clip_config(vision_layers=4), **kwargs)


def _single_expert_pair(tiny_backbone, **daclip_kwargs):
    torch.manual_seed(3)
    anomalyclip = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=SIZE).eval()
    daclip = DACLIPModel.from_backbone(
        tiny_backbone, image_size=SIZE, num_experts=1, top_k_experts=1, token_top_k=1, visual_prompt_layers=[],
        image_score="global", **daclip_kwargs  # AnomalyCLIP's score (DA-CLIP's default is the joint score)
    ).eval()
    with torch.no_grad():
        daclip.prompt_learner.context.copy_(anomalyclip.prompt_learner.context)
        daclip.domain_prompts.text_tokens[0].copy_(anomalyclip.prompt_learner.deep_tokens)
    return anomalyclip, daclip


@pytest.mark.parametrize("daka_layers", [[], None])  # None: the default layers, with every LoRA B = 0
def test_single_expert_without_pathways_is_anomalyclip(tiny_backbone, daka_layers):
    anomalyclip, daclip = _single_expert_pair(tiny_backbone, daka_layers=daka_layers)
    assert len(daclip.daka.experts) == (0 if daka_layers == [] else 3)
    pixels, masks = _pixels(3), _masks(3)
    with torch.no_grad():
        expected = anomalyclip(pixels, masks=masks)
        got = daclip(pixels, masks=masks)
    assert (got.anomaly_maps - expected.anomaly_maps).abs().max() <= 1e-6
    assert (got.pred_scores - expected.pred_scores).abs().max() <= 1e-6
    assert torch.equal(got.router_probs, torch.ones(3, 1))
    assert got.aux_losses["load_balance"] == 0 and got.aux_losses["diversity"] == 0
    assert (got.loss - expected.loss).abs() <= 1e-5
    if daka_layers is None:  # the experts do act once B leaves zero
        with torch.no_grad():
            daclip.daka.experts[-1].lora_B.normal_(std=1.0)
            moved = daclip(pixels)
        assert (moved.anomaly_maps - expected.anomaly_maps).abs().max() > 1e-3


def naive_router(model, pixels):
    """r = top-k renormalised softmax_e(cos(W_r e0_hat + b, k_e) / tau), one image and one expert at a time."""
    cfg = model.config
    weight, bias = model.router.projection.weight, model.router.projection.bias
    embeds = model.prompt_free_embeds(pixels)
    rows = []
    for e0 in embeds:
        query = weight @ (e0 / e0.norm()) + bias
        logits = [
            float(query @ key) / (float(query.norm()) * float(key.norm())) / cfg.router_temperature
            for key in model.domain_prompts.keys
        ]
        exps = [math.exp(value - max(logits)) for value in logits]
        probabilities = [value / sum(exps) for value in exps]
        chosen = sorted(range(len(probabilities)), key=lambda e: -probabilities[e])[: cfg.top_k_experts]
        total = sum(probabilities[e] for e in chosen)
        rows.append([probabilities[e] / total if e in chosen else 0.0 for e in range(len(probabilities))])
    return torch.tensor(rows)


def naive_daka(model, router_probs, num_patches):
    """DAKA as written in §6.2.3 with explicit loops over tokens and experts (no zsad adapter code); the gate
    sees [x / rms(x) ; s / rms(s)] with `gate_condition_norm` (issue 24)."""
    bank = model.domain_prompts.visual_tokens
    condition = sum(router_probs[:, e, None, None, None] * bank[e] for e in range(bank.shape[0])).mean(dim=(1, 2))

    def unit_rms(v):
        return v / torch.sqrt((v * v).sum() / v.numel() + 1e-6) if model.config.gate_condition_norm else v

    def make(layer):
        def apply(dense):
            out = dense.clone()
            for b in range(dense.shape[0]):
                for n in range(1, 1 + num_patches):
                    x = dense[b, n]
                    logits = layer.gate.weight @ torch.cat([unit_rms(x), unit_rms(condition[b])]) + layer.gate.bias
                    probabilities = torch.softmax(logits, dim=0)
                    chosen = probabilities.topk(model.config.token_top_k).indices.tolist()
                    total = sum(probabilities[e] for e in chosen)
                    residual = torch.zeros_like(x)
                    for e in chosen:
                        residual = residual + probabilities[e] / total * (layer.lora_B[e] @ (layer.lora_A[e] @ x))
                    out[b, n] = x + model.config.daka_mix * (model.config.lora_alpha / model.config.lora_rank) * residual
            return out

        return apply

    return {index: make(layer) for index, layer in zip(model.config.daka_layers, model.daka.experts)}


def test_router_and_daka_equal_naive_references(daclip):
    pixels = _pixels(2)
    with torch.no_grad():
        features = daclip.image_features(pixels)
        router_probs = naive_router(daclip, pixels)
        combined = torch.einsum("be,e...->b...", router_probs, daclip.domain_prompts.visual_tokens)
        reference = daclip.encode_image(
            pixels,
            visual_prompts={layer: combined[:, i] for i, layer in enumerate(daclip.config.visual_prompt_layers)},
            dense_adapters=naive_daka(daclip, router_probs, num_patches=49),
        )
        plain = daclip.encode_image(pixels, visual_prompts={1: combined[:, 0]})
    assert (features.extras["router_probs"] - router_probs).abs().max() <= 1e-5
    assert (features.patch_embeds[0] - reference.patch_embeds[0]).abs().max() <= 1e-5
    assert (features.global_embeds - reference.global_embeds).abs().max() <= 1e-5
    assert (features.patch_embeds[0] - plain.patch_embeds[0]).abs().max() > 1e-3  # DAKA did act


def test_router_probs_and_token_gates_are_top_k_distributions(daclip):
    with torch.no_grad():
        out = daclip(_pixels(4))
        features = daclip.image_features(_pixels(4))
    assert out.router_probs.shape == (4, 4)
    torch.testing.assert_close(out.router_probs.sum(dim=1), torch.ones(4))
    assert ((out.router_probs > 0).sum(dim=1) == 2).all()
    assert sorted(features.extras["token_gates"]) == [2, 3, 4]
    for softmax, gates in features.extras["token_gates"].values():
        assert gates.shape == softmax.shape == (4, 49, 4)
        torch.testing.assert_close(gates.sum(dim=-1), torch.ones(4, 49))
        assert ((gates > 0).sum(dim=-1) == 2).all()
        torch.testing.assert_close(softmax.sum(dim=-1), torch.ones(4, 49))


def _squared_cv(probabilities):
    importance = probabilities.reshape(-1, probabilities.shape[-1]).sum(dim=0)
    return ((importance - importance.mean()) ** 2).mean() / importance.mean() ** 2


def test_auxiliary_losses_match_their_definitions_and_enter_the_loss(daclip):
    pixels, masks = _pixels(3), _masks(3)
    out = daclip(pixels, masks=masks)
    features = daclip.image_features(pixels)
    extras = features.extras
    gates = [softmax for softmax, _ in extras["token_gates"].values()]
    load_balance = _squared_cv(extras["router_softmax"]) + sum(_squared_cv(g) for g in gates) / len(gates)
    bank = daclip.domain_prompts
    vectors = F.normalize(torch.cat([bank.text_tokens.flatten(1), bank.visual_tokens.flatten(1)], dim=1), dim=-1)
    gram = vectors @ vectors.t()
    target = torch.full((4, 4), -1 / 3).fill_diagonal_(1.0)
    diversity = ((gram - target) ** 2).sum() / 12  # the 12 off-diagonal entries (the diagonal is 1 - 1 = 0)
    assert torch.allclose(out.aux_losses["load_balance"], load_balance, atol=1e-6)
    assert torch.allclose(out.aux_losses["diversity"], diversity, atol=1e-6)
    for value in out.aux_losses.values():
        assert torch.isfinite(value) and value > 0 and value.requires_grad
    total = out.loss.detach()
    with torch.no_grad():
        daclip.config.load_balance_weight, daclip.config.diversity_weight = 0.0, 0.0
        try:
            base = daclip(pixels, masks=masks).loss
        finally:
            daclip.config.load_balance_weight, daclip.config.diversity_weight = 0.01, 0.01
    expected = base + 0.01 * (out.aux_losses["load_balance"] + out.aux_losses["diversity"])
    assert torch.allclose(total, expected, atol=1e-5)


def _loss_and_gradients(model, pixels, masks):
    model.zero_grad()
    loss = model(pixels, masks=masks).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_every_adapter_tensor_gets_a_gradient_and_checkpointing_changes_nothing(daclip):
    pixels, masks = _pixels(4, seed=5), _masks(4)
    daclip.train()
    try:
        loss, gradients = _loss_and_gradients(daclip, pixels, masks)
        assert all(p.grad is None for p in daclip.clip.parameters())
        assert len(gradients) == 4 + 4 * 3 + 2  # context, bank (3), router (2), 3 DAKA layers x 4
        for name, gradient in gradients.items():
            assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0, name

        calls = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed it activation_checkpointing
            daclip.gradient_checkpointing_enable()
        layers = daclip.clip.vision_model.encoder.layers
        checkpoint = layers[0]._gradient_checkpointing_func
        for layer in layers:
            layer._gradient_checkpointing_func = lambda function, *args, **kwargs: calls.append(1) or checkpoint(function, *args, **kwargs)
        checkpointed_loss, checkpointed = _loss_and_gradients(daclip, pixels, masks)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            daclip.gradient_checkpointing_disable()
        daclip.eval().zero_grad()
    assert len(calls) == len(layers)  # the prompt-free pass runs without gradients: no checkpoint
    assert (loss - checkpointed_loss).abs() <= 1e-6
    for name, gradient in gradients.items():
        assert (gradient - checkpointed[name]).abs().max() <= 1e-6, name


def test_batch_of_one_equals_batch_of_four(daclip):
    pixels = _pixels(4, seed=7)
    with torch.no_grad():
        batched = daclip(pixels)
        singles = [daclip(pixels[i : i + 1]) for i in range(4)]
    for field in ("anomaly_maps", "pred_scores", "router_probs"):
        single = torch.cat([getattr(s, field) for s in singles])
        assert (getattr(batched, field) - single).abs().max() <= 1e-5, field


@pytest.mark.parametrize("project_daka_layers", [False, True])
def test_save_and_auto_load_are_identical_and_hold_adapters_only(tiny_backbone, tmp_path, project_daka_layers):
    model = _acting_daclip(tiny_backbone, project_daka_layers=project_daka_layers)
    with torch.no_grad():
        for parameter in model.daka_projections.parameters():  # away from their init
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert keys and not any(key.startswith("clip.") for key in keys)
    assert keys == set(model.adapter_state_dict())
    projection_keys = {f"daka_projections.patch.{i}.{kind}" for i in range(2) for kind in ("weight", "bias")}
    assert {key for key in keys if key.startswith("daka_projections.")} == (projection_keys if project_daka_layers else set())
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is DACLIPModel and loaded.config.model_type == "zsad_daclip"
    assert loaded.config.project_daka_layers is project_daka_layers
    loaded_state = loaded.state_dict()
    for name, tensor in model.adapter_state_dict().items():
        assert torch.equal(loaded_state[name], tensor), name
    pixels = _pixels(2, seed=9)
    with torch.no_grad():
        before, after = model(pixels), loaded(pixels)
    assert torch.equal(before.anomaly_maps, after.anomaly_maps) and torch.equal(before.pred_scores, after.pred_scores)
    assert torch.equal(before.router_probs, after.router_probs)
    assert "DA-CLIP" in (tmp_path / "README.md").read_text() and "image-restoration" in (tmp_path / "README.md").read_text()


def test_optimizer_groups_use_the_two_learning_rates(daclip, tiny_backbone):
    groups = {g["name"]: g for g in build_optimizer(daclip).param_groups}
    assert {name: g["lr"] for name, g in groups.items()} == {"prompts": 1e-3, "experts": 1e-4}
    assert groups["prompts"]["betas"] == (0.5, 0.999)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == daclip.num_trainable_parameters()
    assert {id(p) for p in groups["experts"]["params"]} == {id(p) for p in (*daclip.daka.parameters(), *daclip.router.parameters())}
    scaled = {g["name"]: g["lr"] for g in build_optimizer(daclip, learning_rate=2e-3).param_groups}
    assert scaled == {"prompts": 2e-3, "experts": pytest.approx(2e-4)}
    single = build_optimizer(zsad.AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=SIZE)).param_groups
    assert [(g["name"], g["lr"]) for g in single] == [("adapters", 1e-3)]
    daclip.parameter_groups = lambda: {"prompts": [daclip.prompt_learner.context]}  # forgets the rest
    try:
        with pytest.raises(ValueError, match="every trainable parameter exactly once"):
            build_optimizer(daclip)
    finally:
        del daclip.parameter_groups


def test_zsad_detect_and_evaluate_run_a_daclip_checkpoint(daclip, tmp_path):
    from PIL import Image

    from zsad.cli import main
    from zsad.data import make_synthetic_dataset

    checkpoint = tmp_path / "daclip"
    daclip.save_pretrained(checkpoint)
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        Image.fromarray(torch.randint(0, 255, (30, 40, 3), dtype=torch.uint8).numpy()).save(images / f"{index}.png")
    assert main(["detect", str(images), "--model", str(checkpoint), "--out", str(tmp_path / "detect"), "--quiet"]) == 0
    scores = json.loads((tmp_path / "detect" / "scores.json").read_text())
    assert scores["image_size"] == SIZE and len(scores["results"]) == 2
    make_synthetic_dataset(2, 2, size=SIZE, textures=["grid"], seed=0).save_to_disk(str(tmp_path / "grid"))
    assert main(["evaluate", str(tmp_path / "grid"), "--model", str(checkpoint), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "grid" / "metrics.json").read_text())
    assert metrics["counts"]["texture_grid"]["images"] == 4 and 0.0 <= metrics["macro"]["pixel_auroc"] <= 1.0


# ---------------------------------------------------------------------- §6.2.4 multi-layer read-out ablation
@pytest.fixture
def daclip_readout(tiny_backbone):
    """DA-CLIP with `project_daka_layers`: the DAKA layers 2 and 3 through learned projections besides the
    final stream (layer 4); experts acting."""
    return _acting_daclip(tiny_backbone, project_daka_layers=True)


def test_vit_l14_read_out_projections_on_meta_device():
    with torch.device("meta"):
        model = DACLIPModel(DACLIPConfig(project_daka_layers=True))
    assert model.config.projected_daka_layers == [6, 12, 18]
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if name.startswith("daka_projections.")}
    assert shapes == {
        **{f"daka_projections.patch.{i}.weight": (768, 1024) for i in range(3)},
        **{f"daka_projections.patch.{i}.bias": (768,) for i in range(3)},
    }
    assert model.num_trainable_parameters() == 1_070_864 + 3 * (1024 * 768 + 768) == 3_432_464


def test_read_out_is_the_final_stream_only_by_default(daclip):
    """Off by default: no projection tensor, one map, the same tokens as the plain final-layer read-out."""
    assert daclip.config.project_daka_layers is False and daclip.config.projected_daka_layers == []
    assert not any(key.startswith("daka_projections.") for key in daclip.state_dict())
    pixels = _pixels(2)
    with torch.no_grad():
        out = daclip(pixels)
        features = daclip.image_features(pixels)
        combined = torch.einsum("be,e...->b...", features.extras["router_probs"], daclip.domain_prompts.visual_tokens)
        plain = daclip.encode_image(
            pixels,
            visual_prompts={1: combined[:, 0]},
            dense_adapters=daclip.daka.dense_adapters(combined.mean(dim=(1, 2)), 49, {}),
        )
    assert len(out.patch_logits) == len(features.patch_embeds) == 1
    assert torch.equal(features.patch_embeds[0], plain.patch_embeds[0])


def test_projected_maps_read_the_dense_tokens_after_daka(daclip_readout):
    model = daclip_readout
    pixels = _pixels(2)
    with torch.no_grad():
        out = model(pixels)
        features = model.image_features(pixels)
        router_probs = features.extras["router_probs"]
        combined = torch.einsum("be,e...->b...", router_probs, model.domain_prompts.visual_tokens)
        taps = {"feature_layers": [2, 3, 4], "visual_prompts": {1: combined[:, 0]}}
        adapted = model.encode_image(pixels, dense_adapters=naive_daka(model, router_probs, 49), project_patches=False, **taps)
        unadapted = model.encode_image(pixels, project_patches=False, **taps)
    assert len(out.patch_logits) == len(features.patch_embeds) == 3  # layers 2, 3, then the final stream
    for i in range(2):
        projection = model.daka_projections.patch[i]
        expected = adapted.patch_embeds[i] @ projection.weight.t() + projection.bias
        assert (features.patch_embeds[i] - expected).abs().max() <= 1e-5
        assert (features.patch_embeds[i] - projection(unadapted.patch_embeds[i])).abs().max() > 1e-3  # after DAKA
    final = model.clip.visual_projection(model.clip.vision_model.post_layernorm(adapted.patch_embeds[2]))
    assert (features.patch_embeds[2] - final).abs().max() <= 1e-5


def test_one_training_step_moves_the_projections_at_the_experts_rate(daclip_readout):
    model = daclip_readout
    optimizer = build_optimizer(model)
    groups = {g["name"]: g for g in optimizer.param_groups}
    projections = list(model.daka_projections.parameters())
    assert len(projections) == 4 and groups["experts"]["lr"] == 1e-4
    assert {id(p) for p in projections} <= {id(p) for p in groups["experts"]["params"]}
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == model.num_trainable_parameters()
    before = [p.detach().clone() for p in projections]
    model.train()
    try:
        optimizer.zero_grad()
        model(_pixels(4, seed=5), masks=_masks(4)).loss.backward()
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
        optimizer.step()
    finally:
        model.eval()
    for old, new in zip(before, projections):
        assert 0 < (new - old).abs().max() <= 1e-4 + 1e-7  # Adam: at most the learning rate per entry
