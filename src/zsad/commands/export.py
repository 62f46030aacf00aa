"""`zsad export`: a zsad model as an ONNX graph with its preprocessing settings (docs/inference.md)."""

from __future__ import annotations

import argparse

from ..hub.released.registry import get_entry, training_free_models
from .common import (
    CommandError,
    add_output_flags,
    local_path_or_hub_id,
    prepare_output_dir,
)
from .loading import load_detector


def run(args: argparse.Namespace) -> int:
    from ..export import ExportError, export_onnx

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise CommandError(f"ONNX export needs the export extra: pip install 'zsad[export]' ({error})") from error
    if get_entry(args.model) is None and args.model not in training_free_models():
        local_path_or_hub_id(args.model, "MODEL")  # a mistyped path is named as the positional argument
    prepare_output_dir(args.out, flag="OUT", overwrite=args.overwrite)  # checked before the model loads
    model = load_detector(args.model, args.backbone, None)
    try:
        path = export_onnx(model, args.out, opset_version=args.opset)
    except ExportError as error:
        raise CommandError(str(error)) from error
    print(f"exported {type(model).__name__} to {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX",
        description="Export a zsad model to ONNX (pixel_values -> pred_scores, anomaly_maps; text features baked in, "
        "dynamic batch axis, Gaussian blur in the graph). Class-aware or image-conditioned text (AdaCLIP, Crane with "
        "prompt_conditioning='always') cannot be exported.",
    )
    parser.add_argument("model", help="a registry name (zsad models), a zsad checkpoint folder or a Hub id")
    parser.add_argument("out", help="output folder, empty or new (model.onnx, preprocessor_config.json, onnx_config.json)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT (files of the same names are replaced)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="the export format (onnx)")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--backbone", help="a local mirror of the checkpoint's CLIP backbone")
    add_output_flags(parser, suppress_default=True)
    parser.set_defaults(func=run)
    return parser
