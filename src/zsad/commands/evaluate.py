"""`zsad evaluate`: per-category image and pixel metrics of a model on anomaly datasets (docs/training.md)."""

from __future__ import annotations

import argparse

from ..hub.released.registry import default_model_name
from .common import non_negative_int, prepare_output_dir, resolve_device
from .loading import add_model_options, check_sources, load_detector


def run(args: argparse.Namespace) -> int:
    out_dir = prepare_output_dir(args.out, flag="--out", overwrite=args.overwrite)
    check_sources(args.model, args.backbone)
    device = resolve_device(args.device)
    model = load_detector(args.model, args.backbone, args.object_name).to(device).eval()

    from ..evaluation import evaluate_datasets

    evaluate_datasets(
        model, args.datasets, output_dir=out_dir, split=args.split, categories=args.categories,
        image_size=args.image_size, batch_size=args.batch_size, aupro_mode=args.aupro,
        report_cflow=args.report_cflow, heatmaps_per_category=args.heatmaps_per_category,
        model_name=args.model or default_model_name(), normal_references=args.normal_references,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="per-category metrics of a model on datasets",
        description="Image AUROC/AP/F1-max and pixel AUROC/AP/F1-max/AUPRO per category, with macro averages. "
        "For several processes use `accelerate launch examples/evaluate.py`.",
    )
    parser.add_argument("datasets", nargs="+", help="folders written by `zsad convert`, parquet, imagefolder or Hub ids")
    parser.add_argument("--out", default="zsad_eval", help="output folder, empty or new (default: zsad_eval)")
    add_model_options(parser)
    parser.add_argument("--split", default="test", help="the split to evaluate (default: test)")
    parser.add_argument("--categories", nargs="+", metavar="NAME", help="evaluate these categories only (default: all)")
    parser.add_argument("--aupro", choices=["exact", "binned", "cflow"], default="exact",
                        help="AUPRO: exact (default), binned (constant memory) or cflow (the 200-threshold variant "
                        "of the AnomalyCLIP/Crane papers); docs/metrics.md")
    parser.add_argument("--report-cflow", action="store_true", help="also report the paper-comparable cflow AUPRO")
    parser.add_argument("--heatmaps-per-category", type=non_negative_int, default=0, metavar="N",
                        help="save N overlays per category, anomalous and normal images alike")
    parser.add_argument("--normal-references", metavar="DIR",
                        help="few-shot: normal images of each category in DIR/<category>/ (docs/few_shot.md)")
    parser.set_defaults(func=run)
