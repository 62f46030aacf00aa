"""The shared pipeline's scoring options on every registered model: the joint anomaly score
(`image_score="joint"`, METHODS.md §4.2) against the global probability and the pooled map."""

import copy

import pytest
import torch

import zsad
from zsad.testing import save_tiny_backbone

SIZE = 32


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return str(save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip-pipeline"), hidden_size=16))


def _build(method, backbone, **config):
    torch.manual_seed(0)
    extra = {"class_names": ["widget"]} if zsad.MODEL_CLASSES[method].class_aware else {}
    return zsad.MODEL_CLASSES[method].from_backbone(backbone, image_size=SIZE, **extra, **config).eval()


@pytest.mark.parametrize("method", sorted(zsad.MODEL_CLASSES))
def test_joint_score_mixes_global_probability_and_pooled_map(method, backbone):
    pixels = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = _build(method, backbone, image_score="global")(pixels)  # HeadCLIP defaults to "joint"
        alphas = {alpha: _build(method, backbone, image_score="joint", joint_score_alpha=alpha)(pixels) for alpha in (0.0, 0.5, 1.0)}
        topk = _build(method, backbone, image_score="joint", joint_score_alpha=0.0, joint_score_pooling="topk_mean", joint_score_topk_fraction=0.1)(pixels)
    global_scores = reference.image_logits.softmax(dim=-1)[:, 1]
    pooled = reference.anomaly_maps.flatten(1).amax(dim=1)
    assert torch.allclose(reference.pred_scores, global_scores)
    assert torch.allclose(alphas[1.0].pred_scores, global_scores, atol=1e-6)
    assert torch.allclose(alphas[0.0].pred_scores, pooled, atol=1e-6)
    assert torch.allclose(alphas[0.5].pred_scores, (global_scores + pooled) / 2, atol=1e-6)
    top = reference.anomaly_maps.flatten(1).sort(dim=1, descending=True).values[:, : round(0.1 * SIZE * SIZE)]
    assert torch.allclose(topk.pred_scores, top.mean(dim=1), atol=1e-6)
    for output in (*alphas.values(), topk):  # the score option changes nothing else
        assert torch.equal(output.anomaly_maps, reference.anomaly_maps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_score": "mean"}, "image_score"),
        ({"joint_score_alpha": 1.5}, "joint_score_alpha"),
        ({"joint_score_pooling": "median"}, "joint_score_pooling"),
        ({"joint_score_topk_fraction": 0.0}, "joint_score_topk_fraction"),
    ],
)
def test_invalid_score_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zsad.AnomalyCLIPConfig(**kwargs)


@pytest.mark.parametrize("method", sorted(zsad.MODEL_CLASSES))
def test_bfloat16_weights_and_autocast_give_float32_maps_close_to_float32(method, backbone):
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    model = _build(method, backbone)
    with torch.no_grad():
        reference = model(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(pixels)
        half = model.to(torch.bfloat16)(pixels.bfloat16())
    for output in (autocast, half):
        # similarities, softmax, maps and blur run in float32 whatever the weights' dtype
        assert output.anomaly_maps.dtype == torch.float32 and output.pred_scores.dtype == torch.float32
        assert torch.isfinite(output.anomaly_maps).all() and torch.isfinite(output.pred_scores).all()
        assert (output.anomaly_maps - reference.anomaly_maps).abs().max() < 5e-2
        assert (output.pred_scores - reference.pred_scores).abs().max() < 1e-1  # AdaCLIP: bf16 error x 100


# Methods whose text embeddings do not depend on the image, so `text_features()` caches them (DA-CLIP
# once its domain bank has no text layers; AdaCLIP's prompts are always per image).
CACHED_TEXT = {"anomalyclip": {}, "crane": {}, "headclip": {}, "winclip": {}, "zsad_clip": {}, "daclip": {"deep_prompt_layers": []}}


def test_cached_text_cases_cover_every_method_but_adaclip():
    assert set(CACHED_TEXT) == set(zsad.MODEL_CLASSES) - {"adaclip"}


@pytest.mark.parametrize("method", sorted(CACHED_TEXT))
def test_cached_text_features_are_float32_for_bfloat16_weights_and_under_autocast(method, backbone):
    """The text cache is computed in float32 from the model's (bf16-rounded) weights, outside autocast."""
    model = _build(method, backbone, **CACHED_TEXT[method])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = model.text_features()
            bf16_matmuls = model.compute_text_features()
        assert torch.equal(under_autocast, model.compute_text_features())
        assert (bf16_matmuls.float() - under_autocast).abs().max() > 1e-4  # what autocast would have given

        half = model.to(torch.bfloat16)
        cached = half.text_features()
        bf16_activations = half.compute_text_features()
        rounded_in_float32 = copy.deepcopy(half).float().compute_text_features()
    assert cached.dtype == torch.float32
    assert torch.equal(cached, rounded_in_float32)
    assert (bf16_activations.float() - rounded_in_float32).abs().max() > 1e-4
    assert next(half.clip.text_model.parameters()).dtype == torch.bfloat16  # weights stay as they were
