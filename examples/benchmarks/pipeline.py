#!/usr/bin/env python
"""End-to-end throughput and memory of the pipeline around the model (docs/benchmarks.md, "End to end").

    # zsad detect against the model alone, tiny backbone at 224 px (where decoding weighs most)
    python examples/benchmarks/pipeline.py --shape tiny --image-size 224 --images 512 --batch-size 16
    # the same with ViT-B/16 shapes (random weights)
    python examples/benchmarks/pipeline.py --shape vit-b16 --image-size 224 --images 96 --batch-size 8
    # zsad evaluate's peak memory at 1k and 10k images, exact (in memory / spilled) and binned metrics
    python examples/benchmarks/pipeline.py --memory --images 1000 10000 --image-size 112

Throughput: N synthetic PNG textures of the chosen size are written to a temporary folder. "model only"
forwards the already preprocessed tensors in batches (AnomalyCLIP, random weights: speed does not depend
on weight values; "tiny" is a 4-layer, width-32 ViT with 16 px patches, whose forward costs next to
nothing, so that decoding and writing weigh most); "end to end" is `zsad detect` on the files (decoding, preprocessing, forward, panels,
maps, report) with `--num-workers 0`, with the default, and with the default and `--scores-only`. Fixed costs (start-up, model load) are taken
out by timing a run on N/4 images and one on N in the same process: rate = (N - N/4) / (t_N - t_N/4).
Peak RSS is the high-water mark (VmHWM) of the main process of a plain `zsad detect` on the N images,
in a process of its own (DataLoader workers are processes of their own, not included).

Memory: `zsad evaluate` of a synthetic dataset (four texture categories) in a fresh process per row;
the main process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

def machine() -> str:
    from zsad.background import usable_cores

    return f"{platform.processor() or platform.machine()}, {usable_cores()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def build_checkpoint(shape: str, image_size: int, folder: Path) -> Path:
    """AnomalyCLIP (random weights) on a backbone of `shape`, saved as a zsad checkpoint."""
    from transformers import CLIPModel

    from zsad import AnomalyCLIPModel
    from zsad.testing import save_tiny_backbone, tiny_tokenizer

    backbone = folder / "backbone"
    if shape == "tiny":  # 4 layers of width 32, patch 16: at 224 px a forward costs next to nothing
        save_tiny_backbone(backbone, image_size=image_size, patch_size=16)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from throughput import SHAPES  # the same ViT-B/16 shapes as the throughput table

        torch.manual_seed(0)
        CLIPModel(SHAPES[shape]()).save_pretrained(backbone)
        tiny_tokenizer().save_pretrained(backbone)
    model = AnomalyCLIPModel.from_backbone(str(backbone), image_size=image_size)
    model.save_pretrained(folder / "model")
    return folder / "model"


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    from zsad.data import TEXTURES, make_texture

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.png"
        make_texture(TEXTURES[index % len(TEXTURES)], size, seed=index).save(path)
        paths.append(path)
    return paths


def model_only_rate(checkpoint: Path, paths: list[Path], batch_size: int) -> float:
    from zsad import AnomalyCLIPModel, ZSADImageProcessor
    from zsad.clip.processing import load_rgb

    model = AnomalyCLIPModel.from_pretrained(checkpoint).eval()
    processor = ZSADImageProcessor(image_size=model.config.image_size)
    pixels = torch.stack([processor.preprocess_image(load_rgb(p)) for p in paths])
    with torch.inference_mode():
        model(pixel_values=pixels[:batch_size])  # warm-up
        start = time.perf_counter()
        for first in range(0, len(pixels), batch_size):
            model(pixel_values=pixels[first : first + batch_size])
        return len(pixels) / (time.perf_counter() - start)


# Runs a module as __main__ and reports its process's peak RSS (VmHWM) at exit. ru_maxrss cannot be used:
# Linux carries the parent's high-water mark into a child across fork and exec.
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("ZSAD_PEAK_RSS_KB", line.split()[1], file=sys.stderr)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_measured(module: str, args: list[str]) -> tuple[str, float]:
    """Run `python -m module args`; its stdout and the peak RSS of its main process in MiB."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, module, *args], capture_output=True, text=True)
    peak = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("ZSAD_PEAK_RSS_KB")]
    if result.returncode != 0 or not peak:
        raise RuntimeError(f"python -m {module} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout, int(peak[-1]) / 1024


def detect_argv(images, checkpoint, batch_size, workers: str, scores_only: bool, out) -> list[str]:
    return ["detect", *map(str, images), "--model", str(checkpoint), "--batch-size", str(batch_size), "--out", str(out),
            "--quiet", *(["--num-workers", workers] if workers != "default" else []), *(["--scores-only"] if scores_only else [])]


def detect_timings(checkpoint: str, images: str, batch_size: str, workers: str, scores_only: str, out: str) -> None:
    """In a child process: `zsad detect` on a warm-up, N/4 and N images; prints the timings as JSON."""
    from zsad.cli import main

    paths, batch_size = sorted(Path(images).glob("*.png")), int(batch_size)
    quarter = paths[: len(paths) // 4]
    timings = {}
    for name, subset in (("warmup", paths[:batch_size]), ("quarter", quarter), ("all", paths)):
        folder = Path(out) / name
        start = time.perf_counter()
        argv = detect_argv(subset, checkpoint, batch_size, workers, scores_only == "1", folder)
        if main(argv) != 0:
            raise SystemExit(f"zsad detect failed: {argv}")
        timings[name] = time.perf_counter() - start
    extra = timings["all"] - timings["quarter"]  # without the fixed costs; too noisy on a handful of images
    timings["rate"] = (len(paths) - len(quarter)) / extra if extra > 0 else len(paths) / timings["all"]
    print(json.dumps(timings))


def throughput(args) -> list[dict]:
    from zsad.data.loader import default_num_workers

    rows = []
    with tempfile.TemporaryDirectory(prefix="zsad-pipeline-") as scratch:
        scratch = Path(scratch)
        checkpoint = build_checkpoint(args.shape, args.image_size, scratch)
        count = args.images[0]
        paths = write_images(scratch / "images", count, args.image_size)
        model_rate = model_only_rate(checkpoint, paths, args.batch_size)
        configs = (("default", False),) if args.smoke else (("0", False), ("default", False), ("default", True))
        for index, (workers, scores_only) in enumerate(configs):
            timed = subprocess.run([sys.executable, __file__, "--detect-child", str(checkpoint), str(scratch / "images"),
                                    str(args.batch_size), workers, str(int(scores_only)), str(scratch / f"timed-{index}")],
                                   capture_output=True, text=True, check=True)
            rate = json.loads(timed.stdout.strip().splitlines()[-1])["rate"]
            # Peak memory of the plain command on all N images, in a process of its own.
            _, rss = run_measured("zsad.cli", detect_argv(
                [scratch / "images"], checkpoint, args.batch_size, workers, scores_only, scratch / f"rss-{index}"))
            rows.append({"shape": args.shape, "image_size": args.image_size, "images": count, "batch_size": args.batch_size,
                         "num_workers": default_num_workers() if workers == "default" else 0, "outputs":
                         "scores" if scores_only else "scores, panels, report", "model_only": model_rate,
                         "end_to_end": rate, "ratio": rate / model_rate, "peak_rss_mib": rss})
    print(f"Machine: {machine()}; float32; AnomalyCLIP on {args.shape} shapes (random weights), {args.image_size} px\n")
    print("| backbone | images | batch | --num-workers | outputs | model only (img/s) | zsad detect (img/s) | ratio | "
          "peak RSS (MiB) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} @ {r['image_size']} px | {r['images']} | {r['batch_size']} | {r['num_workers']} | {r['outputs']} | "
              f"{r['model_only']:.1f} | {r['end_to_end']:.1f} | {r['ratio']:.2f} | {r['peak_rss_mib']:.0f} |")
    return rows


def memory(args) -> list[dict]:
    from datasets import concatenate_datasets

    from zsad.data import make_synthetic_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="zsad-memory-") as scratch:
        scratch = Path(scratch)
        build_checkpoint("tiny", args.image_size, scratch)
        base = make_synthetic_dataset(125, 125, size=args.image_size, textures=["noise", "stripes", "grid", "dots"], seed=0)
        for count in args.images:  # 1000 rows of base repeated (4 categories), so only the count changes
            data = concatenate_datasets([base] * (count // len(base)))
            data.save_to_disk(str(scratch / f"data-{count}"))
            for mode, flags in (("exact, in memory", []), ("exact, --max-memory 64MB", ["--max-memory", "64MB"]),
                                ("binned", ["--aupro", "binned"])):
                out = scratch / f"eval-{count}-{len(rows)}"
                start = time.perf_counter()
                _, rss = run_measured("zsad.cli", ["evaluate", str(scratch / f"data-{count}"), "--split", "train",
                                                   "--model", str(scratch / "model"), "--batch-size", "32", "--out", str(out),
                                                   *flags])
                rows.append({"images": count, "mode": mode, "peak_rss_mib": rss, "seconds": time.perf_counter() - start})
    print(f"Machine: {machine()}; zsad evaluate, tiny backbone, {args.image_size} px maps "
          f"({args.image_size * args.image_size * 4 / 1024:.0f} KiB each in float32), 4 categories\n")
    print("| images | metrics | peak RSS (MiB) | wall (s) |")
    print("|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['mode']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |")
    return rows


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--detect-child":
        detect_timings(*sys.argv[2:8])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "vit-b16"], default="tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, nargs="+", default=[256], help="images (throughput: the first count)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--memory", action="store_true", help="zsad evaluate's peak memory per image count instead")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--smoke", action="store_true", help="throughput: the default --num-workers row only (CI)")
    args = parser.parse_args(argv)
    if min(args.images) < 8 or args.batch_size < 1 or args.image_size < 16:
        parser.error("--images must be at least 8, --batch-size at least 1, --image-size at least 16")
    rows = memory(args) if args.memory else throughput(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
