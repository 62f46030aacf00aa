"""Defaults are specification: every method's config defaults and `training_defaults` on ViT-L/14@336,
pinned to METHODS.md, one table per method with the section each value comes from.

The configs build offline (the ViT-L/14@336 architecture is built in); the optimiser is built over a
meta-device model, and `zsad train` / `examples/train.py` must resolve its defaults from the same table.
"""

import pytest
import torch

from zsad import AdaCLIPConfig, AdaCLIPModel, AnomalyCLIPConfig, AnomalyCLIPModel, CraneConfig, CraneModel
from zsad import DACLIPConfig, ZeroShotCLIPConfig
from zsad.train import parse_args
from zsad.training import build_optimizer


# (config field, METHODS.md value, section)
ANOMALYCLIP = [
    ("image_size", 518, "§1 input resolution 518x518"),
    ("pos_embed_interpolation", "bilinear", "§1 bilinear in AnomalyCLIP/Crane"),
    ("dense_attention", "vv", "§2.1 DPAM = V-V attention"),
    ("dense_start_layer", 6, "§2.1 last 19 layers, 6..24"),
    ("feature_layers", [24], "§2.1 final z_24 only"),
    ("global_post_layernorm", False, "§2.1 g without LN_post"),
    ("num_context_tokens", 12, "§2.2 V_1..V_12 / W_1..W_12"),
    ("deep_prompt_length", 4, "§2.2 4 deep tokens"),
    ("deep_prompt_layers", list(range(2, 10)), "§2.3 text layers 2..9"),
    ("normal_prompt", "object.", "§2.3 'object .'"),
    ("anomaly_prompt", "damaged object.", "§2.3 'damaged object .'"),
    ("temperature", 0.07, "§2.4 cos / 0.07"),
    ("gaussian_sigma", 4.0, "§2.4 sigma 4"),
    ("image_score", "global", "§2.4 no pixel information in the image score"),
    ("local_loss_weight", 4.0, "§2.5 lambda = 4"),
]
ANOMALYCLIP_TRAINING = {  # §2.5: Adam, lr 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, seed 111
    "optimizer": "adam", "learning_rate": 1e-3, "betas": (0.5, 0.999), "weight_decay": 0.0,
    "batch_size": 8, "num_epochs": 15, "seed": 111,
}

ADACLIP = [
    ("image_size", 518, "§1 / §3.1 image size 518"),
    ("pos_embed_interpolation", "bicubic", "§1 / §3.1 bicubic pos-embed resize"),
    ("dense_attention", None, "§3.1 no V-V/DPAM"),
    ("dense_start_layer", None, "§3.1 no dense path"),
    ("feature_layers", [6, 12, 18, 24], "§3.1 output layers 6/12/18/24"),
    ("global_post_layernorm", True, "§3.1 CLIP's pooled (LN_post + proj) embedding"),
    ("prompt_depth", 4, "§3.2 J = 4"),
    ("prompt_length", 5, "§3.2 L = 5"),
    ("temperature", 0.01, "§3.3 logit scale 100"),
    ("gaussian_sigma", 4.0, "§3.3 Gaussian sigma 4"),
    ("hybrid_semantic_fusion", True, "§3.3 HSF image score"),
    ("image_score", "global", "§3.3 score = softmax(100 <img, t>)[a], no map term"),
    ("hsf_num_clusters", 20, "§3.3 K = 20"),
    ("hsf_patches_per_cluster", 5, "§3.3 top-100 = k_clusters * 5"),
    ("hsf_weight", 0.2, "§3.3 normalise(0.2 c + 0.8 g')"),
    ("class_names", ["object"], "§3.2 class-aware ensemble (generic name until set)"),
]
ADACLIP_TRAINING = {  # §3.4: AdamW, lr 0.01, betas (0.5, 0.999), default weight decay, batch 1, 5 epochs, seed 111
    "optimizer": "adamw", "learning_rate": 1e-2, "betas": (0.5, 0.999), "weight_decay": 0.01,
    "batch_size": 1, "num_epochs": 5, "seed": 111,
}

CRANE = [
    ("image_size", 518, "§1 / §5.4 image 518"),
    ("pos_embed_interpolation", "bilinear", "§1 bilinear in AnomalyCLIP/Crane"),
    ("dense_attention", "qq+kk+vv", "§5.1 E-Attn = QQ + KK + VV"),
    ("dense_start_layer", 6, "§5.1 last 19 layers, 6..24"),
    ("feature_layers", [24], "§5.1 effective dense feature = final dense stream"),
    ("global_post_layernorm", True, "§5.1 Crane keeps LN_post"),
    ("num_context_tokens", 12, "§5.2 AnomalyCLIP's prompt learner unchanged"),
    ("deep_prompt_length", 4, "§5.2 4 deep tokens"),
    ("deep_prompt_layers", list(range(2, 10)), "§5.2 text layers 2..9"),
    ("prompt_conditioning", "train", "§5.2 conditioned in training, static in the released test code"),
    ("temperature", 0.07, "§5.3 <f, t> / 0.07"),
    ("gaussian_sigma", 4.0, "§5.3 Gaussian sigma 4"),
    ("soft_mean", True, "§5.3 / §5.4 soft_mean True for Crane"),
    ("fusion_weight", 0.5, "§5.3 g+ = normalise(0.5 c + 0.5 g)"),
    ("image_score", "global", "§5.3 score = softmax(<g+, t> / 0.07)[a]"),
    ("loss_upsample_mode", "nearest", "§5.3 nearest during training"),
    ("image_loss_weight", 0.2, "§5.4 0.2 * CE"),
    ("image_loss_temperature", 0.01, "§5.4 CE(<g+, t> / 0.01)"),
    ("local_loss_weight", 8.0, "§5.4 2 per map x the 4 identical layer-24 maps of §5.1"),
    ("dino_attention", False, "§0 / §5.1 Crane (no DINO); Crane+ adds D-Attn"),
    ("dino_mean_scale", 1.2, "§5.1 S - 1.2 mean(S)"),
    ("dino_sharpness", 3.0, "§5.1 (...) * 3"),
    ("dino_backbone_name_or_path", "facebook/dinov2-with-registers-base", "§5.1 DINOv2 ViT-B/14 with registers"),
]
CRANE_PLUS = [  # Crane+ differs only where §5.1 / §5.4 say so
    ("feature_layers", [24], "§5.1 Crane+ uses [24]"),
    ("local_loss_weight", 2.0, "§5.4 2 * sum over its two maps"),
]
CRANE_TRAINING = {  # §5.4: Adam, lr 1e-3, betas (0.6, 0.999), batch 8, 5 epochs, seed 111
    "optimizer": "adam", "learning_rate": 1e-3, "betas": (0.6, 0.999), "weight_decay": 0.0,
    "batch_size": 8, "num_epochs": 5, "seed": 111,
}

DACLIP = [row for row in ANOMALYCLIP if row[0] != "image_score"] + [  # §6.2: AnomalyCLIP's pipeline and prompts (deep text tokens: 4 x layers 2..9), plus
    ("num_experts", 4, "§6.2.1 E = 4 experts/domains"),
    ("visual_prompt_length", 4, "§6.2.1 P^v_e in R^{4 x 1024}"),
    ("visual_prompt_layers", [1, 2, 3, 4], "§6.2.1 vision layers 1..4"),
    ("router_temperature", 0.1, "§6.2.2 tau = 0.1"),
    ("top_k_experts", 2, "§6.2.2 keep top-2 experts"),
    ("daka_layers", [6, 12, 18, 24], "§6.2.3 vision layers {6, 12, 18, 24}"),
    ("lora_rank", 8, "§6.2.3 rank 8"),
    ("lora_alpha", 16.0, "§6.2.3 alpha 16"),
    ("daka_mix", 0.1, "§6.2.3 beta = 0.1"),
    ("token_top_k", 2, "§6.2.3 top-2 per token"),
    ("daka_routing", "token", "§6.2.3 per-token gates"),
    ("project_daka_layers", False, "§6.2.4 read-out = LN_post(z_24) W_proj; the projected DAKA layers are an ablation"),
    ("per_domain_prompts", True, "§6.2.1 each domain owns its prompts"),
    ("load_balance_weight", 0.01, "§6.2.5 0.01 * load balance"),
    ("diversity_weight", 0.01, "§6.2.5 0.01 * diversity"),
    # Issue 24 (docs/models/daclip.md): §6.2.4's optional JAS is the default, so the experts reach the image score;
    # the token gate sees RMS-normalised [x ; s]; the routing loss acts once training names two or more domains.
    ("image_score", "joint", "§6.2.4 + JAS (issue 24: the default)"),
    ("joint_score_alpha", 0.5, "HeadCLIP's JAS alpha"),
    ("gate_condition_norm", True, "issue 24: the condition enters the gate on the token's footing"),
    ("domain_names", None, "issue 24: set by zsad train from the data"),
    ("routing_loss_weight", 1.0, "issue 24: routing loss with two or more domains"),
]
DACLIP_TRAINING = {  # §6.2.6: Adam lr 1e-3 for prompts/keys, 1e-4 for LoRA and routers, betas (0.5, 0.999), batch 8, 15 epochs
    "optimizer": "adam", "learning_rate": 1e-3, "learning_rate_scales": {"experts": 0.1}, "betas": (0.5, 0.999),
    "weight_decay": 0.0, "batch_size": 8, "num_epochs": 15, "seed": 111,
}

ZERO_SHOT_CLIP = [
    ("image_size", 518, "§1 input resolution 518x518"),
    ("pos_embed_interpolation", "bilinear", "§1 the AnomalyCLIP code's baseline"),
    ("dense_attention", "vv", "§2.3 the CLIP baseline of AnomalyCLIP's code, on the §2.1 dense path"),
    ("dense_start_layer", 6, "§2.1 last 19 layers"),
    ("feature_layers", [24], "§2.1 final dense stream"),
    ("global_post_layernorm", False, "§2.1 as AnomalyCLIP's global embedding"),
    ("temperature", 0.07, "§2.4 cos / 0.07"),
    ("gaussian_sigma", 4.0, "§2.4 sigma 4"),
    ("object_name", "object", "§2.3 {} = 'object'"),
    ("image_score", "global", "§2.4 global text probability"),
]

TABLES = {
    "anomalyclip": (AnomalyCLIPConfig, {}, ANOMALYCLIP, ANOMALYCLIP_TRAINING),
    "adaclip": (AdaCLIPConfig, {}, ADACLIP, ADACLIP_TRAINING),
    "crane": (CraneConfig, {}, CRANE, CRANE_TRAINING),
    "crane+": (CraneConfig, {"dino_attention": True}, CRANE_PLUS, CRANE_TRAINING),
    "daclip": (DACLIPConfig, {}, DACLIP, DACLIP_TRAINING),
    "zsad_clip": (ZeroShotCLIPConfig, {}, ZERO_SHOT_CLIP, None),
}


def _same(actual, expected) -> bool:
    """Equal, and a flag or None is that very object (1 is not True)."""
    if isinstance(expected, bool) or expected is None:
        return actual is expected
    return actual == expected


@pytest.mark.parametrize("method", sorted(TABLES))
def test_config_defaults_follow_methods_md(method):
    config_class, kwargs, table, training = TABLES[method]
    config = config_class(**kwargs)
    assert (config.vision_depth, config.clip_config.vision_config.patch_size) == (24, 14)  # ViT-L/14@336 (§1)
    wrong = [
        f"{field} = {getattr(config, field)!r}, METHODS.md {section} says {value!r}"
        for field, value, section in table
        if not _same(getattr(config, field), value)
    ]
    assert not wrong, "\n".join(wrong)
    assert config_class.training_defaults == training


@pytest.mark.parametrize(
    ("model_class", "training"),
    [(AnomalyCLIPModel, ANOMALYCLIP_TRAINING), (AdaCLIPModel, ADACLIP_TRAINING), (CraneModel, CRANE_TRAINING)],
)
def test_build_optimizer_uses_the_methods_optimiser(model_class, training):
    with torch.device("meta"):
        model = model_class(model_class.config_class())
    optimizer = build_optimizer(model)
    expected_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[training["optimizer"]]
    assert type(optimizer) is expected_class
    group = optimizer.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (
        training["learning_rate"], training["betas"], training["weight_decay"]
    )


@pytest.mark.parametrize(
    ("method", "training"),
    [("anomalyclip", ANOMALYCLIP_TRAINING), ("adaclip", ADACLIP_TRAINING), ("crane", CRANE_TRAINING), ("daclip", DACLIP_TRAINING)],
)
def test_train_script_defaults_are_the_methods(method, training):
    args = parse_args(["--method", method, "--dataset", "data/x", "--output_dir", "out"])
    assert (args.train_batch_size, args.num_train_epochs, args.seed) == (
        training["batch_size"], training["num_epochs"], training["seed"]
    )
