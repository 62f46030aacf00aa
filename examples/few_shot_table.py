"""Zero-shot vs. k normal references (k = 0, 1, 4, 16) on MVTec-layout data: the table of docs/few_shot.md.

    python examples/few_shot_table.py DATA/magnetic_tile DATA/mpdd_metal_plate \
        --architecture CLIP_ARCH [--backbone DIR] [--per-class 20] [--image-size 224] [--models ...]

For ZeroShotCLIP, AnomalyCLIP and WinCLIP on one CLIP backbone, every dataset (MVTec AD layout, one
category each) is scored without references and with the first k normal references (sorted by name)
from `train/good`; a category without `train/good` gives up its first 16 `test/good` images, which are
then left out of the evaluation for every k. The evaluation uses a seeded subsample of `--per-class`
normal and `--per-class` anomalous test images. Image AUROC, pixel AUROC and exact AUPRO (FPR <= 0.3)
at `--image-size`.

`--backbone` is a CLIP folder or Hub id. Without it, a randomly initialised CLIP with the architecture
and tokenizer at `--architecture` is written to a temporary folder (nothing pretrained is downloaded):
the numbers then measure what the machinery does with random features, not zero-shot accuracy, and
AnomalyCLIP's prompts are untrained.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch

import zsad
from zsad.clip.processing import ZSADImageProcessor
from zsad.data.layouts import scan_mvtec
from zsad.metrics import aupro
from zsad.metrics.classification import auroc
from zsad.testing import save_random_backbone

SHOTS = (0, 1, 4, 16)
MODELS = {"ZeroShotCLIP": zsad.ZeroShotCLIPModel, "AnomalyCLIP": zsad.AnomalyCLIPModel, "WinCLIP": zsad.WinCLIPModel}


def split_samples(root: Path, per_class: int, seed: int) -> tuple[list[Path], list]:
    """(reference image paths, evaluation samples) of the single category under `root`."""
    samples = scan_mvtec(root)
    references = sorted((s.image_path for s in samples if s.split == "train" and s.label == 0), key=str)
    normal = sorted((s for s in samples if s.split == "test" and s.label == 0), key=lambda s: s.image_id)
    if not references:
        references, normal = [s.image_path for s in normal[: max(SHOTS)]], normal[max(SHOTS) :]
    anomalous = sorted((s for s in samples if s.split == "test" and s.label == 1), key=lambda s: s.image_id)
    rng = random.Random(seed)
    chosen = rng.sample(normal, min(per_class, len(normal))) + rng.sample(anomalous, min(per_class, len(anomalous)))
    return references[: max(SHOTS)], chosen


@torch.no_grad()
def score(model, pixels: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = [model(chunk) for chunk in pixels.split(batch_size)]
    return torch.cat([o.pred_scores for o in outputs]), torch.cat([o.anomaly_maps for o in outputs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path, help="MVTec-layout folders, one category each")
    parser.add_argument("--backbone", help="CLIP folder or Hub id (default: a random CLIP, see --architecture)")
    parser.add_argument("--architecture", help="folder with a CLIP config.json + tokenizer for the random CLIP "
                        "(needed without --backbone)")
    parser.add_argument("--per-class", type=int, default=20, help="normal and anomalous test images per dataset")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    if not (args.backbone or args.architecture):
        parser.error("pass --backbone DIR (a CLIP) or --architecture DIR (config.json + tokenizer of a random CLIP)")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        backbone = args.backbone or str(save_random_backbone(args.architecture, Path(scratch) / "clip", seed=args.seed))
        models = {name: MODELS[name].from_backbone(backbone, image_size=args.image_size).eval() for name in args.models}
    processor = ZSADImageProcessor(image_size=args.image_size)
    rows: dict[tuple[str, int], list[str]] = {(name, k): [] for name in models for k in SHOTS}
    for root in args.datasets:
        reference_paths, samples = split_samples(root, args.per_class, args.seed)
        references = torch.stack([processor.preprocess_image(path) for path in reference_paths])
        batch = processor([s.image_path for s in samples], [s.mask_path for s in samples])
        labels = torch.tensor([s.label for s in samples])
        print(f"{root.name}: {len(samples)} test images ({int(labels.sum())} anomalous), {len(reference_paths)} reference candidates")
        for name, model in models.items():
            for k in SHOTS:
                if k:
                    model.set_normal_references(references[:k])
                else:
                    model.clear_normal_references()
                scores, maps = score(model, batch["pixel_values"])
                metrics = (
                    auroc(scores, labels),
                    auroc(maps.flatten(), batch["masks"].flatten()),
                    aupro(maps, batch["masks"]),
                )
                rows[(name, k)].append(" / ".join(f"{100 * value:.1f}" for value in metrics))
                print(f"  {name} k={k}: image AUROC / pixel AUROC / AUPRO = {rows[(name, k)][-1]}")
    header = " | ".join(f"{root.name} (I-AUROC / P-AUROC / AUPRO)" for root in args.datasets)
    print(f"\n| model | k | {header} |\n|---|---|" + "---|" * len(args.datasets))
    for (name, k), cells in rows.items():
        print(f"| {name} | {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
