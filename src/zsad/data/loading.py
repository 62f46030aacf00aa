"""`load_anomaly_dataset`: one entry point for every place anomaly data can live.

Accepted sources: a Hub dataset id, a folder written by `zsad convert` (parquet or imagefolder), a
folder of parquet files, a single parquet file, a user `imagefolder` (with or without metadata), and a
`save_to_disk` folder. The result is validated and normalised onto the schema of `zsad.data.schema`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import datasets
import pyarrow.compute as pc

from ..errors import first_line
from .errors import DataError, DataWarning, SchemaError
from .mapping import (
    PRESETS,
    DatasetPreset,
    SplitMapping,
    add_preset_columns,
    apply_column_mapping,
    apply_label_mapping,
    map_parts,
    regroup_splits,
)
from .schema import ANOMALY, ensure_schema

AnyDataset = Union[datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict]


def _is_save_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.sep in source.replace("/", "") or source.count("/") > 1


def _refuse_raw_layout(folder: Path) -> None:
    """A raw MVTec AD or VisA folder would load as a plain imagefolder (labels from folder names, masks
    silently dropped): refuse it and name the `zsad convert` command that reads it properly."""
    if any(folder.glob("*.parquet")) or any(folder.glob("*/metadata.*")) or any(folder.glob("metadata.*")):
        return
    if (folder / "split_csv").is_dir():
        raise DataError(f"{folder} is a raw VisA folder; convert it first with `zsad convert visa {folder} OUT` "
                        "and pass OUT", folder)
    candidates = [folder, *(d for d in folder.iterdir() if d.is_dir())]
    if any((d / "test").is_dir() and (d / "ground_truth").is_dir() for d in candidates):
        raise DataError(f"{folder} is a raw MVTec AD-style folder (<category>/test, ground_truth masks), which would "
                        f"be read without its masks; convert it first with `zsad convert mvtec {folder} OUT` and "
                        "pass OUT", folder)


def _not_found(source: str, path: Path, error: Exception) -> DataError:
    """`source` is neither a local file or folder nor a reachable Hub dataset. A name whose parent folder
    exists (`mvtec_typo`, `data/vsia`) is most likely a mistyped path, so that is said first."""
    local = f"there is no local file or folder {os.path.abspath(path)}"
    hub = f"{source!r} is not a reachable Hub dataset"
    reason = f"({type(error).__name__}: {first_line(error)})"
    if path.parent.is_dir():
        return DataError(f"dataset not found: {local}, and {hub} either {reason}", source)
    return DataError(f"dataset not found: {hub} {reason}, and {local} either", source)


def local_cache_dir(folder: Path) -> str:
    """A `datasets` cache folder for exactly these files (their absolute paths, sizes and modification times).

    `datasets` caches a local folder whose README declares its configs (as `zsad convert` writes it)
    under the folder's *name* only: a second `mvtec_parquet/` elsewhere, or a re-conversion in place,
    would be served the first one's cached rows. Keying the cache on the files avoids both.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return os.path.join(datasets.config.HF_DATASETS_CACHE, "zsad-local", digest.hexdigest()[:20])


def _load(source: str, split: Optional[str], streaming: bool, kwargs: dict[str, Any]) -> AnyDataset:
    path = Path(source).expanduser()
    try:
        if path.is_file():
            if path.suffix.lower() != ".parquet":
                raise DataError(
                    f"cannot load {path}: a single file must be a .parquet file (for imagefolders and converted "
                    "datasets pass the folder)",
                    path,
                )
            return datasets.load_dataset(
                "parquet", data_files={split or "train": str(path)}, streaming=streaming, **kwargs
            )
        if path.is_dir():
            if _is_save_to_disk(path):
                loaded = datasets.load_from_disk(str(path))
                if streaming:
                    if isinstance(loaded, datasets.DatasetDict):
                        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in loaded.items()})
                    return loaded.to_iterable_dataset()
                return loaded
            _refuse_raw_layout(path)
            kwargs = {"cache_dir": local_cache_dir(path), **kwargs}
            return datasets.load_dataset(str(path), streaming=streaming, **kwargs)
        if _looks_like_path(source):
            raise DataError(f"dataset not found: {os.path.abspath(path)} does not exist", path)
        return datasets.load_dataset(source, streaming=streaming, **kwargs)
    except DataError:
        raise
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError) as error:
        raise _not_found(source, path, error) from error
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as error:
        where = str(path) if path.exists() else f"'{source}' (not a local path; tried the Hugging Face Hub)"
        raise DataError(f"cannot load anomaly dataset {where}: {type(error).__name__}: {error}", source) from error


def _pick_split(ds: AnyDataset, split: Optional[str], source: str) -> AnyDataset:
    if split is None or not isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return ds
    if split not in ds:
        raise DataError(f"dataset {source} has no split {split!r}; available splits: {list(ds)}", source)
    return ds[split]


def _filter_categories(ds: AnyDataset, categories: list[str], source: str) -> AnyDataset:
    wanted = set(categories)
    parts = ds.values() if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)) else [ds]
    for part in parts:
        if part.column_names is not None and "category" not in part.column_names:
            raise SchemaError(f"dataset {source} has no 'category' column to select {sorted(wanted)} from", source)
    if isinstance(ds, (datasets.Dataset, datasets.DatasetDict)):
        available: set[str] = set()
        for part in parts:
            available.update(part.unique("category"))
        unknown = sorted(wanted - available)
        if unknown:
            raise DataError(f"dataset {source} has no categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                            f"available: {sorted(available)}", source)
    return ds.filter(lambda category: category in wanted, input_columns="category")


def summarize(ds: datasets.Dataset) -> dict[str, Any]:
    """Counts of a map-style dataset without decoding images: rows, normal/anomalous, masks, categories."""
    columns = [c for c in ("label", "mask", "category") if c in ds.column_names]
    table = ds.select_columns(columns).with_format("arrow")[:]
    labels = table.column("label")
    anomalous = pc.equal(labels, ANOMALY)
    num_anomalous = pc.sum(anomalous).as_py() or 0
    if "mask" in columns:
        without = pc.sum(pc.and_(anomalous, pc.is_null(table.column("mask")))).as_py() or 0
    else:
        without = num_anomalous
    return {
        "num_rows": table.num_rows,
        "num_normal": table.num_rows - num_anomalous,
        "num_anomalous": num_anomalous,
        "anomalous_without_mask": without,
        "has_mask_column": "mask" in columns,
        "categories": sorted(set(table.column("category").to_pylist())) if "category" in columns else [],
    }


def _warn_image_level_only(ds: AnyDataset, source: str) -> None:
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for name, part in parts:
        if not isinstance(part, datasets.Dataset) or part.num_rows == 0:
            continue
        info = summarize(part)
        if info["anomalous_without_mask"]:
            where = f"{source}" + (f" [{name}]" if name else "")
            warnings.warn(
                f"{info['anomalous_without_mask']} of {info['num_anomalous']} anomalous images in {where} have no "
                "mask: they have image-level labels only (has_mask=False) and pixel metrics skip them",
                DataWarning,
                stacklevel=3,
            )


def _resolve_preset(source: str, preset: Union[str, DatasetPreset, None, bool]) -> Optional[DatasetPreset]:
    if preset is False:
        return None
    if isinstance(preset, DatasetPreset):
        return preset
    if preset is None:
        return PRESETS.get(source)
    if preset not in PRESETS:
        raise DataError(f"unknown dataset preset {preset!r}; presets: {sorted(PRESETS)}", source)
    return PRESETS[preset]


def load_anomaly_dataset(
    path_or_id: Union[str, os.PathLike],
    split: Optional[str] = None,
    categories: Optional[Iterable[str]] = None,
    streaming: bool = False,
    *,
    column_mapping: Optional[dict[str, str]] = None,
    split_mapping: Optional[SplitMapping] = None,
    label_mapping: Optional[dict[Any, int]] = None,
    preset: Union[str, DatasetPreset, None, bool] = None,
    **kwargs: Any,
) -> AnyDataset:
    """Load anomaly data from anywhere and check it against the schema.

    Args:
        path_or_id: a Hub dataset id ("org/name"), a folder written by `zsad convert`, a parquet file or
            folder, an imagefolder, or a `save_to_disk` folder.
        split: "train"/"test"/...; None returns every split (a `DatasetDict`).
        categories: keep only these categories (the names must exist, except when streaming).
        streaming: return an `IterableDataset`/`IterableDatasetDict`.
        column_mapping: `{source column: schema column}`, e.g. `{"anomaly": "label"}` (`zsad.data.mapping`).
        split_mapping: `{source split: target split}`, or `"{category}.{split}"` / `"{category}"` when the
            split names carry the category, or `"column:<name>"` when a column holds the split.
        label_mapping: `{value: 0 or 1}` for label values outside the schema's aliases.
        preset: the mapping of a known Hub copy (`zsad.data.mapping.PRESETS`: `Voxel51/mvtec-ad`,
            `BrachioLab/visa`, `dddraxxx/visa-dataset`); None picks it from `path_or_id`, False turns it off.
            Explicit mappings override the preset's.
        **kwargs: passed on to `datasets.load_dataset` (e.g. `name=`, `cache_dir=`, `revision=`).

    Raises `DataError`/`SchemaError` (both `ValueError`s) naming the source. Warns (`DataWarning`) when
    anomalous images lack masks, i.e. the data is image-level only for them.
    """
    source = os.fspath(path_or_id)
    chosen = _resolve_preset(source, preset)
    if chosen is not None:
        column_mapping = {**chosen.column_mapping, **(column_mapping or {})}
        split_mapping = split_mapping if split_mapping is not None else chosen.split_mapping
    ds = _load(source, split if split_mapping is None else None, streaming, dict(kwargs))
    drop = chosen.drop_columns if chosen is not None else ()
    if column_mapping or drop:
        ds = map_parts(ds, lambda part: apply_column_mapping(part, column_mapping or {}, drop, source))
    if split_mapping is not None:
        ds = regroup_splits(ds, split_mapping, source)
    if chosen is not None:
        ds = add_preset_columns(ds, chosen)
    if label_mapping:
        ds = map_parts(ds, lambda part: apply_label_mapping(part, label_mapping, source))
    ds = _pick_split(ds, split, source)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):  # each split named in errors
        ds = type(ds)({name: ensure_schema(part, f"{source} [{name}]") for name, part in ds.items()})
    else:
        ds = ensure_schema(ds, source)
    if categories is not None:
        ds = _filter_categories(ds, list(categories), source)
    _warn_image_level_only(ds, source)
    return ds


def _align_columns(parts: list[datasets.Dataset]) -> list[datasets.Dataset]:
    """Give every part the union of the columns (missing ones filled with None, e.g. `mask` of image-level
    data) with the first part's feature types, so they concatenate."""
    features: dict[str, Any] = {}
    for part in parts:
        for name, feature in part.features.items():
            features.setdefault(name, feature)
    aligned = []
    for part in parts:
        for name, feature in features.items():
            if name not in part.column_names:
                part = part.add_column(name, [None] * part.num_rows, feature=feature)
        part = part.select_columns(list(features))
        if part.features != datasets.Features(features):
            part = part.cast(datasets.Features(features))
        aligned.append(part)
    return aligned


def load_anomaly_datasets(
    sources: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    split: Optional[str] = None,
    categories: Optional[Iterable[str]] = None,
    **kwargs: Any,
) -> datasets.Dataset:
    """Several anomaly datasets as one training set, rows concatenated in the order given.

    AdaCLIP trains on two auxiliary datasets at once (MVTec AD + ColonDB, or VisA + ClinicDB, as
    the AdaCLIP authors' corrected protocol says). Each source is read by `load_anomaly_dataset` with the same `split` (required with several
    sources); columns missing from a source (e.g. `mask` of image-level data) are filled with None, and
    the `dataset` column keeps each row's origin. `categories` selects from the union of the sources:
    every name must exist in at least one. One source gives `load_anomaly_dataset`'s result unchanged.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [os.fspath(source) for source in sources]
    if not sources:
        raise DataError("no dataset given", None)
    if len(sources) == 1:
        return load_anomaly_dataset(sources[0], split=split, categories=categories, **kwargs)
    parts = []
    for source in sources:
        part = load_anomaly_dataset(source, split=split, **kwargs)
        if not isinstance(part, datasets.Dataset):
            raise DataError(
                f"cannot concatenate {source}: it has several splits {list(part)}; choose one with split=", source
            )
        parts.append(part)
    combined = datasets.concatenate_datasets(_align_columns(parts))
    if categories is not None:
        combined = _filter_categories(combined, list(categories), " + ".join(sources))
    return combined
