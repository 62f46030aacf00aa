#!/usr/bin/env python
"""DA-CLIP domain experiment: does the image router send visually distinct domains to different experts?

    python examples/daclip_domains.py [--steps 80] [--backbone DIR] [--magnetic_tile ../shared/data/magnetic_tile]

Three domains: two synthetic texture families (`stripes`, `dots` from `zsad.data.synthetic`) and the real
Magnetic Tile defects (MVTec layout, grayscale). DA-CLIP (default options, 4 experts, top-2) is trained
on a mix of all three, then, on held-out images of each domain, the script reports the share of images
whose top-1 expert is each expert, and the load-balance term of the image router (squared coefficient of
variation of its summed softmax probabilities), before and after training. The backbone is a random
tiny CLIP (no pretrained weights here), so this shows what the routing mechanism does with the
features it is given, not what it would do on ViT-L/14. Takes a few minutes on 2 CPU cores.
"""

import argparse
import tempfile
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from zsad import DACLIPModel, ZSADImageProcessor
from zsad.adapters.domain_experts import squared_coefficient_of_variation
from zsad.data import collate_fn, convert_mvtec, load_anomaly_dataset, make_synthetic_dataset, with_anomaly_transform
from zsad.testing import save_tiny_backbone
from zsad.training import EpochShuffleSampler, build_optimizer, model_inputs



def balanced_subset(dataset: datasets.Dataset, count: int, seed: int, skip: int = 0) -> datasets.Dataset:
    """`count` images, half normal and half anomalous, after skipping `skip` of each (for held-out sets)."""
    shuffled = dataset.shuffle(seed=seed)
    labels = shuffled["label"]
    picked = []
    for label in (0, 1):
        rows = [i for i, value in enumerate(labels) if value == label]
        picked += rows[skip : skip + count // 2]
    return shuffled.select(picked)


def domains(magnetic_tile: Path, per_domain: int, seed: int, work_dir: Path) -> dict[str, tuple[datasets.Dataset, datasets.Dataset]]:
    """`{domain: (train, held-out)}`, each `per_domain` images, half anomalous."""
    half = per_domain // 2
    result = {}
    for offset, texture in enumerate(("stripes", "dots")):
        train = make_synthetic_dataset(half, half, size=64, textures=[texture], seed=seed + offset)
        held_out = make_synthetic_dataset(half, half, size=64, textures=[texture], seed=seed + offset + 100)
        result[texture] = (train, held_out.cast(train.features))
    convert_mvtec(magnetic_tile, work_dir / "magnetic_tile")
    tiles = load_anomaly_dataset(work_dir / "magnetic_tile", split="test")
    tiles = tiles.cast(result["stripes"][0].features)
    result["magnetic_tile"] = (balanced_subset(tiles, per_domain, seed), balanced_subset(tiles, per_domain, seed, skip=half))
    return result


@torch.no_grad()
def routing_table(
    model: DACLIPModel, held_out: dict[str, datasets.Dataset], processor: ZSADImageProcessor
) -> tuple[str, float, tuple[float, float]]:
    """Markdown rows: per domain, the share of images per top-1 expert and the router's load balance;
    the load balance over all images; the mean cosine similarity of the router's input e0 within and
    between domains."""
    model.eval()
    rows, everything, embeds = [], [], []
    for name, dataset in held_out.items():
        loader = DataLoader(with_anomaly_transform(dataset, processor), batch_size=8, collate_fn=collate_fn)
        softmax, top1, domain_embeds = [], [], []
        for batch in loader:
            features = model.image_features(batch["pixel_values"])
            softmax.append(features.extras["router_softmax"])
            top1.append(features.extras["router_probs"].argmax(dim=1))
            domain_embeds.append(F.normalize(model.prompt_free_embeds(batch["pixel_values"]), dim=-1))
        softmax, top1 = torch.cat(softmax), torch.cat(top1)
        everything.append(softmax)
        embeds.append(torch.cat(domain_embeds))
        shares = [f"{(top1 == e).float().mean().item():.2f}" for e in range(model.config.num_experts)]
        balance = squared_coefficient_of_variation(softmax).item()
        rows.append(f"| {name} | {len(top1)} | " + " | ".join(shares) + f" | {balance:.3f} |")
    overall = squared_coefficient_of_variation(torch.cat(everything)).item()
    within = sum((e @ e.t()).mean().item() for e in embeds) / len(embeds)
    pairs = [(a, b) for i, a in enumerate(embeds) for b in embeds[i + 1 :]]
    between = sum((a @ b.t()).mean().item() for a, b in pairs) / len(pairs)
    return "\n".join(rows), overall, (within, between)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", help="CLIP folder (default: a random tiny CLIP written to a temporary folder)")
    parser.add_argument("--magnetic_tile", type=Path, default=Path("../shared/data/magnetic_tile"),
                        help="Magnetic Tile in MVTec layout (default: ../shared/data/magnetic_tile)")
    parser.add_argument("--per_domain", type=int, default=32, help="training and held-out images per domain")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        backbone = args.backbone or str(save_tiny_backbone(work_dir / "backbone", seed=args.seed, hidden_size=32))
        data = domains(args.magnetic_tile, args.per_domain, args.seed, work_dir)
        model = DACLIPModel.from_backbone(backbone, image_size=args.image_size)
        processor = ZSADImageProcessor(image_size=args.image_size)
        held_out = {name: pair[1] for name, pair in data.items()}
        header = "| domain | images | " + " | ".join(f"expert {e}" for e in range(model.config.num_experts)) + " | load balance |"
        header += "\n|---|---|" + "---|" * (model.config.num_experts + 1)
        before, before_overall, similarity = routing_table(model, held_out, processor)

        train = datasets.concatenate_datasets([pair[0] for pair in data.values()])
        train = with_anomaly_transform(train, processor)
        sampler = EpochShuffleSampler(len(train), seed=args.seed)
        loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, collate_fn=collate_fn)
        optimizer = build_optimizer(model)
        model.train()
        step, epoch, losses = 0, 0, []
        while step < args.steps:
            sampler.set_epoch(epoch)
            for batch in loader:
                out = model(**model_inputs(batch, with_targets=True))
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
                losses.append((out.loss.item(), out.aux_losses["load_balance"].item()))
                step += 1
                if step >= args.steps:
                    break
            epoch += 1
        after, after_overall, _ = routing_table(model, held_out, processor)

    first, last = losses[:5], losses[-5:]
    mean = lambda values, i: sum(v[i] for v in values) / len(values)  # noqa: E731
    print(f"backbone: {args.backbone or 'random tiny CLIP (4 layers, width 32)'}; {args.steps} steps of batch {args.batch_size}")
    print(f"training loss {mean(first, 0):.3f} -> {mean(last, 0):.3f}; load-balance term {mean(first, 1):.3f} -> {mean(last, 1):.3f}")
    print(f"router input e0 (prompt-free, frozen): mean cosine similarity {similarity[0]:.3f} within domains, "
          f"{similarity[1]:.3f} between domains")
    print(f"\nBefore training (image-router load balance over all held-out images: {before_overall:.3f})\n")
    print(header + "\n" + before)
    print(f"\nAfter training (image-router load balance over all held-out images: {after_overall:.3f})\n")
    print(header + "\n" + after)


if __name__ == "__main__":
    main()
