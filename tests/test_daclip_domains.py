"""DA-CLIP's domain mechanism acts (issue 24): a gate condition that conditions, experts that reach the image
score, a routing loss that teaches the router the training domains, multi-domain `zsad train`, and
checkpoints saved before these changes loading with their old behaviour."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zsad import DACLIPModel
from zsad.adapters.domain_experts import ImageRouter, routing_cross_entropy, squared_coefficient_of_variation

SIZE = 28
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "daclip-tiny-0.1.0.dev0"


def _pixels(batch, seed=1):
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _model(tiny_backbone, seed=0, **kwargs):
    torch.manual_seed(seed)
    return DACLIPModel.from_backbone(tiny_backbone, image_size=SIZE, **kwargs).eval()


def _gate_change_when_conditions_swap(model) -> float:
    """Largest change of the first DAKA layer's gate probabilities on real dense tokens when the condition
    (the summary of the combined visual prompts) of an image routed to domain 0 is replaced by that of
    an image routed to domain 1."""
    with torch.no_grad():
        tokens = model.encode_image(_pixels(1), feature_layers=[model.config.daka_layers[0]], project_patches=False)
        tokens = tokens.patch_embeds[0]
        bank = model.domain_prompts.visual_tokens  # (E, layers, n, W)
        summary_a, summary_b = bank[0].mean(dim=(0, 1))[None], bank[1].mean(dim=(0, 1))[None]
        gate = model.daka.experts[0]
        return float((gate.gates(tokens, summary_a)[0] - gate.gates(tokens, summary_b)[0]).abs().max())


def test_swapping_the_condition_changes_the_gates_at_init(tiny_backbone):
    model = _model(tiny_backbone)
    with torch.no_grad():
        summary_norm = float(model.domain_prompts.visual_tokens[0].mean(dim=(0, 1)).norm())
        token_norm = float(model.encode_image(_pixels(1), feature_layers=[2], project_patches=False).patch_embeds[0].norm(dim=-1).mean())
    assert summary_norm < token_norm / 20  # why the raw condition was inert: it is tiny next to a token
    normalised = _gate_change_when_conditions_swap(model)
    legacy = _gate_change_when_conditions_swap(_model(tiny_backbone, gate_condition_norm=False))
    assert normalised > 0.05 and legacy < 2e-3  # the old gate input: the condition barely counted
    assert normalised > 25 * legacy


def test_one_experts_weights_reach_the_image_score(tiny_backbone):
    pixels = _pixels(3)
    for image_score, reaches in (("joint", True), ("global", False)):
        model = _model(tiny_backbone, image_score=image_score)
        with torch.no_grad():
            before = model(pixels).pred_scores
            model.daka.experts[-1].lora_B[0].normal_(std=0.5)  # one expert of one DAKA layer
            after = model(pixels).pred_scores
        changed = float((after - before).abs().max())
        assert (changed > 1e-4) if reaches else (changed == 0.0), (image_score, changed)
    assert _model(tiny_backbone).config.image_score == "joint"  # the default is the one that reaches it


def test_routing_loss_is_the_cross_entropy_against_each_domains_expert(tiny_backbone):
    model = _model(tiny_backbone, domain_names=["brain", "metal", "tile"], num_experts=2, top_k_experts=1, token_top_k=1)
    pixels, masks = _pixels(3), torch.zeros(3, SIZE, SIZE)
    masks[0, 5:12, 5:12] = 1
    domains = ["tile", "brain", "metal"]  # experts 2 % 2 = 0, 0, 1
    with torch.no_grad():
        out = model(pixels, masks=masks, domains=domains)
        plain = model(pixels, masks=masks)
        softmax = model.image_features(pixels).extras["router_softmax"]
    expected = -(math.log(softmax[0, 0]) + math.log(softmax[1, 0]) + math.log(softmax[2, 1])) / 3
    assert out.aux_losses["routing"].item() == pytest.approx(expected, rel=1e-5)
    assert "routing" not in plain.aux_losses
    assert (out.loss - plain.loss).item() == pytest.approx(model.config.routing_loss_weight * expected, rel=1e-4)
    with pytest.raises(ValueError, match="not among this model's training domains"):
        model(pixels, masks=masks, domains=["tile", "brain", "road"])
    single = _model(tiny_backbone, domain_names=["tile"])
    with torch.no_grad():
        assert "routing" not in single(pixels, masks=masks, domains=["tile"] * 3).aux_losses  # one domain: off


def normalized_mutual_information(a: list[int], b: list[int]) -> float:
    """I(A; B) / mean(H(A), H(B)), from the joint counts (the arithmetic normalisation)."""
    n = len(a)
    joint, pa, pb = Counter(zip(a, b)), Counter(a), Counter(b)
    mutual = sum(c / n * math.log(c * n / (pa[x] * pb[y])) for (x, y), c in joint.items())
    entropy = lambda counts: -sum(c / n * math.log(c / n) for c in counts.values())  # noqa: E731
    denominator = (entropy(pa) + entropy(pb)) / 2
    return mutual / denominator if denominator > 0 else 0.0


def synthetic_domain_embeddings(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 domains in 32 dimensions: separable along 4 directions (means 4 sqrt(2) apart, unit noise), while
    the other 28 directions carry 3x larger nuisance variation, so that a router that is not told the
    domains sorts the images by nuisance, not by domain."""
    generator = torch.Generator().manual_seed(seed)
    domains = torch.arange(count) % 4
    means = torch.zeros(4, 32)
    means[torch.arange(4), torch.arange(4)] = 4.0
    scale = torch.ones(32)
    scale[4:] = 3.0
    return means[domains] + torch.randn(count, 32, generator=generator) * scale + 1.5, domains


def train_router(with_domains: bool, steps: int = 300) -> float:
    torch.manual_seed(0)
    router = ImageRouter(32, temperature=0.1, top_k=2)
    keys = torch.nn.Parameter(torch.randn(4, 32) * 0.02)
    optimizer = torch.optim.Adam([*router.parameters(), keys], lr=1e-2)
    embeddings, domains = synthetic_domain_embeddings(512, seed=1)
    for step in range(steps):
        batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
        softmax, _ = router(embeddings[batch], keys)
        loss = 0.01 * squared_coefficient_of_variation(softmax)
        if with_domains:
            loss = loss + routing_cross_entropy(softmax, domains[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out, held_out_domains = synthetic_domain_embeddings(400, seed=2)
    with torch.no_grad():
        top1 = router(held_out, keys)[0].argmax(dim=1)
    return normalized_mutual_information(top1.tolist(), held_out_domains.tolist())


def test_the_nmi_helper_on_hand_made_labelings():
    assert normalized_mutual_information([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert normalized_mutual_information([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)


def test_the_router_learns_separable_domains_with_domain_ids_and_not_without():
    assert train_router(with_domains=True) >= 0.8  # measured 0.93
    assert train_router(with_domains=False) < 0.1  # measured 0.013: chance


def test_a_daclip_checkpoint_saved_before_issue_24_loads_with_its_old_behaviour():
    """The fixture was saved by the version before these changes (no gate_condition_norm, domain_names or
    routing_loss_weight in its config; image_score "global"), with its outputs on fixed inputs."""
    saved = json.loads((FIXTURE / "config.json").read_text())
    assert "gate_condition_norm" not in saved and saved["image_score"] == "global"
    model = DACLIPModel.from_pretrained(FIXTURE).eval()
    assert model.config.gate_condition_norm is False and model.config.image_score == "global"
    expected = load_file(str(FIXTURE) + ".expected.safetensors")
    with torch.no_grad():
        out = model(pixel_values=expected["pixel_values"])
    assert torch.equal(out.router_probs, expected["router_probs"])
    assert float((out.anomaly_maps - expected["anomaly_maps"]).abs().max()) <= 1e-6
    assert float((out.pred_scores - expected["pred_scores"]).abs().max()) <= 1e-6


def test_zsad_train_on_two_domains_names_them_and_trains_the_routing_loss(tiny_backbone, tmp_path, capsys):
    from zsad.cli import main
    from zsad.data import make_synthetic_dataset

    for name, texture in (("grid_domain", "grid"), ("dots_domain", "dots")):
        make_synthetic_dataset(4, 4, size=SIZE, textures=[texture], seed=0, dataset_name=name).save_to_disk(str(tmp_path / name))
    out = tmp_path / "model"
    code = main(["train", "--method", "daclip", "--backbone", tiny_backbone, "--dataset", str(tmp_path / "grid_domain"),
                 "--dataset", str(tmp_path / "dots_domain"), "--image-size", str(SIZE), "--train-batch-size", "4",
                 "--max-train-steps", "2", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["domain_names"] == ["dots_domain", "grid_domain"]
    model = DACLIPModel.from_pretrained(out).eval()
    batch_domains = ["grid_domain", "dots_domain"]
    with torch.no_grad():
        routed = model(_pixels(2), masks=torch.zeros(2, SIZE, SIZE), domains=batch_domains)
    assert routed.aux_losses["routing"] > 0
    assert model.domain_experts(batch_domains).tolist() == [1, 0]


def test_the_domain_experiment_runs_in_its_smoke_form(tmp_path):
    """examples/experiments/daclip_domains.py --smoke on the four real domains (2 images a folder, 2 steps)."""
    import subprocess
    import sys

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not data.is_dir():
        pytest.skip("../shared is absent")
    script = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "daclip_domains.py"
    result = subprocess.run([sys.executable, str(script), "--data", str(data), "--smoke", "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert [row["domain"] for row in report["rows"]] == ["magnetic_tile", "mpdd_metal_plate", "head_ct", "brain_mri (held out)"]
    for row in report["rows"]:
        assert math.isclose(sum(row["expert_shares"]), 1.0) and row["purity"] == max(row["expert_shares"])
        assert set(row["image_auroc"]) == {"daclip", "anomalyclip"}
    assert 0.0 <= report["nmi"]["after"] <= 1.0
    assert "| brain_mri (held out) |" in result.stdout
