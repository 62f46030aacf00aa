#!/usr/bin/env python
"""DA-CLIP across domains: does the router learn the training domains, and does it beat AnomalyCLIP?

    python examples/experiments/daclip_domains.py --data DATA [--backbone DIR] [--smoke]

Four small real domains in MVTec AD layout (`--data`: magnetic_tile, mpdd_metal_plate, head_ct,
brain_mri): the first three are the training mixture and `--held-out` (default brain_mri) is never
trained on. From each domain, `--per-folder` images of every test folder (normal and each defect type)
train and the next `--per-folder` are held out. DA-CLIP (`zsad train --method daclip`, several datasets:
the routing loss on the domain names) and AnomalyCLIP (the same mixture, the same steps) are trained,
then, per domain on its held-out images:

- routing: the share of images per top-1 expert of the image router, its purity (the share of the
  domain's most used expert), and, over the held-out images of all training domains, the normalised
  mutual information between top-1 expert and domain: before training, after training, and after
  training a control DA-CLIP without domain ids (`routing_loss_weight=0`: load balance only);
- image AUROC, and pixel AUROC where the domain has masks, for DA-CLIP and AnomalyCLIP.

Without `--backbone` the backbone is a random tiny CLIP (4 layers, width 32): no pretrained CLIP is
available offline, so AUROC means nothing there while the routing structure is still measurable. With a
GPU, pass the real backbone (`--backbone openai/clip-vit-large-patch14-336 --image-size 518`) and more
data: docs/models/daclip.md gives the command. `--smoke` is a CI-sized run (a few images, two steps).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from zsad import AnomalyCLIPModel, DACLIPModel, ZSADImageProcessor
from zsad.cli import main as zsad
from zsad.data import collate_fn, convert_mvtec, load_anomaly_dataset, with_anomaly_transform
from zsad.evaluation import evaluate_datasets
from zsad.testing import save_tiny_backbone

DOMAINS = {"magnetic_tile": "magnetic_tile", "mpdd_metal_plate": "metal_plate", "head_ct": "head_ct", "brain_mri": "brain_mri"}


def split_domain(source: Path, work: Path, name: str, per_folder: int) -> tuple[Path, Path]:
    """Copy `per_folder` images of each test folder (with masks) into a training and a held-out MVTec
    layout, convert both (dataset name = the domain) and return the two converted folders."""
    folders = {}
    for part, offset in (("train", 0), ("held_out", per_folder)):
        root = work / f"{name}_{part}_src" / name
        for folder in sorted((source / "test").iterdir()):
            for image in sorted(folder.iterdir())[offset : offset + per_folder]:
                (root / "test" / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / "test" / folder.name / image.name)
                mask = source / "ground_truth" / folder.name / f"{image.stem}_mask.png"
                if mask.is_file():
                    (root / "ground_truth" / folder.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy(mask, root / "ground_truth" / folder.name / mask.name)
        folders[part] = work / f"{name}_{part}"
        convert_mvtec(root.parent, folders[part], dataset_name=name)
    return folders["train"], folders["held_out"]


def normalized_mutual_information(a: list[int], b: list[str]) -> float:
    """I(A; B) / mean(H(A), H(B)) from the joint counts."""
    n = len(a)
    joint, pa, pb = Counter(zip(a, b)), Counter(a), Counter(b)
    mutual = sum(c / n * math.log(c * n / (pa[x] * pb[y])) for (x, y), c in joint.items())
    entropy = lambda counts: -sum(c / n * math.log(c / n) for c in counts.values())  # noqa: E731
    denominator = (entropy(pa) + entropy(pb)) / 2
    return mutual / denominator if denominator > 0 else 0.0


@torch.no_grad()
def top1_experts(model: DACLIPModel, dataset_path: Path, image_size: int) -> list[int]:
    dataset = load_anomaly_dataset(dataset_path, split="test")
    loader = DataLoader(with_anomaly_transform(dataset, ZSADImageProcessor(image_size=image_size)), batch_size=16,
                        collate_fn=collate_fn)
    model.eval()
    return [int(e) for batch in loader for e in model.image_features(batch["pixel_values"]).extras["router_probs"].argmax(1)]


def train(method: str, backbone: str, datasets: list[Path], out: Path, args, *model_config: str) -> None:
    argv = ["train", "--method", method, "--backbone", backbone, "--image-size", str(args.image_size),
            "--train-batch-size", str(args.batch_size), "--max-train-steps", str(args.steps), "--seed", str(args.seed),
            "--checkpointing-steps", str(args.steps), "--output-dir", str(out)]
    if model_config:
        argv += ["--model-config", *model_config]
    for dataset in datasets:
        argv += ["--dataset", str(dataset)]
    if zsad(argv) != 0:
        raise SystemExit(f"zsad train --method {method} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder holding the four domains in MVTec AD layout")
    parser.add_argument("--backbone", help="CLIP id or folder (default: a random tiny CLIP)")
    parser.add_argument("--held-out", default="brain_mri", choices=sorted(DOMAINS), help="the domain never trained on")
    parser.add_argument("--per-folder", type=int, default=12, help="training (and held-out) images per test folder")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--seed", type=int, default=111)
    parser.add_argument("--smoke", action="store_true", help="2 images per folder, 2 steps: checks the script runs")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.per_folder, args.steps = 2, 2

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        backbone = args.backbone or str(save_tiny_backbone(work / "backbone", seed=0, hidden_size=32))
        splits = {name: split_domain(args.data / name / category, work, name, args.per_folder)
                  for name, category in DOMAINS.items()}
        training = [splits[name][0] for name in DOMAINS if name != args.held_out]
        torch.manual_seed(args.seed)
        untrained = DACLIPModel.from_backbone(backbone, image_size=args.image_size,
                                              domain_names=sorted(n for n in DOMAINS if n != args.held_out))
        before = {name: top1_experts(untrained, held, args.image_size) for name, (_, held) in splits.items()}
        train("daclip", backbone, training, work / "daclip", args)
        train("daclip", backbone, training, work / "daclip_no_ids", args, "routing_loss_weight=0")
        train("anomalyclip", backbone, training, work / "anomalyclip", args)
        daclip = DACLIPModel.from_pretrained(work / "daclip").eval()
        unsupervised = DACLIPModel.from_pretrained(work / "daclip_no_ids").eval()
        anomalyclip = AnomalyCLIPModel.from_pretrained(work / "anomalyclip").eval()
        after = {name: top1_experts(daclip, held, args.image_size) for name, (_, held) in splits.items()}
        without_ids = {name: top1_experts(unsupervised, held, args.image_size) for name, (_, held) in splits.items()}
        held_out = [str(held) for _, held in splits.values()]
        metrics = {
            label: evaluate_datasets(model, held_out, output_dir=work / f"eval_{label}", batch_size=16, log=lambda *_: None)
            for label, model in (("daclip", daclip), ("anomalyclip", anomalyclip))
        }

    seen = [name for name in DOMAINS if name != args.held_out]
    nmi = {when: normalized_mutual_information([e for n in seen for e in table[n]], [n for n in seen for _ in table[n]])
           for when, table in (("before", before), ("after", after), ("after_without_domain_ids", without_ids))}
    rows = []
    for name, (_, held) in splits.items():
        counts = Counter(after[name])
        shares = [counts.get(e, 0) / len(after[name]) for e in range(daclip.config.num_experts)]
        macro = {label: metrics[label][str(held)]["macro"] for label in metrics}
        rows.append({
            "domain": name + (" (held out)" if name == args.held_out else ""), "images": len(after[name]),
            "expert_shares": shares, "purity": max(shares),
            "image_auroc": {label: macro[label]["image_auroc"] for label in macro},
            "pixel_auroc": {label: macro[label]["pixel_auroc"] for label in macro},
        })

    fmt = lambda v: "-" if v is None or v != v else f"{100 * v:.1f}"  # noqa: E731
    print(f"backbone: {args.backbone or 'random tiny CLIP (4 layers, width 32)'}; {args.steps} steps of batch "
          f"{args.batch_size} at {args.image_size} px on {', '.join(seen)}; held out: {args.held_out}")
    print(f"NMI(top-1 expert, domain) on the held-out images of the training domains: before training "
          f"{nmi['before']:.3f}; after training with the routing loss {nmi['after']:.3f}, without domain ids "
          f"(routing_loss_weight=0) {nmi['after_without_domain_ids']:.3f}\n")
    print("| domain | images | top-1 expert shares | purity | image AUROC DA-CLIP | image AUROC AnomalyCLIP "
          "| pixel AUROC DA-CLIP | pixel AUROC AnomalyCLIP |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        shares = " / ".join(f"{s:.2f}" for s in row["expert_shares"])
        print(f"| {row['domain']} | {row['images']} | {shares} | {row['purity']:.2f} | {fmt(row['image_auroc']['daclip'])} "
              f"| {fmt(row['image_auroc']['anomalyclip'])} | {fmt(row['pixel_auroc']['daclip'])} "
              f"| {fmt(row['pixel_auroc']['anomalyclip'])} |")
    if args.json:
        args.json.write_text(json.dumps({"nmi": nmi, "rows": rows}, indent=2, default=float))


if __name__ == "__main__":
    main()
