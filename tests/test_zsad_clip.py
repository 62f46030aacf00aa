"""ZeroShotCLIP: the prompt ensemble, computed independently with CLIPModel.get_text_features."""

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
