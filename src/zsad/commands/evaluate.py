"""`zsad evaluate`: per-category image and pixel metrics of a model on anomaly datasets (docs/training.md)."""

from __future__ import annotations

import argparse
import json
import sys

from ..file_modes import write_text_atomic
from ..hub.released.registry import default_model_name
from .common import (
    CommandError,
    add_dataset_mapping_flags,
    dataset_mapping_options,
    non_negative_int,
    prepare_output_dir,
    resolve_device,
)
from .loading import add_model_options, check_sources, load_detector

SETTINGS_FILE = "evaluate_settings.json"


def settings(args: argparse.Namespace) -> dict:
    """What must not change between an interrupted run and its --resume."""
    return {"model": args.model or default_model_name(), "backbone": args.backbone, "datasets": list(args.datasets),
            "split": args.split, "categories": args.categories, "image_size": args.image_size,
            "batch_size": args.batch_size, "aupro": args.aupro, "normal_references": args.normal_references,
            "loading_options": dataset_mapping_options(args) or None}


def run(args: argparse.Namespace) -> int:
    out_dir = prepare_output_dir(args.out, flag="--out", overwrite=args.overwrite, resume=args.resume,
                                 resume_flag="--resume")
    check_sources(args.model, args.backbone)
    current = settings(args)
    path = out_dir / SETTINGS_FILE
    if args.resume and path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        for key, value in current.items():
            if earlier.get(key) != value:
                raise CommandError(f"--resume: {out_dir} holds a run with {key} = {earlier.get(key)!r}, not {value!r}; "
                                   "resume with the same options, or pass --overwrite to start again")
    write_text_atomic(path, json.dumps(current, indent=2))
    device = resolve_device(args.device)
    model = load_detector(args.model, args.backbone, args.object_name).to(device).eval()

    from ..evaluation import evaluate_datasets

    try:
        evaluate_datasets(
            model, args.datasets, output_dir=out_dir, split=args.split, categories=args.categories,
            image_size=args.image_size, batch_size=args.batch_size, aupro_mode=args.aupro,
            report_cflow=args.report_cflow, heatmaps_per_category=args.heatmaps_per_category,
            model_name=args.model or default_model_name(), normal_references=args.normal_references, resumable=True,
            loading_options=dataset_mapping_options(args),
        )
    except KeyboardInterrupt:
        print(f"zsad evaluate: interrupted; the images scored so far are kept in {out_dir}; to continue, run the same "
              "command with --resume", file=sys.stderr)
        return 130
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
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out: the images it scored are kept, the rest are scored, "
                        "and the metrics equal those of an uninterrupted run")
    add_dataset_mapping_flags(parser)
    parser.set_defaults(func=run)
