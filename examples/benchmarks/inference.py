#!/usr/bin/env python
"""Inference throughput of a zsad model: images/s end to end (vision pass, text features from the cache,
maps, bilinear upsampling and Gaussian blur on the device), excluding image decoding.

    python examples/benchmarks/inference.py --method anomalyclip --batch-size 32 --dtype bfloat16 --image-size 518

Without --backbone, the model is built with ViT-L/14@336 shapes and random weights (no download; speed
does not depend on the weight values). Prints one Markdown table row with the machine, dtype and batch.
"""

import argparse
import platform
import time

import torch

import zsad


def build(method: str, backbone: str | None, image_size: int):
    model_class = zsad.MODEL_CLASSES[method]
    if backbone:
        return model_class.from_backbone(backbone, image_size=image_size)
    config = model_class.config_class(image_size=image_size)
    # Placeholder prompt token ids of realistic length; the values do not change the cost.
    eos = config.clip_config.text_config.vocab_size - 1
    for field in ("prompt_token_ids", "normal_token_ids", "anomaly_token_ids"):
        if hasattr(config, field):
            setattr(config, field, [[eos - 1] + [400 + i for i in range(14)] + [eos] for _ in range(2)])
    return model_class(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="anomalyclip", choices=sorted(zsad.MODEL_CLASSES))
    parser.add_argument("--backbone", help="CLIP id or folder (default: random ViT-L/14@336 shapes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (fp32 runs on Ampere+)")
    args = parser.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build(args.method, args.backbone, args.image_size).to(device=device, dtype=dtype).eval()
    forward = torch.compile(model) if args.compile else model
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device, dtype=dtype)

    def run():
        with torch.inference_mode():
            out = forward(pixel_values=pixels)
        return out.anomaly_maps, out.pred_scores

    for _ in range(args.warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iters):
        maps, scores = run()
    maps.sum().item()  # wait for the last batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images_per_second = args.iters * args.batch_size / seconds
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"
    memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "-"
    print("| method | machine | dtype | batch | image size | compile | images/s | ms/image | peak memory |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|")
    print(f"| {args.method} | {machine} | {args.dtype} | {args.batch_size} | {args.image_size} | {args.compile} | "
          f"{images_per_second:.3g} | {1000 / images_per_second:.4g} | {memory} |")


if __name__ == "__main__":
    main()
