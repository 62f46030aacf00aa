"""`zsad push`: upload a zsad model folder, a released model by registry name, or a `zsad convert` dataset
folder to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..hub.released.registry import get_entry
from .common import CommandError, add_output_flags


def run(args: argparse.Namespace) -> int:
    from ..hub.push import PushError, push_directory

    directory = args.directory
    entry = get_entry(directory) if not Path(directory).exists() else None
    try:
        if entry is not None:  # a registry name: its imported checkpoint, fetched and verified first
            from ..hub.released.download import released_checkpoint

            directory = released_checkpoint(entry, backbone=args.backbone)
        plan = push_directory(directory, args.repo_id, private=args.private, dry_run=args.dry_run, license=args.license)
    except (PushError, OSError) as error:
        raise CommandError(str(error).strip().splitlines()[0]) from error
    if args.dry_run:
        print(f"would create the {plan.repo_type} repository {args.repo_id} and upload in one commit:")
        for name, size in plan.files:
            print(f"  {name}  ({size:,} bytes)")
    else:
        print(f"pushed {len(plan.files)} files to the {plan.repo_type} repository {args.repo_id}: {plan.commit_url}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a zsad model folder, a released model by name, or a `zsad convert` dataset folder to the Hub",
        description="Upload DIR to the Hub in one commit: a model folder (config, adapter safetensors, model "
        "card, remote-code shim) as a model repository, or a folder written by `zsad convert` (parquet files) "
        "as a dataset repository with a generated dataset card.",
    )
    parser.add_argument("directory", metavar="DIR", help="a zsad model folder, a registry name (zsad models: mirrors "
                        "that released model with its card) or a `zsad convert` dataset folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    parser.add_argument("--license", default=None, metavar="SPDX",
                        help="datasets: the license of the images (e.g. cc-by-4.0), unless the card already names one")
    parser.add_argument("--backbone", metavar="ID_OR_DIR",
                        help="registry names: a local copy of the CLIP backbone to import the file with")
    add_output_flags(parser, suppress_default=True)
    parser.set_defaults(func=run)
