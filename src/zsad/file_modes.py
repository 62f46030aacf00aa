"""Saved files get the permissions of any other new file of the process (0644 under umask 022), and text
results are replaced atomically (`write_text_atomic`).

safetensors 0.8 writes through a temporary file that it creates with mode 0600 and renames into place,
so every `.safetensors` file it writes (directly, or through `save_pretrained` and Accelerate's
`save_state`) is readable by its owner only: a checkpoint trained by one user, or baked into a container
image as root, cannot be loaded by anyone else. zsad saves its safetensors files through
`save_safetensors`, and `follow_umask` mends the ones other libraries write.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRIVATE_MODE = 0o600


def new_file_mode() -> int:
    """The permission bits `open(path, "w")` gives a new file: 0o666 without the process umask."""
    umask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(umask)
    return 0o666 & ~umask


def follow_umask(folder: str | os.PathLike) -> None:
    """Give the private (0600) safetensors files directly inside `folder` the mode of a new file."""
    mode = new_file_mode()
    for path in Path(folder).glob("*.safetensors"):
        if path.is_file() and path.stat().st_mode & 0o777 == PRIVATE_MODE:
            path.chmod(mode)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` with the mode `open(path, "w")` would leave: an existing file keeps
    its permissions, a new one follows the umask."""
    from safetensors.torch import save_file

    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else new_file_mode()
    save_file(dict(tensors), os.fspath(path), metadata=metadata)
    path.chmod(mode)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place: a reader sees the old
    file or the new one, never half of it."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False,
                                         encoding="utf-8", newline="")
    try:
        with handle:
            handle.write(text)
        os.chmod(handle.name, new_file_mode())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
