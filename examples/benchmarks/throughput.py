#!/usr/bin/env python
"""Speed and memory of every zsad method: inference and training throughput, the cost relative to a plain
CLIP vision forward, and the agreement of bf16/fp16 with fp32.

    # GPU table: every method, batch 1/8/32, bf16, inference and training, 518 px, ViT-L/14@336 shapes
    python examples/benchmarks/throughput.py --batch-sizes 1 8 32 --dtypes bfloat16 --modes inference training
    # CPU efficiency: time and FLOP ratios against transformers' CLIPVisionModel (same shapes, dtype, batch)
    python examples/benchmarks/throughput.py --clip-ratio --shape vit-b16 --image-size 224 --batch-sizes 2
    # bf16 / fp16 maps against fp32 on a synthetic set (max abs diff, image and pixel AUROC), after
    # training each method 60 steps and giving it normal references so that its scores mean something
    python examples/benchmarks/throughput.py --compare-fp32 --shape tiny --image-size 64 --compare-images 128 --adapt-steps 60
    # CI smoke run on a tiny model (< 30 s)
    python examples/benchmarks/throughput.py --smoke

Models are built with random weights at the chosen backbone shape (no download: speed does not depend on
weight values). Prompts are tokenized with a word-level stand-in tokenizer so prompt lengths are
realistic. Timings exclude image decoding; the Gaussian blur and upsampling run on the device. Each
table row names the machine, dtype and batch; results go to stdout as Markdown (and --json FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import sys
import time
from collections.abc import Callable

import torch
from transformers import CLIPConfig, CLIPVisionModel

import zsad
from zsad import ZSADImageProcessor
from zsad.data.synthetic import iter_synthetic_samples
from zsad.metrics import auroc
from zsad.configuration_zsad import VIT_L14_336_CLIP_CONFIG
from zsad.training import build_optimizer
from zsad.testing import tiny_clip_config

SHAPES: dict[str, Callable[[], CLIPConfig]] = {
    "vit-l14-336": lambda: CLIPConfig(**VIT_L14_336_CLIP_CONFIG),
    "vit-b16": lambda: CLIPConfig(
        projection_dim=512,
        text_config={**VIT_L14_336_CLIP_CONFIG["text_config"], "hidden_size": 512, "intermediate_size": 2048,
                     "num_attention_heads": 8, "projection_dim": 512},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                       "num_hidden_layers": 12, "image_size": 224, "patch_size": 16, "hidden_act": "quick_gelu",
                       "projection_dim": 512},
    ),
    "tiny": lambda: tiny_clip_config(vision_layers=4, text_layers=2, hidden_size=32, patch_size=4),
}
# Method variants: (registered method, config overrides).
VARIANTS: dict[str, tuple[str, dict]] = {name: (name, {}) for name in zsad.MODEL_CLASSES}
VARIANTS["crane+"] = ("crane", {"dino_attention": True})
VARIANTS["headclip-dynamic"] = ("headclip", {"head_weight_mode": "dynamic"})
DINO_TINY = {"model_type": "dinov2_with_registers", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "mlp_ratio": 2, "patch_size": 4, "image_size": 64, "num_register_tokens": 2}


class WordTokenizer:
    """Stand-in for the CLIP tokenizer: one id per word or punctuation mark (hash-based), BOS/EOS around."""

    def __init__(self, text_config):
        self.vocab_size = text_config.vocab_size
        self.bos, self.eos = text_config.bos_token_id, text_config.eos_token_id

    def _ids(self, text: str) -> list[int]:
        words = re.findall(r"[\w']+|[^\w\s]", text.lower())
        return [(sum(map(ord, w)) * 7919 + 1) % (self.vocab_size - 3) for w in words]

    def __call__(self, texts, add_special_tokens: bool = True, truncation: bool = False, max_length: int | None = None):
        single = isinstance(texts, str)
        rows = []
        for text in [texts] if single else texts:
            ids = self._ids(text)
            if add_special_tokens:
                ids = [self.bos, *ids[: (max_length or 10**9) - 2], self.eos]
            rows.append(ids)
        return {"input_ids": rows[0] if single else rows}


def build_model(variant: str, shape: str, image_size: int) -> zsad.ZSADPreTrainedModel:
    """A random-weight model of `variant` at the backbone `shape`, prompts tokenized, in eval mode."""
    method, overrides = VARIANTS[variant]
    model_class = zsad.MODEL_CLASSES[method]
    clip_config = SHAPES[shape]()
    overrides = dict(overrides)
    if overrides.get("dino_attention") and shape == "tiny":
        overrides["dino_config"] = dict(DINO_TINY)
    config = model_class.config_class(clip_config=clip_config.to_dict(), image_size=image_size, **overrides)
    model_class.tokenize_prompts(config, WordTokenizer(clip_config.text_config))
    torch.manual_seed(0)
    return model_class(config).eval()


def variants_for(shape: str, requested: list[str] | None) -> list[str]:
    """The requested variants (default: all), without Crane+ on backbones whose patch size differs from
    DINOv2's 14 (its patch grid must match CLIP's)."""
    patch = SHAPES[shape]().vision_config.patch_size
    names = requested or list(VARIANTS)
    return [n for n in names if not (VARIANTS[n][1].get("dino_attention") and patch != 14 and shape != "tiny")]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(function: Callable[[], object], device: torch.device, warmup: int, iters: int, repeats: int = 1) -> float:
    """Best over `repeats` of the mean wall time of `iters` calls (after `warmup` calls)."""
    for _ in range(warmup):
        function()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            function()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def autocast_context(device: torch.device, dtype: torch.dtype, enabled: bool):
    return torch.autocast(device.type, dtype=dtype) if enabled and dtype != torch.float32 else contextlib.nullcontext()


def synthetic_batch(batch: int, size: int, device: torch.device, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(batch)
    pixels = torch.randn(batch, 3, size, size, generator=generator).to(device, dtype)
    masks = torch.zeros(batch, size, size)
    masks[::2, size // 4 : size // 2, size // 4 : size // 2] = 1  # every other image anomalous
    return pixels, masks.to(device), (masks.flatten(1).amax(1) > 0).long().to(device)


def categories(model, batch: int):
    """Each image's category for a class-aware model that has class names (AdaCLIP); else None (the
    training-free models then use their `object_name` text)."""
    names = model.config.class_names if model.class_aware else None
    return [names[0]] * batch if names else None


# ---------------------------------------------------------------------------------------- throughput
def throughput_row(model, variant: str, mode: str, batch: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    """images/s and peak memory of one (variant, mode, batch, dtype)."""
    size = model.config.image_size
    pixels, masks, labels = synthetic_batch(batch, size, device, dtype)
    model = model.to(device=device, dtype=dtype if not args.autocast else torch.float32)
    forward = torch.compile(model) if args.compile else model
    cats = categories(model, batch)
    if mode == "inference":
        model.eval()

        def step():
            with torch.inference_mode(), autocast_context(device, dtype, args.autocast):
                return forward(pixel_values=pixels, categories=cats).anomaly_maps
    else:
        model.train()
        if model.trains_through_vision:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            with autocast_context(device, dtype, args.autocast):
                loss = forward(pixel_values=pixels, masks=masks, labels=labels, categories=cats).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(step, device, args.warmup, args.iters)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if mode == "training" and model.trains_through_vision:
        model.gradient_checkpointing_disable()
    model.eval()
    return {
        "method": variant, "mode": mode, "machine": machine_name(device), "dtype": args_dtype_name(dtype, args),
        "batch": batch, "image_size": size, "compile": args.compile, "images_per_s": batch / seconds,
        "ms_per_image": 1000 * seconds / batch, "peak_memory_gib": memory,
    }


def args_dtype_name(dtype: torch.dtype, args) -> str:
    name = str(dtype).removeprefix("torch.")
    return f"autocast {name}" if args.autocast and dtype != torch.float32 else name


# ---------------------------------------------------------------------------------------- FLOPs
def vision_tower_flops(vision_config, tokens: int, dense_kinds: int = 0, dense_layers: int = 0) -> dict[str, float]:
    """Multiply-add FLOPs (x2) of a CLIP vision tower over `tokens` tokens, itemised.

    Per layer: q/k/v/out projections `2 T (4 W^2)`, MLP `2 T (2 W M)`, attention `2 (2 T^2 W)` (scores
    and A V). A dense layer adds, per self-correlation kind, one more attention `4 T^2 W` and one dense
    `out_proj` `2 T W^2` (the kinds are summed before it).
    """
    width, mlp, depth = vision_config.hidden_size, vision_config.intermediate_size, vision_config.num_hidden_layers
    return {
        "linear": depth * 2 * tokens * (4 * width**2 + 2 * width * mlp),
        "attention": depth * 4 * tokens**2 * width,
        "dense attention": dense_layers * (dense_kinds * 4 * tokens**2 * width + 2 * tokens * width**2),
    }


def patch_embedding_flops(vision_config, patches: int) -> float:
    """The patch embedding convolution over `patches` patches: `2 N (3 p^2) W`."""
    return 2 * patches * 3 * vision_config.patch_size**2 * vision_config.hidden_size


def text_flops(text_config, sequences: int, length: int) -> float:
    width, mlp, depth = text_config.hidden_size, text_config.intermediate_size, text_config.num_hidden_layers
    return sequences * depth * (2 * length * (4 * width**2 + 2 * width * mlp) + 4 * length**2 * width)


def analytic_flops(model, batch: int) -> dict[str, float]:
    """Per-batch FLOPs of `model`'s inference forward, written out by part (matmuls and attention only)."""
    config = model.config
    vision = config.clip_config.vision_config
    grid = config.image_size // vision.patch_size
    patches = grid * grid
    tokens = 1 + patches
    embed = config.clip_config.projection_dim
    kinds = len(config.dense_attention.split("+")) if config.dense_attention else 0
    dense_layers = vision.num_hidden_layers - config.dense_start_layer + 1 if kinds else 0
    probe = probe_forward(model)
    parts = {k: batch * v for k, v in vision_tower_flops(vision, tokens + probe["visual_prompts"], kinds, dense_layers).items()}
    parts["patch embedding + readout"] = batch * (
        patch_embedding_flops(vision, patches) + len(config.feature_layers) * 2 * patches * vision.hidden_size * embed
    )
    if probe["prompt_free_pass"]:
        parts["prompt-free pass"] = batch * sum(vision_tower_flops(vision, tokens).values())
    if getattr(config, "dino_attention", False):
        dino = config.dino_config
        dino_tokens = 1 + dino.num_register_tokens + patches
        dino_vision = type("DinoShape", (), {"hidden_size": dino.hidden_size, "num_hidden_layers": dino.num_hidden_layers,
                                             "intermediate_size": int(dino.mlp_ratio * dino.hidden_size)})
        parts["DINOv2 + D-Attn"] = batch * (
            sum(vision_tower_flops(dino_vision, dino_tokens).values())
            + 2 * patches**2 * dino.hidden_size  # patch similarities
            + 2 * patches * vision.hidden_size**2 * 2 + 2 * patches**2 * vision.hidden_size  # V, out_proj, A V
            + 2 * patches * vision.hidden_size * embed
        )
    daka = getattr(model, "daka", None)
    if daka is not None:  # DA-CLIP: the router's W_r, then per DAKA layer every LoRA expert and the token gate per patch
        parts["router + DAKA"] = batch * (2 * model.router.projection.weight.numel() + sum(
            2 * patches * (layer.lora_A.numel() + layer.lora_B.numel() + (layer.gate.weight.numel() if layer.gate is not None else 0))
            for layer in daka.experts
        ))
    if getattr(config, "window_sizes", None):  # WinCLIP: every k x k window is a tower pass over 1 + k^2 tokens
        parts["windows"] = batch * sum(
            (grid - k + 1) ** 2 * (sum(vision_tower_flops(vision, 1 + k * k).values()) + 2 * vision.hidden_size * embed)
            for k in config.window_sizes
        )
    if probe["text_sequences_per_image"]:  # prompts that depend on the image: text encoded per image
        ids = model.prompt_tokens
        parts["text (per image)"] = batch * text_flops(config.clip_config.text_config, probe["text_sequences_per_image"], ids.max_length)
    return parts


def probe_forward(model) -> dict[str, int]:
    """What one forward of `model` runs besides the shared pass, observed on a one-image batch: the
    prompt-free pass (AdaCLIP, DA-CLIP, dynamic HeadCLIP), visual prompt tokens, per-image text."""
    seen = {"prompt_free_pass": 0, "visual_prompts": 0, "text_sequences_per_image": 0}
    original_free, original_encode = model.prompt_free_embeds, model.encode_image

    def prompt_free(pixels):
        seen["prompt_free_pass"] = 1
        return original_free(pixels)

    def encode(pixels, **options):
        prompts = options.get("visual_prompts") or {}
        seen["visual_prompts"] = max([seen["visual_prompts"], *(p.shape[-2] for p in prompts.values())])
        return original_encode(pixels, **options)

    model.prompt_free_embeds, model.encode_image = prompt_free, encode
    try:
        size = model.config.image_size
        pixels = torch.zeros(1, 3, size, size, dtype=model.dtype, device=model.device)
        with torch.inference_mode():
            features = model.image_features(pixels, categories(model, 1))
            text = model.prompt_text_features(features, categories(model, 1))
    finally:
        del model.prompt_free_embeds, model.encode_image
    if text.dim() == 3:
        rows = model.prompt_tokens.input_ids.shape[0]
        seen["text_sequences_per_image"] = rows // len(model.config.class_names) if model.class_aware else rows
    return seen


def clip_ratio_rows(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Each method's inference time / `CLIPVisionModel`'s at the same shapes, dtype and batch, next to the
    ratio of their analytic FLOPs (`analytic_flops`: what the method needs, not what the code runs, so a
    wasteful implementation shows as time ratio > FLOP ratio)."""
    rows = []
    for batch in args.batch_sizes:
        for variant in variants_for(args.shape, args.methods):
            model = build_model(variant, args.shape, args.image_size).to(device, dtype)
            clip_vision = CLIPVisionModel(model.config.clip_config.vision_config).to(device, dtype).eval()
            pixels = synthetic_batch(batch, model.config.image_size, device, dtype)[0]
            cats = categories(model, batch)

            def method():
                with torch.inference_mode():
                    return model(pixel_values=pixels, categories=cats).anomaly_maps

            def plain():
                with torch.inference_mode():
                    return clip_vision(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output

            times = {"method": [], "clip": []}
            for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
                times["method"].append(seconds_per_call(method, device, 1, args.iters))
                times["clip"].append(seconds_per_call(plain, device, 1, args.iters))
            flops = analytic_flops(model, batch)
            vision = model.config.clip_config.vision_config
            patches = (model.config.image_size // vision.patch_size) ** 2
            clip_flops = batch * (sum(vision_tower_flops(vision, 1 + patches).values()) + patch_embedding_flops(vision, patches))
            time_ratio = min(times["method"]) / min(times["clip"])
            flop_ratio = sum(flops.values()) / clip_flops
            rows.append({
                "method": variant, "shape": args.shape, "image_size": model.config.image_size, "batch": batch,
                "dtype": str(dtype).removeprefix("torch."), "machine": machine_name(device),
                "time_ratio": time_ratio, "flop_ratio": flop_ratio, "time_over_flop_ratio": time_ratio / flop_ratio,
                "ms_per_image": 1000 * min(times["method"]) / batch, "flops_by_part": {k: v / batch for k, v in flops.items()},
            })
            print(f"  {variant}: time ratio {time_ratio:.3f}, FLOP ratio {flop_ratio:.3f}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------- precision
def synthetic_defect_splits(count: int, size: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Test and adaptation splits of `count` images each (rounded up to a multiple of 4), each
    `(pixels, (B, H, W) masks, labels)`: per texture (noise, grid), half normal, half defective
    (`zsad.data.synthetic`, seed 0). The splits are disjoint images of the same texture styles
    (alternate samples of one set)."""
    processor = ZSADImageProcessor(image_size=size)
    per_kind = 2 * -(-count // 4)  # normal (or defective) images per texture, both splits
    samples = list(iter_synthetic_samples(per_kind, per_kind, size=size, textures=("noise", "grid"), seed=0))
    batch = processor([image for *_, image, _, _ in samples], masks=[mask for *_, mask, _ in samples])
    full = (batch["pixel_values"], batch["masks"].reshape(len(samples), size, size),
            torch.tensor([label for _, _, label, *_ in samples]))
    return tuple(t[0::2] for t in full), tuple(t[1::2] for t in full)


def adapt(model, steps: int, split: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Give `model`'s scores a meaning before the comparison: train its adapters (if it has any) in fp32
    for `steps` Adam steps (the method's optimiser, batch 8) on `split`; return the split's normal
    images, to be set as normal references (the few-shot memory) in each precision.

    The memory is there for every method because the global embedding of a random backbone carries no
    image-level defect signal, even after training: without it, image scores stay near chance."""
    images, masks, labels = split
    if model.config.training_defaults is not None:
        model.train()
        optimizer = build_optimizer(model)
        generator = torch.Generator().manual_seed(0)
        batches_per_epoch = max(1, len(images) // 8)
        device = model.device
        for step in range(steps):
            if step % batches_per_epoch == 0:
                batches = torch.randperm(len(images), generator=generator).split(8)
            batch = batches[step % batches_per_epoch]
            loss = model(pixel_values=images[batch].to(device), masks=masks[batch].to(device),
                         labels=labels[batch].to(device), categories=categories(model, len(batch))).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
    return images[labels == 0]


def compare_fp32_rows(args, device: torch.device) -> list[dict]:
    """bf16/fp16 (weights cast, or autocast) against fp32 on synthetic defects: map max abs diff, AUROCs.

    With `--adapt-steps`, each method first gets meaningful scores (`adapt`) from a split disjoint from
    the test set; `score_std_fp32` is the spread of the fp32 image scores, against which to read the
    score differences."""
    (images, masks, labels), adaptation_split = synthetic_defect_splits(args.compare_images, args.image_size)
    rows = []
    for variant in variants_for(args.shape, args.methods):
        model = build_model(variant, args.shape, args.image_size).to(device)
        references, adapted = None, "none"
        if args.adapt_steps:
            references = adapt(model, args.adapt_steps, adaptation_split)
            trained = f"trained {args.adapt_steps} steps + " if model.config.training_defaults is not None else ""
            adapted = f"{trained}{len(references)} normal references"
        results = {}
        for dtype in (torch.float32, *(getattr(torch, d) for d in args.dtypes if d != "float32")):
            model = model.to(device=device, dtype=torch.float32 if args.autocast else dtype)
            if references is not None:
                with autocast_context(device, dtype, args.autocast):
                    model.set_normal_references(references.to(device, model.dtype))
            maps, scores = [], []
            for start in range(0, len(images), 8):
                pixels = images[start : start + 8].to(device, model.dtype)
                with torch.inference_mode(), autocast_context(device, dtype, args.autocast):
                    out = model(pixel_values=pixels, categories=categories(model, len(pixels)))
                maps.append(out.anomaly_maps.float().cpu())
                scores.append(out.pred_scores.float().cpu())
            results[dtype] = (torch.cat(maps), torch.cat(scores))
        reference_maps, reference_scores = results[torch.float32]
        reference = (auroc(reference_scores, labels), auroc(reference_maps, masks))
        for dtype, (maps, scores) in results.items():
            if dtype == torch.float32:
                continue
            rows.append({
                "method": variant, "dtype": args_dtype_name(dtype, args), "images": len(images), "adapted": adapted,
                "score_std_fp32": float(reference_scores.std()),
                "max_abs_map_diff": float((maps - reference_maps).abs().max()),
                "max_abs_score_diff": float((scores - reference_scores).abs().max()),
                "image_auroc_fp32": reference[0], "image_auroc": auroc(scores, labels),
                "pixel_auroc_fp32": reference[1], "pixel_auroc": auroc(maps, masks),
            })
            row = rows[-1]
            print(f"  {variant} {row['dtype']}: max map diff {row['max_abs_map_diff']:.2g}, image AUROC "
                  f"{row['image_auroc_fp32']:.4f} -> {row['image_auroc']:.4f}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------- output
def markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=sorted(VARIANTS), help="default: every method variant")
    parser.add_argument("--shape", default="vit-l14-336", choices=sorted(SHAPES), help="backbone shape (random weights)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="default: 518 (/14) or 512 (/16)")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--autocast", action="store_true", help="fp32 weights under torch.autocast instead of cast weights")
    parser.add_argument("--modes", nargs="+", default=["inference"], choices=["inference", "training"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=positive_int, default=3)
    parser.add_argument("--iters", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=3, help="--clip-ratio: interleaved repeats (best kept)")
    parser.add_argument("--clip-ratio", action="store_true", help="time and FLOP ratios against CLIPVisionModel")
    parser.add_argument("--compare-fp32", action="store_true", help="bf16/fp16 maps and AUROCs against fp32")
    parser.add_argument("--compare-images", type=positive_int, default=32, help="synthetic test images for --compare-fp32")
    parser.add_argument("--adapt-steps", type=positive_int, default=None,
                        help="--compare-fp32: first train each method's adapters this many fp32 steps on a disjoint "
                             "synthetic split, then use its normal images as normal references (every method)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for fp32 runs on Ampere+")
    parser.add_argument("--json", help="also write all rows to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny model, every mode once (CI check, < 30 s)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.image_size, args.batch_sizes, args.warmup, args.iters, args.repeats = "tiny", 32, [2], 1, 1, 1
        args.modes, args.dtypes, args.compare_images, args.adapt_steps = ["inference", "training"], ["bfloat16"], 8, 1
    if args.image_size is None:
        patch = SHAPES[args.shape]().vision_config.patch_size
        args.image_size = patch * round(518 / patch)
    return args


def main(argv=None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device = torch.device(args.device)
    results: dict[str, list[dict]] = {}
    if args.clip_ratio or args.smoke:
        results["clip_ratio"] = clip_ratio_rows(args, device, getattr(torch, args.dtypes[0]) if not args.smoke else torch.float32)
        print("\n## Cost relative to CLIPVisionModel\n")
        print(markdown(results["clip_ratio"], ["method", "shape", "image_size", "batch", "dtype", "machine", "time_ratio",
                                               "flop_ratio", "time_over_flop_ratio", "ms_per_image"]))
    if args.compare_fp32 or args.smoke:
        results["compare_fp32"] = compare_fp32_rows(args, device)
        print("\n## Reduced precision against fp32\n")
        print(markdown(results["compare_fp32"], ["method", "dtype", "images", "adapted", "score_std_fp32", "max_abs_map_diff",
                                                 "max_abs_score_diff", "image_auroc_fp32", "image_auroc", "pixel_auroc_fp32",
                                                 "pixel_auroc"]))
    if not (args.clip_ratio or args.compare_fp32) or args.smoke:
        rows = []
        for variant in variants_for(args.shape, args.methods):
            model = build_model(variant, args.shape, args.image_size)
            for dtype_name in args.dtypes:
                for mode in args.modes:
                    if mode == "training" and model.config.training_defaults is None:
                        continue  # training-free
                    for batch in args.batch_sizes:
                        rows.append(throughput_row(model, variant, mode, batch, args, device, getattr(torch, dtype_name)))
                        print(f"  {variant} {mode} {dtype_name} batch {batch}: {rows[-1]['images_per_s']:.3g} images/s",
                              file=sys.stderr, flush=True)
        results["throughput"] = rows
        print("\n## Throughput\n")
        print(markdown(rows, ["method", "mode", "machine", "dtype", "batch", "image_size", "compile", "images_per_s",
                              "ms_per_image", "peak_memory_gib"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
