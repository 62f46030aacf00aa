"""`zsad convert {mvtec,visa,folder} SRC OUT`: an anomaly-detection dataset on disk in the zsad schema
(parquet or imagefolder; docs/data.md).

This command parses its own options (`main`), so that `zsad --help` does not import the data stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import ArgumentParser, CommandError, add_output_flags, run_command

HELP = "convert an anomaly-detection dataset on disk to the zsad schema (parquet or imagefolder)"
_FOLDER_ONLY = ("category", "normal_dir", "anomaly_dir", "mask_dir", "split")


def register(subparsers: argparse._SubParsersAction) -> None:
    """List `convert` in `zsad --help`; `main` parses its options."""
    subparsers.add_parser("convert", add_help=False, help=HELP)


def build_parser(prog: str = "zsad convert") -> ArgumentParser:
    """The options of `zsad convert` (builds on the data stack: converter layouts and output formats)."""
    from ..data.converters import LAYOUTS
    from ..data.writer import FORMATS

    parser = ArgumentParser(
        prog=prog,
        description=(
            "Convert an MVTec AD-style folder (also MPDD, BTAD), a VisA folder, or your own folder of normal/"
            "anomalous images into the zsad anomaly-detection schema. The result loads with "
            "datasets.load_dataset(OUT). See docs/data.md."
        ),
    )
    parser.add_argument("layout", choices=LAYOUTS, help="source layout")
    parser.add_argument("src", help="source folder")
    parser.add_argument("out", help="output folder (written atomically)")
    parser.add_argument("--format", choices=FORMATS, default="parquet", help="output format (default: parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (a zsad output)")
    parser.add_argument("--categories", nargs="+", metavar="NAME", help="convert only these categories (mvtec, visa)")
    parser.add_argument("--name", dest="dataset_name", help="value of the 'dataset' column (default: SRC's name; visa: 'visa')")
    parser.add_argument(
        "--skip-invalid", action="store_true",
        help="skip corrupt images, orphan masks, size mismatches and empty folders with a warning instead of failing",
    )
    parser.add_argument(
        "--normal-names", nargs="+", metavar="NAME",
        help="mvtec: folder names of normal images (default: good ok normal)",
    )
    folder = parser.add_argument_group("folder layout")
    folder.add_argument("--category", help="category name (default: SRC's name)")
    folder.add_argument("--normal-dir", help="folder of normal images, relative to SRC (default: normal/good/ok)")
    folder.add_argument("--anomaly-dir", help="folder of anomalous images, relative to SRC (default: anomaly/defect/...)")
    folder.add_argument("--mask-dir", help="folder of masks, relative to SRC (default: masks/mask/ground_truth)")
    folder.add_argument("--split", choices=("train", "test"), help="split to write (default: test)")
    add_output_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed `convert` command under `run_command`, which turns a `CommandError`, `DataError` or
    `OSError` into one line (exit 2) and prints warnings as `warning: ...` lines; returns 0."""
    from ..data.converters import convert

    kwargs = {"format": args.format, "overwrite": args.overwrite, "skip_invalid": args.skip_invalid,
              "progress": sys.stderr.isatty()}
    if args.dataset_name:
        kwargs["dataset_name"] = args.dataset_name
    if args.layout == "folder":
        if args.categories:
            raise CommandError("--categories applies to mvtec and visa; use --category for the folder layout")
        for option in _FOLDER_ONLY:
            if getattr(args, option) is not None:
                kwargs[option] = getattr(args, option)
    else:
        given = [f"--{option.replace('_', '-')}" for option in _FOLDER_ONLY if getattr(args, option) is not None]
        if given:
            raise CommandError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to the folder layout only")
        if args.categories:
            kwargs["categories"] = args.categories
    if args.normal_names:
        if args.layout != "mvtec":
            raise CommandError("--normal-names applies to the mvtec layout only")
        kwargs["normal_names"] = args.normal_names
    print(convert(args.layout, args.src, args.out, **kwargs))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`zsad convert ...` with `argv` the options after `convert`; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("zsad convert", lambda: run(args), debug=args.debug, verbose=args.verbose)
