#!/usr/bin/env python
"""Benchmark AUPRO implementations on the same synthetic maps.

Times ``zsad.metrics.aupro`` in exact, binned and cflow modes against a plain 200-threshold loop that
re-labels the connected components of every mask at every threshold (the algorithm that the AnomalyCLIP /
Crane / cflow-ad repositories ship, re-written here from its description), and prints a Markdown table.

    python examples/benchmarks/aupro.py --num-maps 150 --size 518 --seed 0 --output docs/aupro_benchmark.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

import numpy as np
import scipy
import torch
from scipy import ndimage

from zsad.metrics import aupro


def make_data(num_maps: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed noise maps (sigma 4, as ZSAD pipelines smooth) with elliptic defects in 2/3 of the images."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_maps, size, size), dtype=np.float32)
    maps = np.empty((num_maps, size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(num_maps):
        if i % 3:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0.1, 0.9, 2) * size
                ry, rx = rng.uniform(0.01, 0.12, 2) * size
                masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        noise = rng.standard_normal((size, size)).astype(np.float32)
        signal = masks[i] * rng.uniform(0.0, 1.2)  # some defects barely visible
        maps[i] = ndimage.gaussian_filter(noise * 4 + signal * 4, sigma=4)
    maps -= maps.min()
    maps /= maps.max()
    return maps, masks


def loop_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, steps: int = 200) -> float:
    """The reference-repository algorithm: 200 uniform thresholds, connected components per threshold."""
    structure = np.ones((3, 3), dtype=bool)
    lo, hi = maps.min(), maps.max()
    delta = (hi - lo) / steps
    fprs, pros = [], []
    for th in np.arange(lo, hi, delta):
        binary = maps > th
        region_overlaps = []
        for pred, mask in zip(binary, masks):
            labelled, n = ndimage.label(mask, structure=structure)
            for k in range(1, n + 1):
                coords = np.nonzero(labelled == k)
                region_overlaps.append(pred[coords].sum() / coords[0].size)
        inverse = 1 - masks
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(np.mean(region_overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < fpr_limit
    fprs, pros = fprs[keep], pros[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(np.trapezoid(pros[::-1], fprs[::-1]))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, repeats: int) -> tuple[float, float, list[float]]:
    """(value, median seconds, all times) over ``repeats`` calls."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, statistics.median(times), times


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-maps", type=int, default=150)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per zsad mode (median reported)")
    parser.add_argument("--num-thresholds", type=int, default=1000, help="binned mode thresholds")
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow 200-threshold loop")
    parser.add_argument("--output", type=str, default=None, help="also write the Markdown table to this file")
    args = parser.parse_args(argv)

    maps, masks = make_data(args.num_maps, args.size, args.seed)
    rows = []  # (method, value, median s, times)

    def add(name, fn, repeats=args.repeats):
        value, med, times = timed(fn, repeats)
        rows.append((name, value, med, times))
        print(f"{name}: {value:.6f} in {med:.3f} s (runs: {', '.join(f'{t:.2f}' for t in times)})", flush=True)

    add("zsad exact (numpy, default)", lambda: aupro(maps, masks))
    add(f"zsad binned ({args.num_thresholds} thresholds)", lambda: aupro(maps, masks, num_thresholds=args.num_thresholds))
    add("zsad cflow (200 thresholds, paper-comparable)", lambda: aupro(maps, masks, mode="cflow"))
    add("zsad exact (torch backend, CPU, full sort)", lambda: aupro(torch.from_numpy(maps), masks, backend="torch"), 1)
    if torch.cuda.is_available():
        gpu_maps = torch.from_numpy(maps).cuda()
        aupro(gpu_maps, masks)  # warm-up

        def on_gpu():
            value = aupro(gpu_maps, masks)
            torch.cuda.synchronize()
            return value

        add(f"zsad exact (torch, {torch.cuda.get_device_name()})", on_gpu)
    if not args.skip_loop:
        add("200-threshold connected-component loop (reference-code algorithm)", lambda: loop_aupro(maps, masks), 1)

    loop = rows[-1][2] if not args.skip_loop else None
    exact = rows[0][1]
    args_used = argv if argv is not None else sys.argv[1:]
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + args_used)
    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus_usable = os.cpu_count()
    lines = [
        f"Command: `{cmd}`",
        "",
        f"Machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs ({cpus_usable} usable), "
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "",
        f"Data: {args.num_maps} maps of {args.size}x{args.size} float32 ({maps.size / 1e6:.1f} M pixels), "
        f"{int(masks.reshape(len(masks), -1).any(1).sum())} anomalous images, seed {args.seed}. "
        f"Times are medians of {args.repeats} calls (single call for the torch-CPU and loop rows).",
        "",
        "| Method | Time (s) | Speed-up vs loop | AUPRO@0.3 | Difference to exact |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, value, med, _ in rows:
        speed = f"{loop / med:.0f}x" if loop else "-"
        lines.append(f"| {name} | {med:.2f} | {speed} | {value:.5f} | {value - exact:+.5f} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(table)
    return table


if __name__ == "__main__":
    main()
