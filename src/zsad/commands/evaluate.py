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
    add_num_workers_flag,
    byte_size,
    dataset_mapping_options,
    launch_world_size,
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


def _accelerator():
    """`evaluation_accelerator()` when this process is one of several (torchrun / `accelerate launch -m
    zsad.evaluate`), else None."""
    if launch_world_size() < 2:
        return None
    from ..evaluation import evaluation_accelerator

    return evaluation_accelerator()


def run(args: argparse.Namespace) -> int:
    several = launch_world_size() > 1
    if several and (args.resume or args.normal_references):
        raise CommandError(f"{'--resume' if args.resume else '--normal-references'} runs in one process; "
                           "run it without a distributed launch")
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
    accelerator = _accelerator()
    if accelerator is None or accelerator.is_main_process:
        write_text_atomic(path, json.dumps(current, indent=2))
    device = resolve_device(args.device) if accelerator is None else accelerator.device
    model = load_detector(args.model, args.backbone, args.object_name).to(device).eval()

    from ..evaluation import evaluate_datasets

    try:
        evaluate_datasets(
            model, args.datasets, output_dir=out_dir, split=args.split, categories=args.categories,
            image_size=args.image_size, batch_size=args.batch_size, aupro_mode=args.aupro,
            report_cflow=args.report_cflow, heatmaps_per_category=args.heatmaps_per_category,
            model_name=args.model or default_model_name(), normal_references=args.normal_references,
            resumable=accelerator is None, loading_options=dataset_mapping_options(args), num_workers=args.num_workers,
            max_memory=args.max_memory, accelerator=accelerator, log=print if accelerator is None else accelerator.print,
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
        "For several processes or GPUs: `accelerate launch -m zsad.evaluate ...` (the same options).",
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
    parser.add_argument("--max-memory", type=byte_size, metavar="SIZE",
                        help="exact metrics: keep this much of the anomaly maps in memory (e.g. 2GB) and spill the rest to "
                        "a temporary folder; the metrics are identical (default: all in memory)")
    add_num_workers_flag(parser)
    add_dataset_mapping_flags(parser)
    parser.set_defaults(func=run)
