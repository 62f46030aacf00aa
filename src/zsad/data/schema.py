"""The one `datasets` schema for anomaly detection used throughout zsad.

| column        | feature                                | meaning                                                        |
|---------------|----------------------------------------|----------------------------------------------------------------|
| `image`       | `Image()`                              | the picture, any size and mode                                 |
| `mask`        | `Image()`, nullable                    | binary pixel ground truth (L, 0/255, same size as `image`);    |
|               |                                        | `None` for normal images and for anomalous images whose pixel  |
|               |                                        | ground truth is unknown (image-level-only data)                |
| `label`       | `ClassLabel(["normal", "anomaly"])`    | image-level ground truth, 0 = normal, 1 = anomaly              |
| `category`    | `Value("string")`                      | object / texture class ("bottle", "magnetic_tile", ...)        |
| `defect_type` | `Value("string")`                      | "good" for normal images, else the defect ("crack", ...)       |
| `dataset`     | `Value("string")`                      | source dataset name ("mvtec", "visa", ...)                     |
| `image_id`    | `Value("string")`                      | path of the image relative to the source root (unique id)      |

Splits ("train" / "test") are dataset splits, not a column: a converted folder loads as a
`DatasetDict`. Only `image` and `label` are required when loading third-party data; the other columns
get defaults in the transform (see `zsad.data.transforms`).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import datasets
from datasets import ClassLabel, Features, Image, Value

from .errors import SchemaError

LABEL_NAMES: tuple[str, str] = ("normal", "anomaly")
NORMAL: int = 0
ANOMALY: int = 1
NORMAL_DEFECT_TYPE = "good"
SPLITS: tuple[str, str] = ("train", "test")

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "label")
STRING_COLUMNS: tuple[str, ...] = ("category", "defect_type", "dataset", "image_id")

COLUMN_DESCRIPTIONS: dict[str, str] = {
    "image": "the image (any size and PIL mode)",
    "mask": "binary pixel ground truth (L mode, 0/255, same size as the image); null for normal images "
    "and for anomalous images without pixel annotation",
    "label": "image-level ground truth: 0 = normal, 1 = anomaly",
    "category": "object or texture class, e.g. 'bottle'",
    "defect_type": "'good' for normal images, otherwise the defect name, e.g. 'crack'",
    "dataset": "name of the source dataset, e.g. 'mvtec'",
    "image_id": "path of the image relative to the source root; unique within a dataset",
}

# Label spellings found in public datasets and user folders, mapped onto LABEL_NAMES.
LABEL_ALIASES: dict[str, int] = {
    **{name: NORMAL for name in ("normal", "good", "ok", "nominal", "negative", "0", "false")},
    **{
        name: ANOMALY
        for name in (
            "anomaly", "anomalous", "abnormal", "defect", "defective", "bad", "ko", "ng", "positive", "1",
            "true",
        )
    },
}


def anomaly_features() -> Features:
    """A fresh copy of the schema's `Features`."""
    return Features(
        {
            "image": Image(),
            "mask": Image(),
            "label": ClassLabel(names=list(LABEL_NAMES)),
            "category": Value("string"),
            "defect_type": Value("string"),
            "dataset": Value("string"),
            "image_id": Value("string"),
        }
    )


FEATURES: Features = anomaly_features()


def label_to_id(value: Any, where: str = "label") -> int:
    """Map a label value (0/1, bool, or a name such as "good"/"anomaly") to 0 = normal / 1 = anomaly."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) or (hasattr(value, "item") and not isinstance(value, (str, bytes))):
        number = int(value)
        if number in (NORMAL, ANOMALY):
            return number
        raise SchemaError(f"{where}: label {value!r} is not 0 (normal) or 1 (anomaly)")
    if isinstance(value, str):
        key = value.strip().lower()
        if key in LABEL_ALIASES:
            return LABEL_ALIASES[key]
        raise SchemaError(
            f"{where}: unknown label {value!r}; use 0/'normal' or 1/'anomaly' "
            f"(also accepted: {', '.join(sorted(LABEL_ALIASES))})"
        )
    raise SchemaError(f"{where}: label {value!r} of type {type(value).__name__} is not 0/1 or a label name")


def _describe(source: Optional[str]) -> str:
    return f"dataset {source}" if source else "dataset"


def validate_features(features: Optional[Features], source: Optional[str] = None) -> None:
    """Check that `features` can be read as the anomaly schema; raise `SchemaError` naming the problem.

    Accepted: `image` as `Image()` (or string paths), `label` as `ClassLabel` whose names are label
    aliases, an integer or a string; optional `mask` as `Image()`; optional string-like metadata columns.
    `features=None` (some streaming sources) cannot be checked up front and is accepted.
    """
    if features is None:
        return
    where = _describe(source)
    columns = list(features)
    for column in REQUIRED_COLUMNS:
        if column not in features:
            raise SchemaError(
                f"{where} has no '{column}' column (columns: {', '.join(columns) or 'none'}); "
                f"the anomaly schema needs {', '.join(REQUIRED_COLUMNS)} (see zsad.data.schema)",
                source,
            )
    image = features["image"]
    if not isinstance(image, Image) and image != Value("string") and image != Value("large_string"):
        raise SchemaError(f"{where}: column 'image' must be an Image feature, got {image}", source)
    if "mask" in features and not isinstance(features["mask"], Image):
        raise SchemaError(f"{where}: column 'mask' must be an Image feature, got {features['mask']}", source)
    label = features["label"]
    if isinstance(label, ClassLabel):
        unknown = [name for name in label.names if name.strip().lower() not in LABEL_ALIASES]
        if unknown:
            raise SchemaError(
                f"{where}: label names {label.names} include {unknown}, which are neither normal nor "
                f"anomaly names; expected {list(LABEL_NAMES)}",
                source,
            )
    elif not (isinstance(label, Value) and (label.dtype in ("string", "large_string", "bool") or "int" in label.dtype)):
        raise SchemaError(f"{where}: column 'label' must be a ClassLabel, an integer or a string, got {label}", source)
    for column in STRING_COLUMNS:
        if column in features:
            feature = features[column]
            if not (isinstance(feature, ClassLabel) or isinstance(feature, Value)):
                raise SchemaError(f"{where}: column '{column}' must hold strings, got {feature}", source)


DatasetLike = Union[datasets.Dataset, datasets.IterableDataset]


def _replace_feature(features: Features, column: str, feature: Any) -> Features:
    new = Features(dict(features))
    new[column] = feature
    return new


def _map_column(ds: DatasetLike, column: str, function, feature: Any) -> DatasetLike:
    """Apply `function` element-wise to one column and give it `feature`."""
    features = _replace_feature(ds.features, column, feature)

    def apply(values):
        return {column: [function(value) for value in values]}

    kwargs: dict[str, Any] = {"batched": True, "input_columns": [column], "features": features}
    if isinstance(ds, datasets.Dataset):
        kwargs["desc"] = f"normalising {column}"
    return ds.map(apply, **kwargs)


def ensure_schema(ds: DatasetLike, source: Optional[str] = None) -> DatasetLike:
    """Validate `ds` and bring `label`/metadata columns onto the schema's features.

    - `label` becomes `ClassLabel(["normal", "anomaly"])`: other ClassLabel name orders (e.g. the
      alphabetical `["anomaly", "normal"]` that `imagefolder` infers from folder names), aliases such as
      "good"/"defect", integers and strings are mapped.
    - `ClassLabel` metadata columns (`category`, ...) become strings.
    - an `image` column of string paths becomes `Image()`.
    """
    features = ds.features
    validate_features(features, source)
    if features is None:
        return ds
    target = ClassLabel(names=list(LABEL_NAMES))
    label = features["label"]
    if isinstance(label, ClassLabel):
        if list(label.names) != list(LABEL_NAMES):
            mapping = [LABEL_ALIASES[name.strip().lower()] for name in label.names]
            if mapping == list(range(len(mapping))):
                ds = ds.cast_column("label", target)
            else:
                ds = _map_column(ds, "label", lambda value: mapping[value], target)
    elif "int" in label.dtype and isinstance(ds, datasets.Dataset):
        values = set(ds.unique("label"))
        if not values <= {NORMAL, ANOMALY}:
            raise SchemaError(
                f"{_describe(source)}: column 'label' holds {sorted(values)}; expected 0 (normal) and 1 (anomaly)",
                source,
            )
        ds = ds.cast_column("label", target)
    else:  # strings, booleans, or integers of a stream (checked lazily, per example)
        where = _describe(source) + " column 'label'"
        ds = _map_column(ds, "label", lambda value: label_to_id(value, where), target)
    for column in STRING_COLUMNS:
        feature = ds.features.get(column)
        if isinstance(feature, ClassLabel):
            names = list(feature.names)
            ds = _map_column(ds, column, lambda value, names=names: None if value is None else names[value], Value("string"))
    if not isinstance(ds.features["image"], Image):
        ds = ds.cast_column("image", Image())
    return ds
