"""ZeroShotCLIP: the prompt ensemble, computed independently with CLIPModel.get_text_features."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPModel

from zsad import ZeroShotCLIPModel
from zsad.models.zsad_clip.configuration_zsad_clip import ANOMALY_STATES, NORMAL_STATES, TEMPLATES


def test_ensemble_size_and_text_features(tiny_backbone):
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    assert len(NORMAL_STATES) == 7 and len(ANOMALY_STATES) == 5 and len(TEMPLATES) == 35
    assert len(model.config.normal_token_ids) == 245 and len(model.config.anomaly_token_ids) == 175
    assert model.num_trainable_parameters() == 0
    clip = CLIPModel.from_pretrained(tiny_backbone).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    expected = []
    for states in (NORMAL_STATES, ANOMALY_STATES):
        sentences = [template.format(state.format("object")) for state in states for template in TEMPLATES]
        batch = tokenizer(sentences, padding=True, return_tensors="pt")
        with torch.no_grad():
            features = F.normalize(clip.get_text_features(**batch).pooler_output, dim=-1)
        expected.append(F.normalize(features.mean(0), dim=-1))
    with torch.no_grad():
        ours = model.text_features()
    assert (ours - torch.stack(expected)).abs().max() < 1e-5


def test_scores_use_the_global_embedding(tiny_backbone):
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = model(pixels)
        features = model.encode_image(pixels)
        logits = F.normalize(features.global_embeds, dim=-1) @ model.text_features().t() / 0.07
    assert torch.allclose(out.pred_scores, logits.softmax(-1)[:, 1])
    assert out.loss is None and out.anomaly_maps.shape == (2, 28, 28)


def test_zsad_evaluate_prompts_each_category_with_its_own_name(tiny_backbone, tmp_path):
    """On a two-category dataset every image is scored against its own category's text ("texture grid",
    "texture dots"), two different embeddings, each equal to the ensemble of that name computed here."""
    from zsad.data import make_synthetic_dataset
    from zsad.evaluation import evaluate_datasets

    make_synthetic_dataset(2, 2, size=28, textures=["grid", "dots"], seed=0).save_to_disk(str(tmp_path / "data"))
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    used = []
    original = model.prompt_text_features

    def spy(features, categories=None):
        text = original(features, categories)
        used.append((list(categories), text))
        return text

    model.prompt_text_features = spy
    evaluate_datasets(model, [str(tmp_path / "data")], output_dir=tmp_path / "eval", log=lambda *_: None)
    names = sorted({name for categories, _ in used for name in categories})
    assert names == ["texture_dots", "texture_grid"] and model.config.class_names == names
    clip = CLIPModel.from_pretrained(tiny_backbone).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)

    def ensemble(name):
        groups = []
        for states in (NORMAL_STATES, ANOMALY_STATES):
            batch = tokenizer([t.format(s.format(name)) for s in states for t in TEMPLATES], padding=True, return_tensors="pt")
            with torch.no_grad():
                groups.append(F.normalize(F.normalize(clip.get_text_features(**batch).pooler_output, dim=-1).mean(0), dim=-1))
        return torch.stack(groups)

    expected = {"texture_dots": ensemble("texture dots"), "texture_grid": ensemble("texture grid")}
    assert (expected["texture_dots"] - expected["texture_grid"]).abs().max() > 1e-3  # two different embeddings
    for categories, text in used:
        assert text.shape == (len(categories), 2, expected["texture_dots"].shape[-1])
        for category, row in zip(categories, text):
            assert (row - expected[category]).abs().max() < 1e-5


def test_detect_class_name_and_the_pipelines_class_name_prompt_with_it(tiny_backbone, tmp_path, capsys):
    import csv

    import numpy as np
    from PIL import Image
    from transformers import pipeline

    from zsad import ZSADImageProcessor
    from zsad.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(images / f"{i}.png")
    argv = ["detect", str(images), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", "28", "--quiet"]
    assert main([*argv, "--class-name", "metal_nut", "--out", str(tmp_path / "named")]) == 0
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    scores = {}
    for run in ("named", "plain"):
        with open(tmp_path / run / "scores.csv", newline="") as handle:
            scores[run] = [float(row["score"]) for row in csv.DictReader(handle)]
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    pixels = ZSADImageProcessor(image_size=28)([Image.open(images / f"{i}.png") for i in range(2)])["pixel_values"]
    with torch.no_grad():
        named = model(pixels, categories=["metal_nut", "metal_nut"]).pred_scores
    assert scores["named"] == pytest.approx(named.tolist(), abs=1e-6) and scores["named"] != scores["plain"]
    detector = pipeline("zero-shot-anomaly-detection", model=model)
    assert detector(str(images / "0.png"), class_name="metal_nut")["score"] == pytest.approx(named[0].item(), abs=1e-6)

    from zsad import AnomalyCLIPModel

    AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).save_pretrained(tmp_path / "anomalyclip")
    capsys.readouterr()
    assert main(["detect", str(images), "--model", str(tmp_path / "anomalyclip"), "--class-name", "bottle",
                 "--out", str(tmp_path / "agnostic"), "--quiet"]) == 2
    assert "object-agnostic prompts" in capsys.readouterr().err
