"""Anomaly-detection data: one `datasets` schema, converters, loading, preprocessing, synthetic defects.

See docs/data.md. Main entry points:

- `FEATURES` / `anomaly_features()`: the schema (image, mask, label, category, defect_type, dataset, image_id);
- `convert_mvtec`, `convert_visa`, `convert_folder` (and `zsad convert ...`): build it from disk;
- `load_anomaly_dataset(path_or_id, split=None, categories=None, streaming=False)`;
- `load_anomaly_datasets([a, b], split=...)`: several sources concatenated (AdaCLIP's two-dataset training);
- `build_transform(processor)` for `ds.with_transform(...)`, `collate_fn`, `AnomalyCollator`;
- `zsad.data.synthetic`: procedural textures and defects with exact masks.
"""

from .converters import LAYOUTS, convert, convert_folder, convert_mvtec, convert_visa
from .errors import ConversionError, DataError, DataWarning, SchemaError
from .layouts import Sample, scan_folder, scan_mvtec, scan_visa
from .loading import load_anomaly_dataset, load_anomaly_datasets, summarize
from .schema import (
    COLUMN_DESCRIPTIONS,
    FEATURES,
    LABEL_NAMES,
    SPLITS,
    anomaly_features,
    ensure_schema,
    label_to_id,
    validate_features,
)
from .synthetic import DEFECTS, TEXTURES, add_defect, make_synthetic_dataset, make_texture, write_synthetic_mvtec
from .transforms import AnomalyCollator, AnomalyTransform, build_transform, collate_fn, with_anomaly_transform
from .writer import FORMATS, ConversionReport

__all__ = [
    "AnomalyCollator",
    "AnomalyTransform",
    "COLUMN_DESCRIPTIONS",
    "ConversionError",
    "ConversionReport",
    "DEFECTS",
    "DataError",
    "DataWarning",
    "FEATURES",
    "FORMATS",
    "LABEL_NAMES",
    "LAYOUTS",
    "SPLITS",
    "Sample",
    "SchemaError",
    "TEXTURES",
    "add_defect",
    "anomaly_features",
    "build_transform",
    "collate_fn",
    "convert",
    "convert_folder",
    "convert_mvtec",
    "convert_visa",
    "ensure_schema",
    "label_to_id",
    "load_anomaly_dataset",
    "load_anomaly_datasets",
    "make_synthetic_dataset",
    "make_texture",
    "scan_folder",
    "scan_mvtec",
    "scan_visa",
    "summarize",
    "validate_features",
    "with_anomaly_transform",
    "write_synthetic_mvtec",
]
