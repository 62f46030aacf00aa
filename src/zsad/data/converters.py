"""Convert MVTec AD-style, VisA and plain folders into the anomaly schema (parquet or imagefolder).

    >>> from zsad.data import convert_mvtec, load_anomaly_dataset
    >>> report = convert_mvtec("mvtec_anomaly_detection", "mvtec_parquet", dataset_name="mvtec")
    >>> ds = load_anomaly_dataset("mvtec_parquet", split="test")

The output folder loads with `datasets.load_dataset(out)` as a `DatasetDict` with the source's `train`
and/or `test` splits. See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from .errors import ConversionError, PathLike
from .layouts import NORMAL_FOLDER_NAMES, ProblemLog, scan_folder, scan_mvtec, scan_visa
from .writer import DEFAULT_MAX_SHARD_BYTES, ConversionReport, write_samples

LAYOUTS = ("mvtec", "visa", "folder")


def convert_mvtec(
    src: PathLike,
    out: PathLike,
    *,
    format: str = "parquet",
    categories: Optional[Iterable[str]] = None,
    dataset_name: Optional[str] = None,
    normal_names: Sequence[str] = NORMAL_FOLDER_NAMES,
    overwrite: bool = False,
    skip_invalid: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> ConversionReport:
    """Convert an MVTec AD layout (also MPDD, BTAD): a root of category folders, or one category folder.

    `normal_names` are the folder names holding normal images ("good" for MVTec/MPDD, "ok" for BTAD).
    `dataset_name` fills the `dataset` column (default: the source folder's name).
    """
    log = ProblemLog(skip_invalid=skip_invalid)
    samples = scan_mvtec(src, categories=categories, normal_names=normal_names, log=log)
    return write_samples(
        samples, out, dataset_name=dataset_name or Path(src).resolve().name, layout="mvtec",
        sources=[Path(src)], format=format, overwrite=overwrite, log=log, max_shard_bytes=max_shard_bytes,
        progress=progress,
    )


def convert_visa(
    src: PathLike,
    out: PathLike,
    *,
    format: str = "parquet",
    categories: Optional[Iterable[str]] = None,
    dataset_name: str = "visa",
    overwrite: bool = False,
    skip_invalid: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> ConversionReport:
    """Convert a VisA root (`split_csv/1cls.csv` plus the category folders it lists)."""
    log = ProblemLog(skip_invalid=skip_invalid)
    samples = scan_visa(src, categories=categories, log=log)
    return write_samples(
        samples, out, dataset_name=dataset_name, layout="visa", sources=[Path(src)], format=format,
        overwrite=overwrite, log=log, max_shard_bytes=max_shard_bytes, progress=progress,
    )


def convert_folder(
    src: PathLike,
    out: PathLike,
    *,
    format: str = "parquet",
    category: Optional[str] = None,
    normal_dir: Optional[str] = None,
    anomaly_dir: Optional[str] = None,
    mask_dir: Optional[str] = None,
    split: str = "test",
    dataset_name: Optional[str] = None,
    overwrite: bool = False,
    skip_invalid: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> ConversionReport:
    """Convert your own data: a folder of normal images and one of anomalous images, masks optional.

    See `zsad.data.layouts.scan_folder` for the folder names that are recognised. Everything goes to
    one split (`split`, default "test": the split ZSAD evaluates, and trains on for auxiliary data).
    """
    log = ProblemLog(skip_invalid=skip_invalid)
    samples = scan_folder(
        src, category=category, normal_dir=normal_dir, anomaly_dir=anomaly_dir, mask_dir=mask_dir, split=split,
        log=log,
    )
    return write_samples(
        samples, out, dataset_name=dataset_name or Path(src).resolve().name, layout="folder",
        sources=[Path(src)], format=format, overwrite=overwrite, log=log, max_shard_bytes=max_shard_bytes,
        progress=progress,
    )


def convert(layout: str, src: PathLike, out: PathLike, **kwargs) -> ConversionReport:
    """Dispatch on `layout` ("mvtec", "visa" or "folder")."""
    converters = {"mvtec": convert_mvtec, "visa": convert_visa, "folder": convert_folder}
    if layout not in converters:
        raise ConversionError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}", src)
    return converters[layout](src, out, **kwargs)
