"""`zsad import-checkpoint`: the authors' released AnomalyCLIP / AdaCLIP / Crane / Crane+ weights as a zsad
checkpoint with a model card (docs/released_weights.md)."""

from __future__ import annotations

import argparse
import sys

from ..clip import DEFAULT_BACKBONE
from ..hub.released.variants import RELEASED_METHODS
from .common import CommandError, add_output_flags


def run(args: argparse.Namespace) -> int:
    from ..hub.released.importer import import_released_checkpoint
    from ..hub.released.safe_loading import CheckpointImportError

    try:
        result = import_released_checkpoint(
            args.method,
            args.file,
            args.out_dir,
            backbone=args.backbone or DEFAULT_BACKBONE,
            trained_on=args.trained_on,
            dino_backbone=args.dino_backbone,
        )
    except (CheckpointImportError, OSError) as error:
        raise CommandError(str(error).strip().splitlines()[0]) from error
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    variant = result.variant
    values = sum(t.numel() for t in result.adapter_tensors.values())
    epoch = f", epoch {variant.epoch}" if variant.epoch is not None else ""
    print(
        f"wrote {result.out_dir}: {variant.source.name} {variant.training_protocol}{epoch}; "
        f"{len(result.adapter_tensors)} adapter tensors ({values:,} values); "
        f"{len(variant.reported_rows())} datasets of reported numbers in the card"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-checkpoint",
        help="convert the authors' released weights into a zsad checkpoint with a model card",
        description="Convert a released AnomalyCLIP, AdaCLIP, Crane or Crane+ checkpoint (a .pth file, read "
        "with weights_only=True only) into an adapter-only zsad checkpoint plus model card.",
    )
    parser.add_argument("method", choices=RELEASED_METHODS, help="the method that wrote FILE")
    parser.add_argument("file", metavar="FILE", help="the released .pth file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (config, adapter safetensors, card, shim)")
    parser.add_argument("--backbone", default=None, metavar="ID_OR_DIR",
                        help="CLIP backbone the weights were trained with (default: openai/clip-vit-large-patch14-336)")
    parser.add_argument("--trained-on", default=None, metavar="NAME",
                        help="training data: mvtec or visa (AnomalyCLIP, Crane, Crane+), mvtec+colondb or "
                        "visa+clinicdb (AdaCLIP); default: from the reference's folder names")
    parser.add_argument("--dino-backbone", default=None, metavar="ID_OR_DIR",
                        help="Crane+ only: the DINOv2 backbone (default: facebook/dinov2-with-registers-base)")
    add_output_flags(parser, suppress_default=True)
    parser.set_defaults(func=run)
