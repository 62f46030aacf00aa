"""WinCLIP / WinCLIP+: window embeddings vs. a naive masked-attention forward, harmonic aggregation by
loops, zero-shot and few-shot maps against independent computations, checkpoints and the CLI."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import zsad
from zsad import WinCLIPModel
from zsad.cli import main
from zsad.clip import windows
from zsad.clip.windows import harmonic_aggregation, window_embeddings, window_patch_indices


@pytest.fixture(scope="module")
def winclip(tiny_backbone):
    torch.manual_seed(0)
    return WinCLIPModel.from_backbone(tiny_backbone, gaussian_sigma=0.0).eval()


def _naive_window_embedding(clip, pixel_values, allowed_patches):
    """The class token's embedding when every token attends only to the class token and `allowed_patches`
    (an additive -inf mask over the full 1 + N sequence), written out with plain matmuls."""
    vision = clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    keep = torch.zeros(hidden.shape[1], dtype=torch.bool)
    keep[0] = True
    keep[[p + 1 for p in allowed_patches]] = True
    mask = torch.zeros(hidden.shape[1]).masked_fill(~keep, float("-inf"))
    for layer in vision.encoder.layers:
        attention = layer.self_attn
        heads, width = attention.num_heads, hidden.shape[-1]
        x = layer.layer_norm1(hidden)
        q, k, v = (proj(x).view(x.shape[0], -1, heads, width // heads).transpose(1, 2)
                   for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        weights = (q @ k.transpose(-1, -2) * attention.scale + mask).softmax(dim=-1)
        hidden = hidden + attention.out_proj((weights @ v).transpose(1, 2).reshape(x.shape[0], -1, width))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return clip.visual_projection(vision.post_layernorm(hidden[:, 0]))


def test_window_indices():
    indices = window_patch_indices((3, 4), 2)
    assert indices.tolist()[:4] == [[0, 1, 4, 5], [1, 2, 5, 6], [2, 3, 6, 7], [4, 5, 8, 9]]
    assert indices.shape == (6, 4)
    with pytest.raises(ValueError, match="window size 4 must be within 1..3 for a 3x4 patch grid"):
        window_patch_indices((3, 4), 4)


# One chunk for everything, and 35 tokens: chunks of 7 (2 x 2) or 3 (3 x 3) windows, some across two images.
@pytest.mark.parametrize("chunk_tokens", [windows.CHUNK_TOKENS, 35])
def test_window_embeddings_equal_masked_attention_per_window(winclip, monkeypatch, chunk_tokens):
    monkeypatch.setattr(windows, "CHUNK_TOKENS", chunk_tokens)
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 28, 28)  # 7 x 7 patches
    with torch.no_grad():
        (small, mid), grid = window_embeddings(winclip.clip, pixels, (2, 3))
        assert grid == (7, 7) and small.shape == (2, 36, 32) and mid.shape == (2, 25, 32)
        worst = 0.0
        for size, embeds in ((2, small), (3, mid)):
            for w, (row, col) in enumerate((r, c) for r in range(8 - size) for c in range(8 - size)):
                patches = [(row + i) * 7 + col + j for i in range(size) for j in range(size)]
                naive = _naive_window_embedding(winclip.clip, pixels, patches)
                worst = max(worst, float((embeds[:, w] - naive).abs().max()))
    assert worst < 1e-5


def test_full_window_is_the_image_embedding(winclip):
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        (whole,), _ = window_embeddings(winclip.clip, pixels, (7,))
        image = winclip.clip.get_image_features(pixel_values=pixels)
    image = getattr(image, "pooler_output", image)
    assert (whole[:, 0] - image).abs().max() < 1e-5


def test_harmonic_aggregation_by_loops():
    torch.manual_seed(0)
    scores = torch.rand(2, 6) + 0.05
    scores[1, 2] = 0.0
    indices = window_patch_indices((3, 4), 2)
    ours = harmonic_aggregation(scores, indices, 12)
    for b in range(2):
        for patch in range(12):
            covering = [float(scores[b, w]) for w in range(6) if patch in indices[w].tolist()]
            expected = 0.0 if 0.0 in covering else len(covering) / sum(1 / s for s in covering)
            assert abs(float(ours[b, patch]) - expected) < 1e-6


def _zero_shot_patch_map(model, pixels):
    """Harmonic mean over [image score, every window size's harmonically aggregated score] per patch."""
    with torch.no_grad():
        features = model.image_features(pixels)
        text = model.text_features()
    def probability(embeds):
        return (F.normalize(embeds, dim=-1) @ text.t() / 0.07).softmax(-1)[..., 1]
    rows, cols = features.grid_size
    image = probability(features.global_embeds)
    out = torch.empty(pixels.shape[0], rows * cols)
    for b in range(pixels.shape[0]):
        for patch in range(rows * cols):
            scales = [float(image[b])]
            for size, windows in zip(model.config.window_sizes, features.extras["window_embeds"]):
                scores = probability(windows[b])
                covering = [float(scores[w]) for w, ids in enumerate(window_patch_indices((rows, cols), size).tolist()) if patch in ids]
                scales.append(len(covering) / sum(1 / s for s in covering))
            out[b, patch] = len(scales) / sum(1 / s for s in scales)
    return out, image, features.grid_size


def test_zero_shot_map_and_score(winclip):
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = winclip(pixels)
    assert out.anomaly_maps.shape == (2, 28, 28) and out.pred_scores.shape == (2,)
    assert len(out.patch_logits) == 3 and out.patch_logits[0].shape == (2, 49, 2)
    patch_map, image, grid = _zero_shot_patch_map(winclip, pixels)
    expected = F.interpolate(patch_map.view(2, 1, *grid), size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    assert (out.anomaly_maps - expected).abs().max() < 1e-5
    assert (out.pred_scores - image).abs().max() < 1e-6


def test_winclip_plus_memory_map(winclip):
    torch.manual_seed(3)
    references, pixels = torch.randn(2, 3, 28, 28), torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        memory = winclip.image_features(references)
        test = winclip.image_features(pixels)
    groups = [(None, memory.patch_embeds[0], test.patch_embeds[0])] + [
        (size, m, t) for size, m, t in zip(winclip.config.window_sizes, memory.extras["window_embeds"], test.extras["window_embeds"])
    ]
    rows, cols = test.grid_size
    expected = torch.zeros(2, rows * cols)
    for size, bank, queries in groups:
        bank = F.normalize(bank.reshape(-1, bank.shape[-1]), dim=-1)
        scores = (1 - (F.normalize(queries, dim=-1) @ bank.t()).max(-1).values) / 2
        if size is None:
            expected += scores / len(groups)
            continue
        ids = window_patch_indices((rows, cols), size).tolist()
        for b in range(2):
            for patch in range(rows * cols):
                covering = [float(scores[b, w]) for w in range(len(ids)) if patch in ids[w]]
                expected[b, patch] += len(covering) / sum(1 / s for s in covering) / len(groups)
    expected_grid_max = expected.amax(dim=1)  # memory_image_score="grid": the grid's maximum, anomalib's
    expected = F.interpolate(expected.view(2, 1, rows, cols), size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    winclip.set_normal_references(references)
    winclip.config.reference_fusion = "memory_only"
    try:
        with torch.no_grad():
            out = winclip(pixels)
    finally:
        winclip.config.reference_fusion = "mean"
        winclip.clear_normal_references()
    assert [b.shape[0] for b in winclip.set_normal_references(references).banks] == [2 * 49, 2 * 36, 2 * 25]
    winclip.clear_normal_references()
    assert (out.anomaly_maps - expected).abs().max() < 1e-5
    assert (out.pred_scores - expected_grid_max).abs().max() < 1e-5


def test_config_defaults(tiny_backbone):
    config = WinCLIPModel.from_backbone(tiny_backbone).config
    assert config.model_type == "zsad_winclip" and zsad.MODEL_CLASSES["winclip"] is WinCLIPModel
    assert config.image_size == 28 and config.window_sizes == [2, 3] and config.dense_attention is None
    assert config.temperature == 0.07 and config.feature_layers == [4]
    with pytest.raises(ValueError, match="window_sizes"):
        zsad.WinCLIPConfig(window_sizes=[])


def test_detect_with_a_winclip_checkpoint_and_references(winclip, tmp_path):
    checkpoint = tmp_path / "winclip"
    winclip.save_pretrained(checkpoint)
    assert (checkpoint / "README.md").exists()
    rng = np.random.default_rng(0)
    images, references = tmp_path / "images", tmp_path / "good"
    images.mkdir()
    references.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(references / f"{i}.png")
    for extra, out in (([], tmp_path / "zero"), (["--normal-references", str(references)], tmp_path / "few")):
        assert main(["detect", str(images), "--model", str(checkpoint), "--out", str(out), "--quiet", *extra]) == 0
        with open(out / "scores.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 3 and all(0.0 <= float(row["score"]) <= 1.0 for row in rows)
    assert main(["detect", str(images), "--model", str(checkpoint), "--out", str(tmp_path / "bad"), "--quiet",
                 "--normal-references", str(tmp_path / "missing")]) == 2


# anomalib's WinCLIP prompt ensemble (src/anomalib/models/image/winclip/prompting.py), written out here so
# that the package's own lists are checked against it, not against themselves.
ANOMALIB_NORMAL = ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                   "{} without damage"]
ANOMALIB_ANOMALOUS = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]
ANOMALIB_TEMPLATES = [
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.", "a bright photo of a {}.",
    "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.", "a photo of a {}.",
    "a photo of the {}.", "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.",
    "a photo of the large {}.", "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
]


def anomalib_sentences(name):
    return [[t.format(s.format(name)) for s in states for t in ANOMALIB_TEMPLATES] for states in (ANOMALIB_NORMAL, ANOMALIB_ANOMALOUS)]


def test_prompt_sentences_are_anomalibs(tiny_backbone):
    from transformers import AutoTokenizer

    model = WinCLIPModel.from_backbone(tiny_backbone)
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    normal, anomalous = anomalib_sentences("object")
    assert len(normal) == 7 * 21 and len(anomalous) == 4 * 21
    assert model.config.normal_token_ids == tokenizer(normal)["input_ids"]
    assert model.config.anomaly_token_ids == tokenizer(anomalous)["input_ids"]


class AnomalibWinCLIP:
    """anomalib's WinClipModel computation, written from its documented steps with transformers' CLIP
    modules only (no zsad code): raw-mean text ensemble, windows as [CLS + window patches] through the
    whole encoder, harmonic aggregation, few-shot association on ln_post patch tokens, fused on the grid."""

    def __init__(self, clip, tokenizer, scales=(2, 3), temperature=0.07):
        self.clip, self.tokenizer, self.scales, self.temperature = clip, tokenizer, scales, temperature
        self.references = None

    def text(self, name):
        def embed(sentence):
            ids = torch.tensor([self.tokenizer(sentence)["input_ids"]])
            out = self.clip.get_text_features(input_ids=ids)
            return getattr(out, "pooler_output", out)[0]

        return torch.stack([torch.stack([embed(s) for s in group]).mean(0) for group in anomalib_sentences(name)])

    def masks(self, grid, size):
        rows, cols = grid
        return [[(r + i) * cols + c + j for i in range(size) for j in range(size)]
                for r in range(rows - size + 1) for c in range(cols - size + 1)]

    def encode(self, pixels):
        vision = self.clip.vision_model
        tokens = vision.embeddings(pixels)  # the class token and the patches, position embeddings added
        grid = (pixels.shape[-2] // vision.config.patch_size, pixels.shape[-1] // vision.config.patch_size)
        image = self.clip.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)
        patches = vision.post_layernorm(vision(pixel_values=pixels).last_hidden_state[:, 1:])  # no projection
        windows = []
        for size in self.scales:
            per_window = []
            for mask in self.masks(grid, size):
                subset = tokens[:, [0] + [1 + p for p in mask]]
                hidden = vision.encoder(inputs_embeds=vision.pre_layrnorm(subset)).last_hidden_state
                per_window.append(self.clip.visual_projection(vision.post_layernorm(hidden[:, 0])))
            windows.append(torch.stack(per_window, dim=1))
        return image, windows, patches, grid

    def scores(self, embeds, text):
        cos = F.normalize(embeds, dim=-1) @ F.normalize(text, dim=-1).t()
        return (cos / self.temperature).softmax(dim=-1)[..., 1]

    def harmonic(self, window_scores, grid, size):
        masks = self.masks(grid, size)
        out = torch.zeros(window_scores.shape[0], grid[0] * grid[1], dtype=window_scores.dtype)
        for patch in range(grid[0] * grid[1]):
            covering = [w for w, mask in enumerate(masks) if patch in mask]
            out[:, patch] = len(covering) / (1 / window_scores[:, covering]).sum(dim=1)
        return out

    def association(self, embeds, bank):
        cos = F.normalize(embeds, dim=-1) @ F.normalize(bank.reshape(-1, bank.shape[-1]), dim=-1).t()
        return ((1 - cos) / 2).min(dim=-1).values

    def set_references(self, pixels):
        _, windows, patches, _ = self.encode(pixels)
        self.references = (windows, patches)

    def __call__(self, pixels, name):
        text = self.text(name)
        image, windows, patches, grid = self.encode(pixels)
        image_scores = self.scores(image, text)
        scales = [image_scores[:, None].expand(-1, grid[0] * grid[1])]
        scales += [self.harmonic(self.scores(w, text), grid, size) for w, size in zip(windows, self.scales)]
        grid_map = len(scales) / sum(1 / s for s in scales)
        if self.references is not None:
            ref_windows, ref_patches = self.references
            few = [self.association(patches, ref_patches)]
            few += [self.harmonic(self.association(w, r), grid, size) for w, r, size in zip(windows, ref_windows, self.scales)]
            few_shot = torch.stack(few).mean(dim=0)
            grid_map = (grid_map + few_shot) / 2
            image_scores = (image_scores + few_shot.amax(dim=1)) / 2
        maps = F.interpolate(grid_map.view(-1, 1, *grid), size=pixels.shape[-2:], mode="bilinear")[:, 0]
        return image_scores, maps


@pytest.mark.parametrize("name", ["object", "bottle"])
@pytest.mark.parametrize("shots", [0, 1, 4])
def test_winclip_equals_anomalibs_computation(tiny_backbone, name, shots):
    from transformers import AutoTokenizer

    torch.manual_seed(4)
    model = WinCLIPModel.from_backbone(tiny_backbone).eval().double()
    reference = AnomalibWinCLIP(model.clip, AutoTokenizer.from_pretrained(tiny_backbone))
    pixels = torch.randn(2, 3, 28, 28, dtype=torch.float64)
    categories = None if name == "object" else [name, name]
    with torch.no_grad():
        if shots:
            normal = torch.randn(shots, 3, 28, 28, dtype=torch.float64)
            model.set_normal_references(normal, dtype=torch.float64)
            reference.set_references(normal)
        out = model(pixels, categories=categories)
        expected_scores, expected_maps = reference(pixels, name)
    assert (out.pred_scores - expected_scores).abs().max() < 1e-5
    assert (out.anomaly_maps - expected_maps).abs().max() < 1e-5


def test_a_winclip_checkpoint_saved_before_the_anomalib_defaults_keeps_its_outputs():
    """Saved by the version before issue 25 (no prompt_set / ensemble / memory_projection /
    memory_image_score in its config), with its zero- and few-shot outputs on fixed inputs."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    fixture = Path(__file__).resolve().parent / "fixtures" / "winclip-tiny-0.1.0.dev0"
    assert "prompt_set" not in json.loads((fixture / "config.json").read_text())
    model = WinCLIPModel.from_pretrained(fixture).eval()
    config = model.config
    assert (config.prompt_set, config.ensemble, config.memory_projection, config.memory_image_score) == (
        "anomalyclip", "normalized_mean", True, "map")
    expected = load_file(str(fixture) + ".expected.safetensors")
    with torch.no_grad():
        zero = model(pixel_values=expected["pixel_values"])
        model.set_normal_references(expected["references"])
        few = model(pixel_values=expected["pixel_values"])
    assert (zero.pred_scores - expected["pred_scores"]).abs().max() <= 1e-6
    assert (zero.anomaly_maps - expected["anomaly_maps"]).abs().max() <= 1e-6
    assert (few.pred_scores - expected["few_shot_pred_scores"]).abs().max() <= 1e-6
    assert (few.anomaly_maps - expected["few_shot_anomaly_maps"]).abs().max() <= 1e-6
