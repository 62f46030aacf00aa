"""`zsad export`: a zsad model as an ONNX graph or OpenVINO IR with its preprocessing settings (docs/inference.md)."""

from __future__ import annotations

import argparse
import sys

from ..hub.released.registry import get_entry, training_free_models
from .common import (
    CommandError,
    add_output_flags,
    local_path_or_hub_id,
    positive_int,
    prepare_output_dir,
)
from .loading import load_detector


def run(args: argparse.Namespace) -> int:
    from ..export import ExportError, export_onnx, export_openvino

    needed = ("onnx", "onnxscript", "openvino") if args.format == "openvino" else ("onnx", "onnxscript")
    for package in needed:
        try:
            __import__(package)
        except ImportError as error:
            raise CommandError(f"--format {args.format} needs the export extra: pip install 'zsad[export]' ({error})") from error
    if get_entry(args.model) is None and args.model not in training_free_models():
        local_path_or_hub_id(args.model, "MODEL")  # a mistyped path is named as the positional argument
    prepare_output_dir(args.out, flag="OUT", overwrite=args.overwrite)  # checked before the model loads
    model = load_detector(args.model, args.backbone, None)
    export = export_openvino if args.format == "openvino" else export_onnx
    try:
        path = export(model, args.out, class_name=args.class_name, dtype=args.dtype, opset_version=args.opset)
    except ExportError as error:
        raise CommandError(str(error)) from error
    uncalibrated = [name for name in ("image_threshold", "pixel_threshold") if getattr(model.config, name) is None]
    if uncalibrated:
        print(f"note: the model has no calibrated {' or '.join(uncalibrated)}: the graph needs it as an input at run time "
              "(zsad calibrate sets both)", file=sys.stderr)
    print(f"exported {type(model).__name__} ({args.format}, {args.dtype}) to {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or OpenVINO",
        description="Export a zsad model to ONNX or an OpenVINO IR: pixel_values, image_threshold, pixel_threshold -> "
        "pred_scores, anomaly_maps, pred_labels, pred_masks (the calibrated thresholds are the inputs' defaults; "
        "dynamic batch axis; blur and decisions in the graph; text baked in, or the text tower in the graph when the "
        "text depends on the image). See docs/inference.md.",
    )
    parser.add_argument("model", help="a registry name (zsad models), a zsad checkpoint folder or a Hub id")
    parser.add_argument("out", help="output folder, empty or new (the graph, preprocessor_config.json, <format>_config.json)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT (files of the same names are replaced)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="the export format (default: onnx)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="precision of the towers inside the graph; inputs and outputs stay float32 (default: float32)")
    parser.add_argument("--class-name", help="the category a class-aware model (AdaCLIP, ZeroShotCLIP, WinCLIP) is "
                        "exported for (default: its own default prompts)")
    parser.add_argument("--opset", type=positive_int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--backbone", help="a local mirror of the checkpoint's CLIP backbone")
    add_output_flags(parser, suppress_default=True)
    parser.set_defaults(func=run)
    return parser
