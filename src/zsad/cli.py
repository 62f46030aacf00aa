"""The `zsad` command line: collects the subcommands of `zsad.commands`, one module each.

Every subcommand follows the error contract of `zsad.commands.common` (one line, exit 2, `--debug`).
Building the parser imports neither torch nor transformers, so `zsad --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .commands import benchmark, calibrate, convert, demo, detect, evaluate, export, import_checkpoint, models, push, train
from .commands.common import ArgumentParser, add_output_flags, run_command

__all__ = ["build_parser", "main"]

# In the order of `zsad --help`.
COMMANDS = (detect, evaluate, benchmark, calibrate, export, demo, models, import_checkpoint, push, convert, train)
# Subcommands that parse their own options (`main(argv)`): their parsers need the heavy modules.
SELF_PARSING = {"convert": convert.main, "train": lambda argv: train.main(argv, prog="zsad train", launcher=["zsad", "train"])}


def build_parser() -> argparse.ArgumentParser:
    """The `zsad` parser, each subcommand registered by its own module."""
    parser = ArgumentParser(prog="zsad", description="Zero-shot anomaly detection with CLIP.")
    parser.add_argument("--version", action="version", version=f"zsad {__version__}")
    add_output_flags(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = []
    while argv[:1] in (["--debug"], ["--verbose"]):
        flags.append(argv.pop(0))
    if argv[:1] and argv[0] in SELF_PARSING:  # `zsad --debug train ...` is `zsad train --debug ...`
        argv = [argv[0], *flags, *argv[1:]]
    else:
        argv = [*flags, *argv]
    if argv[:1] and argv[0] in SELF_PARSING:
        try:
            return SELF_PARSING[argv[0]](argv[1:])
        except SystemExit as done:  # --help, or a one-line usage error (exit 2)
            return done.code if isinstance(done.code, int) else 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a one-line usage error (exit 2)
        return done.code if isinstance(done.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return run_command(f"zsad {args.command}", lambda: args.func(args), debug=args.debug, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
