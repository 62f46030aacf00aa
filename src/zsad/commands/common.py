"""What every zsad command shares: the error contract, flag types, the output-folder guard (checks, lock),
the device choice, the Hub check and quiet libraries (`zsad ...`, `zsad train`, the example scripts).

A user error (a bad flag value, a missing file, an unusable output folder, unreadable data, a backbone
that cannot be downloaded) ends the command with exit status 2 and exactly one line on stderr,
`<prog>: error: <what is wrong, naming the file, flag or value, and what to do>`, without a traceback;
`--debug` prints the traceback too. Anything else is a bug: one line, exit status 1, and `--debug`.
SIGTERM stops a command as Ctrl-C does; `--verbose` lets the libraries' log lines and warnings through.

This module imports neither torch nor transformers, so `zsad --help` stays fast.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ZSADWarning, first_line
from ..file_modes import write_text_atomic
from ..hub.offline import OFFLINE_HINT, HubUnreachableError, ensure_downloadable

# Memory of a ViT grows with the square of the token count, i.e. the fourth power of the image size;
# 2048 px is already 22k tokens on a /14 backbone (the reference size is 518).
MAX_IMAGE_SIZE = 2048
_PROBE = ".zsad-write-test-"  # the writability probe of prepare_output_dir (other processes may see it)
LOCK_NAME, LOCK_INFO = ".zsad-lock", ".zsad-lock.json"  # held by the command writing into an output folder


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


class OneSpellingHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists an option under its first spelling only (`--output-dir`, not also `--output_dir`)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or len(action.option_strings) == 1:
            return super()._format_action_invocation(action)
        shown = argparse.Action([action.option_strings[0]], action.dest, nargs=action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(shown)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`prog: error: ... (see prog --help)`), exit status 2.

    With `hyphen_aliases=True`, every `--snake_case` option also accepts `--snake-case` (shown first, and
    alone, in the help), so the example scripts and `zsad` share one flag style and old spellings keep working.
    """

    def __init__(self, *args, hyphen_aliases: bool = False, **kwargs) -> None:
        self.hyphen_aliases = hyphen_aliases  # before argparse adds -h/--help
        if hyphen_aliases:
            kwargs.setdefault("formatter_class", OneSpellingHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):  # type: ignore[override]
        if self.hyphen_aliases and names and all(name.startswith("--") for name in names):
            spelled = [name.replace("_", "-") for name in names if "_" in name]
            if spelled and "dest" not in kwargs:
                kwargs["dest"] = names[0][2:]
            names = tuple(dict.fromkeys([*spelled, *names]))
        return super().add_argument(*names, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_output_flags(parser: argparse.ArgumentParser, *, suppress_default: bool = False) -> None:
    """`--debug` (print the traceback of an error) and `--verbose` (library log lines and warnings).
    `suppress_default` for sub-parsers, so that `zsad --debug detect ...` and `zsad detect --debug ...`
    both work."""
    default = argparse.SUPPRESS if suppress_default else False
    parser.add_argument("--debug", action="store_true", default=default, help="print the full traceback of an error")
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also show the libraries' log lines and warnings (transformers, datasets, accelerate)")


# ------------------------------------------------------------------------------------------ flag values
def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 and negative values are errors, never 'use the default')."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_num_workers_flag(parser: argparse.ArgumentParser) -> None:
    """`--num-workers`: processes that decode and preprocess images while the model runs."""
    parser.add_argument("--num-workers", type=non_negative_int, metavar="N",
                        help="DataLoader workers decoding and preprocessing images beside the model (default: one per "
                        "core less one, at most 8; 0 decodes in the main process)")


_BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
               "GIB": 2**30, "TIB": 2**40}


def byte_size(text: str) -> int:
    """argparse type: a positive amount of memory, `500MB`, `2GB`, `1.5GiB` or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 500MB or 2GB, got {text!r}")
    value = float(match[1]) * _BYTE_UNITS[(match[2] or "").upper()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive size, got {text}")
    return int(value)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def image_size(text: str) -> int:
    """argparse type: an input resolution in 1..MAX_IMAGE_SIZE."""
    value = positive_int(text)
    if value > MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_IMAGE_SIZE} (memory grows with the square of the patch count), got {text}"
        )
    return value


# ------------------------------------------------------------------------------------ dataset mappings
MAPPED_COLUMNS = ("image", "mask", "label", "category", "defect_type")


def _pairs(text: str, flag: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise CommandError(f"{flag}: expected SOURCE=TARGET pairs separated by commas, got {text!r}")
        pairs[key] = value
    return pairs


def add_dataset_mapping_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that read a dataset laid out differently from zsad's schema (`zsad.data.mapping`)."""
    group = parser.add_argument_group("datasets with other column or split names (docs/data.md)")
    for column in MAPPED_COLUMNS:
        group.add_argument(f"--{column.replace('_', '-')}-column", metavar="NAME", dest=f"{column}_column",
                           help=f"the source column that holds `{column}`")
    group.add_argument("--split-mapping", metavar="MAPPING",
                       help="'{category}.{split}' or '{category}' when split names carry the category, "
                       "'column:NAME' when a column holds the split, or SOURCE=TARGET pairs, e.g. 'val=test'")
    group.add_argument("--label-mapping", metavar="VALUE=0|1,...", help="label values onto 0 (normal) / 1 (anomaly), "
                       "e.g. 'OK=0,NG=1'")
    group.add_argument("--no-preset", action="store_true",
                       help="do not apply the built-in mapping of a known Hub copy (Voxel51/mvtec-ad, BrachioLab/visa, "
                       "dddraxxx/visa-dataset)")


def dataset_mapping_options(args: argparse.Namespace) -> dict:
    """`load_anomaly_dataset` keyword arguments from `add_dataset_mapping_flags`' flags."""
    options: dict = {}
    columns = {getattr(args, f"{c}_column"): c for c in MAPPED_COLUMNS if getattr(args, f"{c}_column", None)}
    if columns:
        options["column_mapping"] = columns
    if getattr(args, "split_mapping", None):
        text = args.split_mapping
        options["split_mapping"] = text if ("{" in text or text.startswith("column:")) else _pairs(text, "--split-mapping")
    if getattr(args, "label_mapping", None):
        labels = _pairs(args.label_mapping, "--label-mapping")
        bad = {k: v for k, v in labels.items() if v not in ("0", "1")}
        if bad:
            raise CommandError(f"--label-mapping: every value must map to 0 or 1, got {bad}")
        options["label_mapping"] = {key: int(value) for key, value in labels.items()}
    if getattr(args, "no_preset", False):
        options["preset"] = False
    return options


# ---------------------------------------------------------------------------------------- paths and ids
def looks_like_path(value: str) -> bool:
    """True unless `value` has the shape of a Hub id (`org/name`): `./x`, `/x`, `~/x`, `x`, `a/b/c`, `x/`."""
    return (
        value.startswith((".", "/", "~"))
        or "\\" in value
        or value.endswith("/")
        or value.count("/") != 1
    )


def local_path_or_hub_id(value: str, flag: str) -> str:
    """`value` if it exists on disk or has the shape of a Hub id; else "no such file or folder"."""
    if Path(value).expanduser().exists():
        return os.fspath(Path(value).expanduser())
    if looks_like_path(value):
        raise CommandError(f"no such file or folder: {value} ({flag}; a Hub id looks like org/name)")
    return value


def prepare_output_dir(path: str | os.PathLike, *, flag: str, overwrite: bool = False,
                       resume: bool = False, resume_flag: str | None = None) -> Path:
    """Claim the output folder before any work: create it, lock it for this process (a second command
    into the same folder is refused at once, naming the holder), and check that it is a writable folder,
    empty unless `overwrite` or `resume` is set. Returns it as a `Path`."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"{flag} {folder} exists and is not a folder; choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=_PROBE):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CommandError(f"cannot write to {flag} {folder} ({reason}); choose a writable folder") from None
    lock_output_dir(folder, flag)
    if launch_rank() > 0:  # the rank-0 process of a distributed launch checks the folder for the whole job
        return folder
    if not (overwrite or resume) and any(not p.name.startswith((_PROBE, LOCK_NAME)) for p in folder.iterdir()):
        release_output_dir(folder)
        hint = f", {resume_flag} to continue the run there" if resume_flag else ""
        raise CommandError(
            f"{flag} {folder} is not empty: pass --overwrite to write over it{hint}, or choose another {flag}"
        )
    return folder


# Output folders this process holds: `{folder: FileLock}`, released (and their lock files removed) at exit.
_HELD: dict[Path, Any] = {}
# "prog": the command `run_command` runs (named in the lock of its output folder); "verbose": --verbose.
_RUNNING: dict[str, Any] = {}


def lock_output_dir(folder: Path, flag: str) -> None:
    """Hold `folder/.zsad-lock` (a `filelock` lock, as huggingface_hub's cache uses) until this process
    ends; the holder's pid and command line go into `.zsad-lock.json` so that a refused command names it.
    Only rank 0 of a distributed launch takes it: the other processes of the same job write there too."""
    from filelock import FileLock, Timeout

    folder = folder.resolve()
    if folder in _HELD or launch_rank() > 0:  # in a distributed launch the rank-0 process holds it for all
        return
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = json.loads((folder / LOCK_INFO).read_text(encoding="utf-8"))
            who = f"{holder['command']} (pid {holder['pid']})"
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise CommandError(f"{folder} is in use by {who}: wait for it to finish, or choose another output folder") from None
    command = _RUNNING.get("prog") or Path(sys.argv[0]).name
    write_text_atomic(folder / LOCK_INFO, json.dumps({"pid": os.getpid(), "command": command}))
    if not _HELD:
        atexit.register(_release_all)
    _HELD[folder] = lock


def launch_rank() -> int:
    """This process's global rank under torchrun / `accelerate launch` / MPI (0 outside a distributed launch)."""
    return _launch_value(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"), 0)


def launch_world_size() -> int:
    """How many processes a distributed launch started (1 outside one)."""
    return _launch_value(("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"), 1)


def _launch_value(names: tuple[str, ...], default: int) -> int:
    """The first of these launcher variables (torchrun / accelerate, MPI implementations) that is set."""
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def release_output_dir(folder: Path) -> None:
    lock = _HELD.pop(folder.resolve(), None)
    if lock is not None:
        (folder / LOCK_INFO).unlink(missing_ok=True)
        lock.release()
        (folder / LOCK_NAME).unlink(missing_ok=True)


def _release_all() -> None:
    for folder in list(_HELD):
        release_output_dir(folder)


# ------------------------------------------------------------------------------------------- device
def resolve_device(name: str):
    """`auto` (CUDA, then MPS, then CPU) or a torch device name that this machine actually has."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if torch.version.cuda is None:
            raise CommandError(f"--device {name}: this torch build ({torch.__version__}) has no CUDA support; "
                               "use --device cpu, or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise CommandError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CommandError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise CommandError(f"--device {name!r}: unsupported device type; use auto, cpu, cuda, cuda:N or mps")
    return device


# ---------------------------------------------------------------------------------------------- Hub
def check_hub_access(repo_id: str, *, what: str, flag: str) -> None:
    """`zsad.hub.offline.ensure_downloadable` with the command line's recipe (`flag` DIR), as a CommandError."""
    try:
        ensure_downloadable(repo_id, what=what, alternative=f"pass {flag} DIR with a local copy ({OFFLINE_HINT})")
    except HubUnreachableError as error:
        raise CommandError(str(error)) from None


# ------------------------------------------------------------------------------------- running commands
def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error (bad input or data), None for anything else (a bug)."""
    if isinstance(error, CommandError):
        return str(error)
    if isinstance(error, OSError):  # files, disks, network: the message names the path or host
        return first_line(error)
    # zsad's own input errors; their modules are loaded whenever they can have been raised.
    for module, name in (("zsad.data.errors", "DataError"), ("zsad.clip.processing", "ImageLoadError"),
                         ("zsad.configuration_zsad", "ConfigFieldError")):
        error_class = getattr(sys.modules.get(module), name, None)
        if error_class is not None and isinstance(error, error_class):
            return first_line(error)
    return None


def _show_warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """zsad's warnings as one readable line (`warning: ...`) instead of Python's file:line format; the
    libraries' warnings only with --verbose."""
    if _RUNNING.get("verbose") or issubclass(category, ZSADWarning):
        print(f"warning: {message}", file=sys.stderr if file is None else file)


# Environment variables that quiet the libraries before they are imported (read at their import).
QUIET_LIBRARIES = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error",
                   "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                   "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def quiet_libraries() -> None:
    """Keep the libraries' INFO lines and progress bars (weight loading, split generation) off stderr:
    through their environment variables, and directly for those already imported."""
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def terminate_like_ctrl_c() -> Any:
    """SIGTERM (from a scheduler, `timeout`, `kill`) raises KeyboardInterrupt, as Ctrl-C does, so every
    command stops the way it stops on Ctrl-C (detect keeps its finished rows and prints the --resume
    command; train saves a checkpoint). Only in the main thread, where Python runs signal handlers; returns
    the previous handler (None elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def run_command(prog: str, func: Callable[[], int | None], *, debug: bool = False, verbose: bool = False) -> int:
    """Run `func` under the error contract; returns the exit status (0, 1 for a bug, 2, 130 on Ctrl-C).
    Without `verbose`, the libraries stay quiet (`quiet_libraries`) and only zsad's warnings are shown."""
    _RUNNING.update(prog=prog, verbose=verbose)
    if not verbose:
        quiet_libraries()
    previous_sigterm = terminate_like_ctrl_c()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning_line
            result = func()
        return 0 if result is None else int(result)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the contract: no traceback without --debug
        if debug:
            traceback.print_exc()
        message = user_error_message(error)
        if message is not None:
            print(f"{prog}: error: {message}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(error).__name__}: {first_line(error)}"
              f"{'' if debug else ' (run again with --debug for the traceback)'}", file=sys.stderr)
        return 1
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
