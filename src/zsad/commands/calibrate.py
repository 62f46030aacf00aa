"""`zsad calibrate`: choose a checkpoint's image and pixel decision thresholds on data (docs/inference.md)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..calibration import DEFAULT_FPR
from .common import (
    CommandError,
    add_dataset_mapping_flags,
    add_num_workers_flag,
    add_output_flags,
    dataset_mapping_options,
    image_size,
    lock_output_dir,
    positive_int,
    prepare_output_dir,
    resolve_device,
)
from .loading import check_sources, load_detector


def run(args: argparse.Namespace) -> int:
    from ..calibration import calibrate_dataset, write_thresholds
    from ..data import DataError

    if not 0.0 <= args.fpr < 1.0:
        raise CommandError(f"--fpr must be within [0, 1), got {args.fpr}")
    check_sources(args.model, args.backbone)  # a mistyped path is named before anything else
    local = args.model is not None and (Path(args.model) / "config.json").is_file()
    if args.out is None and not local:
        raise CommandError("--out is needed unless --model is a local checkpoint folder (whose config.json is updated)")
    if args.out is not None:  # the output is checked (and claimed) before any scoring
        prepare_output_dir(args.out, flag="--out", overwrite=args.overwrite)
    else:
        lock_output_dir(Path(args.model), "--model")  # two calibrations never update one config.json together
    model = load_detector(args.model, args.backbone, args.object_name).to(resolve_device(args.device))
    try:
        calibration = calibrate_dataset(
            model, args.data, split=args.split, categories=args.categories, batch_size=args.batch_size,
            fpr=args.fpr, show_progress=not args.quiet, image_size=args.image_size,
            loading_options=dataset_mapping_options(args), num_workers=args.num_workers,
        )
    except (DataError, ValueError) as error:
        raise CommandError(str(error).strip().splitlines()[0]) from error
    if args.out is not None:
        calibration.apply(model.config)
        model.save_pretrained(args.out)
        target = Path(args.out) / "config.json"
    else:
        target = write_thresholds(args.model, calibration)
    print(json.dumps(asdict(calibration), indent=2))
    print(f"thresholds written to {target}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose image and pixel decision thresholds on data",
        description="Set image_threshold and pixel_threshold in a checkpoint's config: F1-optimal when the data "
        "has anomalous images (masks for the pixel threshold), else the (1 - fpr) quantile of the normal "
        "images' scores. Anomalous means score >= threshold.",
    )
    parser.add_argument("data", help="anomaly data: a converted folder, parquet, imagefolder or Hub id (as zsad evaluate)")
    parser.add_argument("--model", metavar="NAME_OR_PATH", help="a registry name (zsad models; default: the trained "
                        "default), a zsad checkpoint or Hub id; a local folder's config.json is updated in place unless --out")
    parser.add_argument("--out", help="write the calibrated checkpoint here instead (an empty or new folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                        help=f"target false-positive rate on normal images when there are no anomalies (default {DEFAULT_FPR})")
    parser.add_argument("--backbone", help="CLIP backbone for ZeroShotCLIP, or a mirror of the checkpoint's backbone")
    parser.add_argument("--object-name", help="object word in ZeroShotCLIP's prompts")
    parser.add_argument("--split", default="test", help="split of the data (default: test; the train split of "
                        "MVTec-like data holds normal images only, so it gives the FPR quantile)")
    parser.add_argument("--categories", nargs="+", metavar="NAME", help="calibrate on these categories only")
    parser.add_argument("--image-size", type=image_size, metavar="N",
                        help="input resolution, a multiple of the patch size (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_num_workers_flag(parser)
    add_dataset_mapping_flags(parser)
    add_output_flags(parser, suppress_default=True)
    parser.set_defaults(func=run)
    return parser
