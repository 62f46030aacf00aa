"""Reading datasets laid out differently from zsad's schema: column, split and label mappings, and the
presets that make the Hub's MVTec AD and VisA copies load by id alone (docs/data.md).

- `column_mapping`: `{source column: schema column}`, e.g. `{"anomaly": "label"}`; a missing source
  column is an error naming the columns that exist.
- `split_mapping`: `{source split: target split}` (several sources may merge into one), or a pattern
  over the split names that carries the category: `"{category}.{split}"` (`candle.test` -> split `test`,
  category `candle`) or `"{category}"` (every split is one category's test data).
- `label_mapping`: `{value: 0 or 1}` for label values outside zsad's aliases (e.g. `{"OK": 0, "NG": 1}`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import datasets

from .errors import DataError, SchemaError

SplitMapping = Union[str, Mapping[str, str]]
SPLIT_PATTERNS = ("{category}.{split}", "{category}")


@dataclass(frozen=True)
class DatasetPreset:
    """How one Hub dataset id maps onto the schema (applied when `load_anomaly_dataset` gets that id)."""

    dataset: str  # the value of the `dataset` column
    column_mapping: dict[str, str] = field(default_factory=dict)
    split_mapping: Optional[SplitMapping] = None
    drop_columns: tuple[str, ...] = ()
    note: str = ""


PRESETS: dict[str, DatasetPreset] = {
    # FiftyOne's MVTec AD export as a parquet/imagefolder dataset: one row per image with its category,
    # the defect as a string ("good" for normal images), the mask under `defect_mask` and the split as a
    # column (one Hub split holds train and test).
    "Voxel51/mvtec-ad": DatasetPreset(
        dataset="mvtec",
        column_mapping={"defect": "defect_type", "defect_mask": "mask"},
        split_mapping="column:split",
        note="label from defect != 'good'",
    ),
    # One split per category and protocol split: candle.train, candle.test, ... (24 splits).
    "BrachioLab/visa": DatasetPreset(dataset="visa", split_mapping="{category}.{split}"),
    # One split per category (100 test images each); the label is a bool column `anomaly`; `vis_mask`
    # is a rendering of the mask for viewing and is dropped.
    "dddraxxx/visa-dataset": DatasetPreset(
        dataset="visa", column_mapping={"anomaly": "label"}, split_mapping="{category}", drop_columns=("vis_mask",)
    ),
}


def _columns(ds: Any) -> list[str]:
    return list(ds.column_names) if ds.column_names is not None else list(ds.features or [])


def map_parts(ds: Any, function) -> Any:
    """`function` applied to each split of a `DatasetDict` (or to the dataset itself)."""
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(ds)({name: function(part) for name, part in ds.items()})
    return function(ds)


def apply_column_mapping(ds: Any, mapping: Mapping[str, str], drop: tuple[str, ...], source: str) -> Any:
    """Rename source columns onto the schema's names; drop `drop` (when present)."""
    columns = _columns(ds)
    missing = [name for name in mapping if name not in columns]
    if missing:
        raise SchemaError(
            f"dataset {source} has no column {', '.join(repr(m) for m in missing)} to map "
            f"(columns: {', '.join(columns) or 'none'})",
            source,
        )
    clashes = [target for name, target in mapping.items() if target in columns and target not in mapping]
    if clashes:
        raise SchemaError(f"dataset {source}: mapping onto {clashes} would overwrite existing columns of those names; "
                          "map or drop them first", source)
    present = [name for name in drop if name in columns]
    if present:
        ds = ds.remove_columns(present)
    return ds.rename_columns(dict(mapping)) if mapping else ds


def apply_label_mapping(ds: Any, mapping: Mapping[Any, int], source: str) -> Any:
    """Map the `label` column's values through `mapping` (every value must be a key) onto 0/1 integers."""
    if any(value not in (0, 1) for value in mapping.values()):
        raise DataError(f"label_mapping values must be 0 (normal) or 1 (anomaly); got {dict(mapping)}", source)
    keys = {str(key): value for key, value in mapping.items()}

    def convert(values: list) -> dict[str, list[int]]:
        out = []
        for value in values:
            key = value if value in mapping else str(value)
            if key not in mapping and key not in keys:
                raise SchemaError(f"dataset {source}: label {value!r} is not in label_mapping {sorted(keys)}", source)
            out.append(mapping[key] if key in mapping else keys[key])
        return {"label": out}

    features = datasets.Features({**ds.features, "label": datasets.Value("int64")}) if ds.features else None
    return ds.map(convert, batched=True, input_columns=["label"], features=features)


def _with_constant(ds: Any, column: str, value: str) -> Any:
    if column in _columns(ds):
        ds = ds.remove_columns(column)
    if isinstance(ds, datasets.Dataset):
        return ds.add_column(column, [value] * ds.num_rows)
    return ds.map(lambda example: {column: value})


def regroup_splits(ds: Any, mapping: SplitMapping, source: str) -> Any:
    """Splits as zsad expects them (`train`/`test`, categories as a column) from `mapping` (module docstring)."""
    if isinstance(mapping, str) and mapping.startswith("column:"):
        column = mapping.split(":", 1)[1]
        parts = list(ds.values()) if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)) else [ds]
        if isinstance(parts[0], datasets.IterableDataset) or len(parts) > 1:
            raise DataError(f"dataset {source}: a split column can only be read from one map-style split", source)
        part = parts[0]
        if column not in part.column_names:
            raise SchemaError(f"dataset {source} has no split column {column!r} (columns: {', '.join(part.column_names)})", source)
        names = sorted(set(part.unique(column)))
        return datasets.DatasetDict(
            {name: part.filter(lambda value, name=name: value == name, input_columns=column).remove_columns(column) for name in names}
        )
    if not isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"dataset {source} has a single split; a split mapping needs named splits", source)
    groups: dict[str, list] = {}
    if isinstance(mapping, str):
        if mapping not in SPLIT_PATTERNS:
            raise DataError(f"split_mapping {mapping!r} is not a mapping or one of {list(SPLIT_PATTERNS)}", source)
        pattern = re.compile(r"(?P<category>.+)\.(?P<split>[^.]+)" if mapping == "{category}.{split}" else r"(?P<category>.+)")
        for name, part in ds.items():
            match = pattern.fullmatch(name)
            if match is None:
                raise DataError(f"dataset {source}: split {name!r} does not match {mapping!r}", source)
            target = match.groupdict().get("split", "test")
            groups.setdefault(target, []).append(_with_constant(part, "category", match["category"]))
    else:
        unknown = sorted(set(mapping) - set(ds))
        if unknown:
            raise DataError(f"dataset {source} has no split {unknown} to map; available splits: {list(ds)}", source)
        for name, part in ds.items():
            if name in mapping:
                groups.setdefault(mapping[name], []).append(part)
    merged = {
        name: parts[0] if len(parts) == 1 else (
            datasets.concatenate_datasets(parts) if isinstance(parts[0], datasets.Dataset)
            else datasets.interleave_datasets(parts, stopping_strategy="all_exhausted")
        )
        for name, parts in groups.items()
    }
    return type(ds)(merged)


def add_preset_columns(ds: Any, preset: DatasetPreset) -> Any:
    """Columns a preset derives: `dataset`, and for FiftyOne's MVTec AD the label from the defect."""
    def complete(part: Any) -> Any:
        columns = _columns(part)
        if "dataset" not in columns:
            part = _with_constant(part, "dataset", preset.dataset)
        if "label" not in columns and "defect_type" in columns:
            part = part.map(
                lambda defects: {"label": [int(defect != "good") for defect in defects]},
                batched=True, input_columns=["defect_type"],
            )
        return part

    return map_parts(ds, complete)
