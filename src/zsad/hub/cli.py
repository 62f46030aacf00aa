"""`zsad import-checkpoint` and `zsad push`: released weights in, Hub repositories out.

`register_hub_commands(subparsers)` adds both subcommands to the `zsad` parser. User errors raise the
CLI's `CommandError` (one stderr line, exit status 2). Building the parser imports neither torch nor
transformers; the commands import them when they run.
"""

from __future__ import annotations

import argparse
import sys

# The methods whose released weights `zsad import-checkpoint` reads.
RELEASED_METHODS = ("anomalyclip", "adaclip", "crane", "crane+")


def _command_error(message: str) -> Exception:
    from ..cli import CommandError  # imported here: zsad.cli imports this module

    return CommandError(message)


def run_import_checkpoint(args: argparse.Namespace) -> int:
    from ..modeling_base import DEFAULT_BACKBONE
    from .import_checkpoint import CheckpointImportError, import_released_checkpoint

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
        raise _command_error(str(error).strip().splitlines()[0]) from error
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


def run_push(args: argparse.Namespace) -> int:
    from .push import PushError, push_directory

    try:
        plan = push_directory(args.directory, args.repo_id, private=args.private, dry_run=args.dry_run, license=args.license)
    except (PushError, OSError) as error:
        raise _command_error(str(error).strip().splitlines()[0]) from error
    if args.dry_run:
        print(f"would create the {plan.repo_type} repository {args.repo_id} and upload in one commit:")
        for name, size in plan.files:
            print(f"  {name}  ({size:,} bytes)")
    else:
        print(f"pushed {len(plan.files)} files to the {plan.repo_type} repository {args.repo_id}: {plan.commit_url}")
    return 0


def register_hub_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `import-checkpoint` and `push` to the `zsad` command."""
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
    parser.set_defaults(func=run_import_checkpoint)

    parser = subparsers.add_parser(
        "push",
        help="upload a zsad model folder or a `zsad convert` dataset folder to the Hugging Face Hub",
        description="Upload DIR to the Hub in one commit: a model folder (config, adapter safetensors, model "
        "card, remote-code shim) as a model repository, or a folder written by `zsad convert` (parquet files) "
        "as a dataset repository with a generated dataset card.",
    )
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("repo_id", metavar="REPO_ID", help="org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    parser.add_argument("--license", default=None, metavar="SPDX",
                        help="datasets: the license of the images (e.g. cc-by-4.0), unless the card already names one")
    parser.set_defaults(func=run_push)
