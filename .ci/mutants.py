#!/usr/bin/env python
"""Mutation check (issues 9 and 29; not run by CI): plant known bugs one at a time and see which test
catches each.

The tree is copied once into a temporary folder; every mutant is a text substitution on one source file
(the pattern must occur exactly once), applied, tested with `pytest -x` on a subset of test files (the
mutant's own files where it names them, e.g. the data, schedule and command mutants), and reverted. The
unmutated copy must pass first.

    python .ci/mutants.py                    # every mutant, the default test subset
    python .ci/mutants.py -k blur -k sampler # mutants whose name contains one of these words
    python .ci/mutants.py --check            # only check that every pattern still matches the sources
    python .ci/mutants.py --tests tests/test_scoring.py

Prints a markdown table (mutant, caught, first failing test, seconds); exits 1 if a mutant survives or
a pattern is stale (e.g. after a refactor: update the substitution).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Fast, specific files first: `-x` stops at the first failure, which is reported.
DEFAULT_TESTS = (
    "tests/test_method_defaults.py",
    "tests/test_scoring.py",
    "tests/test_training.py",
    "tests/test_clip_vision.py",
    "tests/test_clip_text.py",
    "tests/test_pipeline.py",
    "tests/test_crane.py",
    "tests/test_reference_pipelines.py",
    "tests/test_metrics_classification.py",
    "tests/test_metrics_aupro.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str  # "issue: ..." for the bug kinds named in issue 9, "extra: ..." for further ones
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = ()  # test files to run instead of --tests


VISION, TEXT, SCORING, LOSSES = "src/zsad/clip/vision.py", "src/zsad/clip/text.py", "src/zsad/scoring.py", "src/zsad/losses.py"
ANOMALYCLIP_CONFIG = "src/zsad/models/anomalyclip/configuration_anomalyclip.py"
ADACLIP = "src/zsad/models/adaclip/modeling_adaclip.py"
CRANE = "src/zsad/models/crane/modeling_crane.py"
DACLIP, DOMAIN_EXPERTS = "src/zsad/models/daclip/modeling_daclip.py", "src/zsad/adapters/domain_experts.py"
PROCESSING, TRAIN_COMMAND = "src/zsad/clip/processing.py", "src/zsad/commands/train.py"
GROUND_TRUTH_TESTS = ("tests/test_ground_truth.py", "tests/test_processing.py")
DATA_TESTS = ("tests/test_ground_truth.py", "tests/test_data_convert.py", "tests/test_data_loading.py")
SCHEDULE_TESTS = ("tests/test_schedules.py",)
COMMAND_TESTS = ("tests/test_command_outputs.py",)

MUTANTS = [
    # --- the bug kinds issue 9 lists
    Mutant("issue: LN1 instead of LN2 before the MLP of a block", VISION,
           "    hidden = hidden + layer.mlp(layer.layer_norm2(hidden))",
           "    hidden = hidden + layer.mlp(layer.layer_norm1(hidden))"),
    Mutant("issue: LN2 instead of LN1 before the attention (both streams)", VISION,
           "        layer.layer_norm1(hidden),\n", "        layer.layer_norm2(hidden),\n"),
    Mutant("issue: dense attention output loses its out_proj bias", VISION,
           "    return (out[:batch], out[batch:]) if dense_kinds else (out, None)",
           "    return (out[:batch], out[batch:] - attention.out_proj.bias) if dense_kinds else (out, None)"),
    Mutant("issue: AnomalyCLIP dense attention kind qq+kk+vv", ANOMALYCLIP_CONFIG,
           'dense_attention: str | None = "vv"', 'dense_attention: str | None = "qq+kk+vv"'),
    Mutant("issue: AnomalyCLIP pos-embedding interpolation bicubic", ANOMALYCLIP_CONFIG,
           'pos_embed_interpolation: str = "bilinear"', 'pos_embed_interpolation: str = "bicubic"'),
    Mutant("issue: AnomalyCLIP global post-LayerNorm on", ANOMALYCLIP_CONFIG,
           "global_post_layernorm: bool = False", "global_post_layernorm: bool = True"),
    Mutant("issue: no Gaussian blur in the shared forward", "src/zsad/modeling_base.py",
           "anomaly_maps_from_probabilities(map_probabilities, self.config.gaussian_sigma)",
           "anomaly_maps_from_probabilities(map_probabilities, 0.0)"),
    Mutant("issue: no Gaussian blur in the shared map function", SCORING,
           "    return gaussian_blur(maps, sigma)", "    return maps"),
    Mutant("issue: AdaCLIP HSF clusters by the normal probability", ADACLIP,
           "torch.stack(patch_logits).mean(dim=0).softmax(dim=-1)[..., 1],",
           "torch.stack(patch_logits).mean(dim=0).softmax(dim=-1)[..., 0],"),
    Mutant("issue: AnomalyCLIP optimiser betas (0.9, 0.999)", ANOMALYCLIP_CONFIG,
           '"betas": (0.5, 0.999)', '"betas": (0.9, 0.999)'),
    Mutant("issue: AnomalyCLIP 10 epochs", ANOMALYCLIP_CONFIG, '"num_epochs": 15', '"num_epochs": 10'),
    Mutant("issue: Crane 15 epochs", "src/zsad/models/crane/configuration_crane.py",
           '"batch_size": 8, "num_epochs": 5', '"batch_size": 8, "num_epochs": 15'),
    Mutant("issue: AdaCLIP learning rate 1e-3", "src/zsad/models/adaclip/configuration_adaclip.py",
           '"learning_rate": 1e-2', '"learning_rate": 1e-3'),
    Mutant("issue: sampler ignores the epoch", "src/zsad/training.py",
           "manual_seed(self.seed * 1_000_003 + self.epoch)", "manual_seed(self.seed * 1_000_003)"),
    Mutant("issue: Gaussian kernel radius one too large", SCORING,
           "    radius = int(truncate * sigma + 0.5)\n", "    radius = int(truncate * sigma + 0.5) + 1\n"),
    Mutant("issue: Gaussian kernel radius truncated (no rounding)", SCORING,
           "    radius = int(truncate * sigma + 0.5)\n", "    radius = int(truncate * sigma)\n"),
    # --- further bug kinds: vision loop
    Mutant("extra: vision pre-LayerNorm skipped", VISION,
           "    hidden = vision_model.pre_layrnorm(hidden)", "    hidden = hidden"),
    Mutant("extra: dense stream starts from zero instead of h_{s-1}", VISION,
           "dense = (hidden if dense is None else dense) + dense_update",
           "dense = (torch.zeros_like(hidden) if dense is None else dense) + dense_update"),
    Mutant("extra: pos-embedding interpolation align_corners=True", VISION,
           "mode=mode, align_corners=False)", "mode=mode, align_corners=True)"),
    Mutant("extra: taps read the last tokens (visual prompts leak in)", VISION,
           "taps[index] = (dense if dense is not None else hidden)[:, :num_tokens]",
           "taps[index] = (dense if dense is not None else hidden)[:, -num_tokens:]"),
    Mutant("extra: D-Attn values from LN2", VISION,
           "guided_attention_output(layer, layer.layer_norm1(hidden[:, 1:num_tokens]), guided_attention)\n    hidden = hidden + layer.mlp",
           "guided_attention_output(layer, layer.layer_norm2(hidden[:, 1:num_tokens]), guided_attention)\n    hidden = hidden + layer.mlp"),
    # text encoder
    Mutant("extra: text attention not causal", TEXT, "is_causal=True", "is_causal=False"),
    Mutant("extra: deep text prompts overwrite from position 0", TEXT,
           "deep_prompt_offset: int = 1,", "deep_prompt_offset: int = 0,"),
    Mutant("extra: text final LayerNorm skipped", TEXT,
           "    hidden = text_model.final_layer_norm(hidden)", "    hidden = hidden"),
    Mutant("extra: Crane image token without end-of-text shift", "src/zsad/adapters/prompt_learner.py",
           "            pooling_positions = pooling_positions + 1\n", "            pooling_positions = pooling_positions\n"),
    # scoring
    Mutant("extra: maps upsampled with align_corners=True", SCORING,
           "    align_corners: bool = False,", "    align_corners: bool = True,"),
    Mutant("extra: blur pads by mirror instead of reflect", SCORING,
           "period - 1 - index, index)", "period - 2 - index, index)"),
    Mutant("extra: anomaly map from the normal probability", SCORING,
           "(p[:, 1] + 1 - p[:, 0]) / 2", "(p[:, 0] + 1 - p[:, 1]) / 2"),
    # losses
    Mutant("extra: focal gamma 1", LOSSES, "gamma: float = 2.0", "gamma: float = 1.0"),
    Mutant("extra: dice without +1 smoothing in the numerator", LOSSES,
           "(2.0 * intersection + 1.0)", "(2.0 * intersection)"),
    Mutant("extra: normal-class dice against the anomaly mask", LOSSES,
           "dice_loss(probabilities[:, 0], 1.0 - masks)", "dice_loss(probabilities[:, 0], masks)"),
    # metrics
    Mutant("extra: AUROC by the rectangle rule", "src/zsad/metrics/classification.py",
           "np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0", "np.sum(np.diff(fpr) * tpr[1:])"),
    Mutant("extra: F1 without the factor 2", "src/zsad/metrics/classification.py",
           "return 2 * precision * recall / (precision + recall)", "return precision * recall / (precision + recall)"),
    Mutant("extra: AUPRO not normalised by the FPR limit", "src/zsad/metrics/aupro.py",
           "return _trapezoid_to(x, y, fpr_limit) / fpr_limit", "return _trapezoid_to(x, y, fpr_limit)"),
    # each model
    Mutant("extra: ZeroShotCLIP averages unnormalised sentences", "src/zsad/models/zsad_clip/modeling_zsad_clip.py",
           "        sentences = F.normalize(sentences, dim=-1)\n", "        sentences = sentences\n"),
    Mutant("extra: AnomalyCLIP local loss weight ignored", "src/zsad/models/anomalyclip/modeling_anomalyclip.py",
           "loss = loss + self.config.local_loss_weight * local", "loss = loss + local"),
    Mutant("extra: AdaCLIP text prompts also at text layer 1", ADACLIP,
           "for layer in range(2, text_prompts.shape[1] + 1)", "for layer in range(1, text_prompts.shape[1] + 1)"),
    Mutant("extra: AdaCLIP test map with align_corners=False", ADACLIP,
           "upsample_patch_scores(mean_logits, grid_size, size, align_corners=True)",
           "upsample_patch_scores(mean_logits, grid_size, size, align_corners=False)"),
    Mutant("extra: AdaCLIP k-means seeded at the last point", ADACLIP,
           "centers = points[:, :1]", "centers = points[:, -1:]"),
    Mutant("extra: Crane pooling weighted by the normal probability", CRANE,
           "weights = torch.stack(patch_logits).mean(dim=0).softmax(dim=-1)[..., 1:]",
           "weights = torch.stack(patch_logits).mean(dim=0).softmax(dim=-1)[..., :1]"),
    Mutant("extra: Crane image loss at the map temperature", CRANE,
           "image_logits * (cfg.temperature / cfg.image_loss_temperature)", "image_logits"),
    Mutant("extra: Crane+ D-Attn mean over the whole batch", CRANE,
           "mean = similarity.mean(dim=(-2, -1), keepdim=True)", "mean = similarity.mean()"),
    # --- WinCLIP / WinCLIP+ and Crane soft_mean=False (caught by the references of tests/reference_pipelines.py)
    Mutant("extra: WinCLIP scales combined by the arithmetic mean", "src/zsad/models/winclip/modeling_winclip.py",
           "combined = len(patch_logits) / scores.reciprocal().sum(dim=0)", "combined = scores.mean(dim=0)"),
    Mutant("extra: WinCLIP windows one token off (class-token offset lost)", "src/zsad/clip/windows.py",
           "window_patch_indices(grid_size, size, tokens.device) + 1", "window_patch_indices(grid_size, size, tokens.device)"),
    Mutant("extra: WinCLIP windows without the class token", "src/zsad/clip/windows.py",
           "sequence = torch.cat([patches.new_zeros(patches.shape[0], 1), patches], dim=1)", "sequence = patches"),
    Mutant("extra: WinCLIP+ memory ignores the windows", "src/zsad/models/winclip/modeling_winclip.py",
           "torch.stack([*scores[:layers], *self._to_patches(scores[layers:], grid_size)]).mean(dim=0)",
           "torch.stack(scores[:layers]).mean(dim=0)"),
    Mutant("extra: WinCLIP+ association score without the 1/2", "src/zsad/few_shot.py",
           "return (1.0 - best) / 2", "return 1.0 - best"),
    Mutant("extra: Crane soft_mean=False ignored", CRANE, "if self.config.soft_mean:", "if True:"),
    # --- DA-CLIP (caught by its reference, tests/reference_pipelines.py daclip)
    Mutant("extra: DA-CLIP image router keeps token_top_k experts", DACLIP,
           "config.router_temperature, config.top_k_experts)", "config.router_temperature, config.token_top_k)"),
    Mutant("extra: DA-CLIP top-k router and gate weights not renormalised", DOMAIN_EXPERTS,
           "return kept / kept.sum(dim=-1, keepdim=True)", "return kept"),
    Mutant("extra: DA-CLIP LoRA scaling alpha / r dropped", DOMAIN_EXPERTS,
           "return tokens + self.mix * self.scaling * torch.einsum", "return tokens + self.mix * torch.einsum"),
    Mutant("extra: DA-CLIP DAKA adapts the dense stream before the layer's update", VISION,
           "        dense = (hidden if dense is None else dense) + dense_update\n"
           "        if index in hooks.dense_adapters:\n            dense = hooks.dense_adapters[index](dense)\n",
           "        dense = hidden if dense is None else dense\n"
           "        if index in hooks.dense_adapters:\n            dense = hooks.dense_adapters[index](dense)\n"
           "        dense = dense + dense_update\n"),
    Mutant("extra: DA-CLIP token gates see the first prompted layer only", DACLIP,
           "condition = combined.mean(dim=(1, 2))", "condition = combined[:, 0].mean(dim=1)"),
    Mutant("extra: DA-CLIP load balance on the top-k renormalised router weights", DACLIP,
           'squared_coefficient_of_variation(extras["router_softmax"])', 'squared_coefficient_of_variation(extras["router_probs"])'),
    Mutant("extra: DA-CLIP diversity loss unweighted", DACLIP,
           '"diversity": cfg.diversity_weight * losses["diversity"],', '"diversity": losses["diversity"],'),
    Mutant("extra: DA-CLIP projected DAKA maps left out of the read-out", DACLIP,
           "            *(projection(layer_tokens) for projection, layer_tokens in zip(self.daka_projections.patch, tokens)),\n",
           ""),
    Mutant("extra: DA-CLIP projects the final feature layer too", "src/zsad/models/daclip/configuration_daclip.py",
           "[layer for layer in self.daka_layers if layer not in self.feature_layers]", "list(self.daka_layers)"),
    # precision
    Mutant("extra: bf16 model's text cache computed in bf16", "src/zsad/modeling_base.py",
           "if p.is_floating_point() and p.dtype != torch.float32 and not", "if False and not"),
    Mutant("extra: Crane+ D-Attn similarities in bf16 under autocast", CRANE,
           "with torch.autocast(pixel_values.device.type, enabled=False):",
           "with torch.autocast(pixel_values.device.type, enabled=torch.is_autocast_enabled(pixel_values.device.type)):"),
    Mutant("extra: text cache computed under the caller's autocast", "src/zsad/modeling_base.py",
           "torch.autocast(params[0].device.type, enabled=False)",
           "torch.autocast(params[0].device.type, enabled=torch.is_autocast_enabled(params[0].device.type))"),
    # --- issue 29: data, training schedules and what the commands write (each with its own tests)
    Mutant("data: masks resized nearest-neighbour", PROCESSING,
           "binary.resize((self.image_size, self.image_size), resample=Image.Resampling.BILINEAR)",
           "binary.resize((self.image_size, self.image_size), resample=Image.Resampling.NEAREST)", GROUND_TRUTH_TESTS),
    Mutant("data: masks resized half a pixel off", PROCESSING,
           "binary.resize((self.image_size, self.image_size), resample=Image.Resampling.BILINEAR)",
           "binary.resize((self.image_size, self.image_size), resample=Image.Resampling.BILINEAR, "
           "box=(0.5, 0.5, binary.width + 0.5, binary.height + 0.5))", GROUND_TRUTH_TESTS),
    Mutant("data: 8-bit masks binarised at 127 instead of > 0", PROCESSING,
           'mask.convert("L")) > (127 if lossy else 0)', 'mask.convert("L")) > 127', GROUND_TRUTH_TESTS),
    # (16-bit masks read through convert("L") would be an equivalent mutant: PIL clips I;16 at 255, so > 0 holds)
    Mutant("data: float masks read as 8-bit", PROCESSING,
           'if mask.mode in _WIDE_INTEGER_MODES or mask.mode == "F":', "if mask.mode in _WIDE_INTEGER_MODES:",
           GROUND_TRUTH_TESTS),
    Mutant("data: resized masks thresholded at 0.25", PROCESSING,
           "mask_threshold: float = 0.5,", "mask_threshold: float = 0.25,", GROUND_TRUTH_TESTS),
    Mutant("data: the converter treats every mask as JPEG", "src/zsad/data/writer.py",
           "lossy=sample.mask_path.suffix.lower() in _LOSSY_MASK_EXTENSIONS", "lossy=True", DATA_TESTS),
    Mutant("data: 'ok' folders are not normal", "src/zsad/data/layouts.py",
           'NORMAL_FOLDER_NAMES: tuple[str, ...] = ("good", "ok", "normal")',
           'NORMAL_FOLDER_NAMES: tuple[str, ...] = ("good", "normal")', DATA_TESTS),
    Mutant("data: boolean labels inverted", "src/zsad/data/schema.py",
           "    if isinstance(value, bool):\n        return int(value)", "    if isinstance(value, bool):\n        return 1 - int(value)",
           DATA_TESTS),
    Mutant("data: normal images without a mask lose their pixel ground truth", "src/zsad/data/transforms.py",
           'out["has_mask"].append(mask is not None or label == NORMAL)', 'out["has_mask"].append(mask is not None)',
           DATA_TESTS),
    Mutant("schedule: steps per epoch rounded down", TRAIN_COMMAND,
           "steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)",
           "steps_per_epoch = len(dataloader) // args.gradient_accumulation_steps", SCHEDULE_TESTS),
    Mutant("schedule: epochs for --max-train-steps rounded down", TRAIN_COMMAND,
           "num_epochs = math.ceil(max_train_steps / steps_per_epoch)",
           "num_epochs = max(1, max_train_steps // steps_per_epoch)", SCHEDULE_TESTS),
    Mutant("schedule: resume skips optimizer steps, not batches", TRAIN_COMMAND,
           "skip_batches = done_in_epoch * args.gradient_accumulation_steps", "skip_batches = done_in_epoch",
           SCHEDULE_TESTS),
    Mutant("commands: macro average of the first category only", "src/zsad/metrics/accumulator.py",
           'macro[k] = float(np.mean(vals)) if vals else float("nan")',
           'macro[k] = float(vals[0]) if vals else float("nan")', COMMAND_TESTS),
    Mutant("commands: detect writes scores rounded", "src/zsad/commands/detect.py",
           '"score": repr(score)', '"score": repr(round(score, 2))', COMMAND_TESTS),
    Mutant("commands: detect sorts the images it was given", "src/zsad/commands/detect.py",
           "    return list(found)\n", "    return sorted(found)\n", COMMAND_TESTS),
    Mutant("commands: calibrated threshold one curve point too high", "src/zsad/metrics/classification.py",
           "return float(thresholds[best]), float(max(f1[best], 0.0))",
           "return float(thresholds[max(best - 1, 0)]), float(max(f1[best], 0.0))", COMMAND_TESTS),
]


def copy_tree(destination: Path) -> None:
    """The working tree without git metadata, caches or top-level run outputs."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {".git", "__pycache__", ".pytest_cache"} | {n for n in names if n.endswith(".egg-info")}
        if Path(folder) == ROOT:
            skipped |= {"out", "eval", "data"}
        return skipped & set(names)

    shutil.copytree(ROOT, destination, ignore=ignore, dirs_exist_ok=True)


def run_tests(tree: Path, tests: list[str], timeout: int) -> tuple[bool, str]:
    """`pytest -x` in `tree` with its own `src` first; (passed, first failing test or reason)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    try:
        result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"(timeout after {timeout} s)"
    if result.returncode == 0:
        return True, ""
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.M)
    return False, failed.group(1) if failed else f"(pytest exit {result.returncode})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", action="append", default=[], help="run mutants whose name contains this (repeatable)")
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="test files to run per mutant")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    parser.add_argument("--check", action="store_true", help="only check that every pattern matches once")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.k or any(word.lower() in m.name.lower() for word in args.k)]

    stale = [m for m in mutants if (ROOT / m.path).read_text().count(m.old) != 1]
    for mutant in stale:
        print(f"stale pattern ({mutant.path}): {mutant.name}", file=sys.stderr)
    if args.check or stale:
        print(f"{len(mutants) - len(stale)} of {len(mutants)} patterns match")
        return 1 if stale else 0

    with tempfile.TemporaryDirectory(prefix="zsad-mutants-") as scratch:
        tree = Path(scratch)
        copy_tree(tree)
        start = time.time()
        own_tests = sorted({test for mutant in mutants for test in mutant.tests})
        passed, failure = run_tests(tree, list(dict.fromkeys([*args.tests, *own_tests])), args.timeout)
        if not passed:
            print(f"the unmutated tree fails ({failure}); fix that first", file=sys.stderr)
            return 1
        print(f"baseline passes ({time.time() - start:.0f} s)\n", flush=True)
        print("| mutant | caught | first failing test | s |\n|---|---|---|---:|", flush=True)
        survivors = 0
        for mutant in mutants:
            path = tree / mutant.path
            original = path.read_text()
            path.write_text(original.replace(mutant.old, mutant.new))
            start = time.time()
            try:
                passed, failure = run_tests(tree, list(mutant.tests) or args.tests, args.timeout)
            finally:
                path.write_text(original)
            survivors += passed
            print(f"| {mutant.name} | {'**no**' if passed else 'yes'} | {failure} | {time.time() - start:.0f} |", flush=True)
        caught = len(mutants) - survivors
        issue = [m for m in mutants if m.name.startswith("issue:")]
        outside = [m for m in mutants if m.tests]
        print(f"\n{caught} of {len(mutants)} mutants caught ({len(issue)} of the kinds issue 9 names, "
              f"{len(outside)} in data, schedules and commands, {len(mutants) - len(issue) - len(outside)} further ones)")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
