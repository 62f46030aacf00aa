"""Errors and warnings raised by `zsad.data`.

Every error names the file, folder or column at fault, so a user can fix the input without reading a
traceback.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from ..errors import ZSADWarning

PathLike = Union[str, os.PathLike]


class DataError(ValueError):
    """Base class for bad input data. `path` is the file or folder at fault (or None)."""

    def __init__(self, message: str, path: Optional[PathLike] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class ConversionError(DataError):
    """A source folder cannot be converted (corrupt image, orphan mask, size mismatch, unknown layout...)."""


class SchemaError(DataError):
    """A dataset does not follow the anomaly-detection schema of `zsad.data.schema`."""


class DataWarning(ZSADWarning):
    """Something in the data is suspicious but usable (empty masks, anomalous images without a mask...)."""
