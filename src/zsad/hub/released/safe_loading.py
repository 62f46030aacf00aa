"""Reading the authors' `.pth` files safely (`torch.load(weights_only=True)` only) and checking a state
dict against a documented layout: the pieces every reference format shares."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import first_line


class CheckpointImportError(ValueError):
    """A released file that cannot be imported (refused pickle, wrong layout, inconsistent buffers)."""


def load_released_file(path: str | os.PathLike) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`; anything that needs more is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only errors read "... WeightsUnpickler error: <reason> ..." (the reason may follow blank lines).
        message = str(error)
        tail = message.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in message else message
        reason = next((line.strip() for line in tail.splitlines() if line.strip()), type(error).__name__)
        reason = reason.split(". ")[0]
        if reason.startswith("Unsupported global"):
            raise CheckpointImportError(
                f"{path}: refused: the file needs more than tensors and plain containers to load ({reason}); "
                "zsad loads released weights with weights_only=True and never unpickles arbitrary objects"
            ) from None
        raise CheckpointImportError(f"{path}: not a PyTorch checkpoint of tensors ({reason})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointImportError(f"{path}: not a PyTorch checkpoint ({first_line(error)})") from None


def check_layout(
    state: Mapping[str, torch.Tensor], layout: Mapping[str, tuple[int, ...]], path: Path, name: str, prefix: str = ""
) -> None:
    """Exactly the documented keys, each with its documented shape; ids integer, the rest floating point.
    `name` is the method in messages, `prefix` the part of the file's keys that `state` dropped."""
    missing = [k for k in layout if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointImportError(f"{path}: not a released {name} checkpoint: missing key {prefix + missing[0]!r}{more}")
    unexpected = [k for k in state if k not in layout]
    if unexpected:
        raise CheckpointImportError(f"{path}: not a released {name} checkpoint: unexpected key {prefix + unexpected[0]!r}")
    for key, shape in layout.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise CheckpointImportError(
                f"{path}: key {prefix + key!r} has shape {tuple(tensor.shape)}, expected {shape} "
                f"({name} at its released configuration on this backbone)"
            )
        integer = key.startswith("tokenized_prompts")
        if integer == tensor.dtype.is_floating_point or tensor.dtype.is_complex:
            kind_name = "an integer" if integer else "a floating-point"
            raise CheckpointImportError(f"{path}: key {prefix + key!r} has dtype {tensor.dtype}, expected {kind_name} tensor")
