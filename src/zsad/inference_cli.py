"""`zsad calibrate` and `zsad export`: the inference subcommands (docs/cli.md, docs/inference.md).

Building their parsers imports neither torch nor transformers; the commands import them when they run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

DEFAULT_FPR = 0.01  # also the default of zsad.calibration's functions


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate_dataset, write_thresholds
    from .cli import CommandError, check_sources, load_detector, resolve_device
    from .data import DataError

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.fpr < 1.0:
        raise CommandError(f"--fpr must be within [0, 1), got {args.fpr}")
    check_sources(args.model, args.backbone)  # a mistyped path is named before anything else
    local = args.model is not None and (Path(args.model) / "config.json").is_file()
    if args.out is None and not local:
        raise CommandError("--out is needed unless --model is a local checkpoint folder (whose config.json is updated)")
    model = load_detector(args.model, args.backbone, args.object_name).to(resolve_device(args.device))
    try:
        calibration = calibrate_dataset(
            model, args.data, split=args.split, categories=args.categories, batch_size=args.batch_size,
            fpr=args.fpr, show_progress=not args.quiet,
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


def register_calibrate_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose image and pixel decision thresholds on data",
        description="Set image_threshold and pixel_threshold in a checkpoint's config: F1-optimal when the data "
        "has anomalous images (masks for the pixel threshold), else the (1 - fpr) quantile of the normal "
        "images' scores. Anomalous means score >= threshold.",
    )
    parser.add_argument("data", help="anomaly data: a converted folder, parquet, imagefolder or Hub id (as zsad evaluate)")
    parser.add_argument("--model", help="zsad checkpoint; a local folder's config.json is updated in place unless --out")
    parser.add_argument("--out", help="write the calibrated checkpoint here instead")
    parser.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                        help=f"target false-positive rate on normal images when there are no anomalies (default {DEFAULT_FPR})")
    parser.add_argument("--backbone", help="CLIP backbone for ZeroShotCLIP, or a mirror of the checkpoint's backbone")
    parser.add_argument("--object-name", help="object word in ZeroShotCLIP's prompts")
    parser.add_argument("--split", default="test", help="split of the data (default: test; the train split of "
                        "MVTec-like data holds normal images only, so it gives the FPR quantile)")
    parser.add_argument("--categories", nargs="+")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_calibrate)
    return parser


def run_export(args: argparse.Namespace) -> int:
    from .cli import CommandError, load_detector
    from .export import ExportError, export_onnx

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise CommandError(f"ONNX export needs the export extra: pip install 'zsad[export]' ({error})") from error
    from .cli_utils import local_path_or_hub_id

    local_path_or_hub_id(args.model, "MODEL")  # a mistyped path is named as the positional argument
    model = load_detector(args.model, args.backbone, None)
    try:
        path = export_onnx(model, args.out, opset_version=args.opset)
    except ExportError as error:
        raise CommandError(str(error)) from error
    print(f"exported {type(model).__name__} to {path}")
    return 0


def register_export_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX",
        description="Export a zsad model to ONNX (pixel_values -> pred_scores, anomaly_maps; text features baked in, "
        "dynamic batch axis, Gaussian blur in the graph). Class-aware or image-conditioned text (AdaCLIP, Crane with "
        "prompt_conditioning='always') cannot be exported.",
    )
    parser.add_argument("model", help="zsad checkpoint: Hub id or local folder")
    parser.add_argument("out", help="output folder (model.onnx, preprocessor_config.json, onnx_config.json)")
    parser.add_argument("--format", default="onnx", choices=["onnx"])
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--backbone", help="a local mirror of the checkpoint's CLIP backbone")
    parser.set_defaults(func=run_export)
    return parser
