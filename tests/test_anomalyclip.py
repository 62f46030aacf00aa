"""AnomalyCLIP (METHODS.md §2): parameter budget, freezing, outputs, loss, batch invariance, config defaults."""

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

import zsad
from zsad import AnomalyCLIPConfig, AnomalyCLIPModel
from zsad.losses import dice_loss, focal_loss
from zsad.testing import tiny_clip_config


def test_vit_l14_336_trainable_parameters_on_meta_device():
    with torch.device("meta"):
        model = AnomalyCLIPModel(AnomalyCLIPConfig())
    assert model.config.clip_config.vision_config.num_hidden_layers == 24
    assert model.config.feature_layers == [24]
    assert model.config.dense_start_layer == 6
    assert model.config.deep_prompt_layers == list(range(2, 10))
    assert model.num_trainable_parameters() == 43_008 == 2 * 12 * 768 + 8 * 4 * 768
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt_learner.context", "prompt_learner.deep_tokens"}


@pytest.mark.parametrize(
    ("vision_layers", "text_layers", "features", "start", "deep"),
    [(4, 2, [4], 2, [2]), (12, 12, [12], 3, list(range(2, 10))), (24, 12, [24], 6, list(range(2, 10)))],
)
def test_depth_relative_defaults(vision_layers, text_layers, features, start, deep):
    config = AnomalyCLIPConfig(clip_config=tiny_clip_config(vision_layers=vision_layers, text_layers=text_layers))
    assert config.image_size == 112  # 28 px native: 4x its size, not 520 (the patch-4 multiple nearest 518)
    assert (config.feature_layers, config.dense_start_layer, config.deep_prompt_layers) == (features, start, deep)
    base = zsad.ZSADConfig(clip_config=tiny_clip_config(vision_layers=vision_layers))
    quarter = max(1, round(vision_layers / 4))
    assert base.feature_layers == sorted({quarter, round(vision_layers / 2), round(3 * vision_layers / 4), vision_layers})


@pytest.mark.parametrize(("patch", "native", "size"), [(14, 336, 518), (16, 224, 512), (32, 224, 512), (4, 28, 112),
                                                      (14, 56, 224), (16, 96, 384)])
def test_default_image_size_is_the_patch_multiple_nearest_518_at_most_4x_native(patch, native, size):
    """Real backbones (224/336 px) get the reference 518 (512 for /16 and /32); small ones 4x their size."""
    assert AnomalyCLIPConfig(clip_config=tiny_clip_config(patch_size=patch, image_size=native)).image_size == size


def test_explicit_layer_settings_win():
    config = AnomalyCLIPConfig(
        clip_config=tiny_clip_config(vision_layers=4), feature_layers=[3, 4], dense_start_layer=1, deep_prompt_layers=[1, 2]
    )
    assert (config.feature_layers, config.dense_start_layer, config.deep_prompt_layers) == ([3, 4], 1, [1, 2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_layers": [5]}, "feature_layers"),
        ({"dense_attention": "xx"}, "dense_attention"),
        ({"dense_start_layer": 0}, "dense_start_layer"),
        ({"pos_embed_interpolation": "nearest"}, "pos_embed_interpolation"),
        ({"image_size": 30}, "multiple of the patch size"),
        ({"deep_prompt_layers": [3]}, "deep_prompt_layers"),
    ],
)
def test_invalid_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnomalyCLIPConfig(clip_config=tiny_clip_config(vision_layers=4, text_layers=2), **kwargs)


def test_forward_shapes_scores_and_loss(tiny_anomalyclip):
    pixels = torch.randn(3, 3, 56, 56)
    masks = torch.zeros(3, 56, 56)
    masks[1, 10:20, 10:30] = 1
    with torch.no_grad():
        plain = tiny_anomalyclip(pixels)
        trained = tiny_anomalyclip(pixels, masks=masks, labels=torch.tensor([0, 1, 0]))
    assert plain.loss is None
    assert plain.anomaly_maps.shape == (3, 56, 56) and plain.pred_scores.shape == (3,)
    assert ((plain.pred_scores >= 0) & (plain.pred_scores <= 1)).all()
    assert ((plain.anomaly_maps >= 0) & (plain.anomaly_maps <= 1)).all()
    assert trained.loss.ndim == 0 and torch.isfinite(trained.loss)
    assert len(plain.patch_logits) == 1 and plain.patch_logits[0].shape == (3, 196, 2)


def test_loss_matches_its_definition(tiny_anomalyclip):
    """CE(global) + 4 * (focal + dice_a + dice_n) on the bilinearly upsampled (unsmoothed) probabilities."""
    pixels = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 56, 56)
    masks[0, 5:25, 30:50] = 1
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        out = tiny_anomalyclip(pixels, masks=masks, labels=labels)
        probs = out.patch_logits[0].softmax(-1).transpose(1, 2).reshape(2, 2, 14, 14)
        probs = F.interpolate(probs, size=(56, 56), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(out.image_logits, labels) + 4 * (
        focal_loss(probs, masks) + dice_loss(probs[:, 1], masks) + dice_loss(probs[:, 0], 1 - masks)
    )
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_labels_only_gives_the_image_loss(tiny_anomalyclip):
    pixels = torch.randn(2, 3, 56, 56)
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        out = tiny_anomalyclip(pixels, labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.image_logits, labels))


def test_bad_targets_are_clear_errors(tiny_anomalyclip):
    pixels = torch.randn(2, 3, 56, 56)
    with pytest.raises(ValueError, match="masks must have shape"):
        tiny_anomalyclip(pixels, masks=torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="labels must have 2 entries"):
        tiny_anomalyclip(pixels, labels=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        tiny_anomalyclip(torch.randn(1, 3, 54, 56))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_anomalyclip(torch.randn(3, 56, 56))


def test_gradients_reach_only_the_adapters(tiny_backbone):
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).train()
    masks = torch.zeros(2, 28, 28)
    masks[0, :10, :10] = 1
    out = model(torch.randn(2, 3, 28, 28), masks=masks)
    out.loss.backward()
    assert all(p.grad is None for p in model.clip.parameters())
    assert model.prompt_learner.context.grad.abs().sum() > 0
    assert model.prompt_learner.deep_tokens.grad.abs().sum() > 0
    assert not model.clip.training  # the frozen backbone stays in eval mode


def test_batch_of_one_equals_batch_of_four(tiny_anomalyclip):
    pixels = torch.randn(4, 3, 56, 56)
    with torch.no_grad():
        batched = tiny_anomalyclip(pixels)
        singles = [tiny_anomalyclip(pixels[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(batched.anomaly_maps, torch.cat([s.anomaly_maps for s in singles]), rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.pred_scores, torch.cat([s.pred_scores for s in singles]), rtol=0, atol=1e-6)


def test_text_features_are_cached_until_a_parameter_changes(tiny_backbone):
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    with torch.no_grad():
        first = model.text_features()
        assert model.text_features() is first
        model.prompt_learner.context.add_(0.5)
        second = model.text_features()
    assert second is not first and not torch.allclose(first, second)


def test_prompt_templates_and_context_slots(tiny_backbone):
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28)
    normal, anomaly = model.config.prompt_token_ids
    assert len(normal) == 1 + 12 + len("object.") + 1  # character-level tiny tokenizer
    assert len(anomaly) == 1 + 12 + len("damagedobject.") + 1
    assert model.prompt_tokens.eos_positions.tolist() == [len(normal) - 1, len(anomaly) - 1]
    token_embeds = model.clip.text_model.embeddings.token_embedding(model.prompt_tokens.input_ids)
    spliced = model.prompt_learner.prompt_embeddings(token_embeds)
    assert torch.equal(spliced[:, 1:13], model.prompt_learner.context)
    assert torch.equal(spliced[:, 0], token_embeds[:, 0]) and torch.equal(spliced[:, 13:], token_embeds[:, 13:])


def test_model_without_token_ids_explains_itself():
    model = AnomalyCLIPModel(AnomalyCLIPConfig(clip_config=tiny_clip_config(), image_size=28))
    with pytest.raises(ValueError, match="from_backbone"):
        model(torch.randn(1, 3, 28, 28))


def test_from_backbone_copies_the_clip_weights(tiny_backbone):
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28)
    reference = CLIPModel.from_pretrained(tiny_backbone)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.clip.state_dict()[name], tensor), name


def test_soft_masks_are_binarised_at_half_before_the_loss(tiny_anomalyclip):
    """Masks with fractional values (e.g. resized with interpolation) act as `mask > 0.5` in every loss
    term (METHODS.md §11.5): the loss equals the one of the binarised masks, computed here by hand."""
    pixels = torch.randn(2, 3, 56, 56)
    soft = torch.zeros(2, 56, 56)
    soft[0, 5:25, 30:50] = 0.7
    soft[0, 25:30, 30:50] = 0.3
    soft[1, 0:4, 0:4] = 0.5  # exactly 0.5 is normal: image 1 has no anomalous pixel
    binary = (soft > 0.5).float()
    with torch.no_grad():
        out = tiny_anomalyclip(pixels, masks=soft)
        probs = out.patch_logits[0].softmax(-1).transpose(1, 2).reshape(2, 2, 14, 14)
        probs = F.interpolate(probs, size=(56, 56), mode="bilinear", align_corners=False)
    labels = torch.tensor([1, 0])
    p_a, p_n = probs[:, 1], probs[:, 0]
    eps = 1e-5
    p_t = torch.where(binary == 1, p_a * (1 - eps) + p_n * eps, p_n * (1 - eps) + p_a * eps) + eps
    focal = (-((1 - p_t) ** 2) * p_t.log()).mean()

    def dice(prediction, target):
        inter = (prediction * target).flatten(1).sum(1)
        return (1 - (2 * inter + 1) / (prediction.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)).mean()

    expected = F.cross_entropy(out.image_logits, labels) + 4 * (focal + dice(p_a, binary) + dice(p_n, 1 - binary))
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_focal_loss_uses_fractional_targets_without_truncating():
    """A target of 0.7 weighs both classes (0.3 normal, 0.7 anomaly); it is never cast to the class 0."""
    torch.manual_seed(0)
    probs = torch.rand(2, 2, 5, 5).softmax(dim=1)
    target = torch.full((2, 5, 5), 0.7)
    eps = 1e-5
    weights = torch.stack([1 - target, target], dim=1).clamp(eps, 1 - eps)
    p_t = (weights * probs).sum(1) + eps
    expected = (-((1 - p_t) ** 2) * p_t.log()).mean()
    assert torch.allclose(focal_loss(probs, target), expected)
    assert not torch.allclose(focal_loss(probs, target), focal_loss(probs, torch.zeros(2, 5, 5)))
