"""Lazy preprocessing (`with_transform`) and batching for anomaly-schema datasets.

    >>> from zsad import ZSADImageProcessor
    >>> from zsad.data import build_transform, collate_fn, load_anomaly_dataset
    >>> ds = load_anomaly_dataset("mvtec_parquet", split="test")
    >>> ds = ds.with_transform(build_transform(ZSADImageProcessor(image_size=518)))
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_fn)

Each transformed example holds `pixel_values (3, S, S)`, `mask (S, S)` in {0, 1}, `label`, `has_mask`,
`category`, `defect_type`, `dataset`, `domain` (a `domain` column when the data has one, else the
`dataset`), `image_id`. The image and its mask go through the same resize
(the processor resizes both to S x S from the same original size, which is checked here), so the mask
stays on the defect. `collate_fn` stacks a list of them into the batch contract:

| key            | value                                                                           |
|----------------|---------------------------------------------------------------------------------|
| `pixel_values` | `(B, 3, S, S)` float32, CLIP-normalised                                         |
| `masks`        | `(B, S, S)` float32 in {0, 1}; zeros for normal images                          |
| `labels`       | `(B,)` int64, 0 = normal, 1 = anomaly                                           |
| `has_mask`     | `(B,)` bool; False when the pixel ground truth is unknown (anomalous image      |
|                | without a mask): pixel metrics must skip those images                           |
| `categories`   | `list[str]`                                                                     |
| `defect_types` | `list[str]`                                                                     |
| `datasets`     | `list[str]` (source dataset names)                                              |
| `domains`      | `list[str]` (each image's domain: the `domain` column, else its dataset)        |
| `image_ids`    | `list[str]`                                                                     |
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Optional

import datasets
import torch
from PIL import Image

from ..clip.processing import ZSADImageProcessor, load_image
from .errors import SchemaError
from .schema import ANOMALY, NORMAL, NORMAL_DEFECT_TYPE, label_to_id

DEFAULT_CATEGORY = "object"
EXAMPLE_KEYS = ("pixel_values", "mask", "label", "has_mask", "category", "defect_type", "dataset", "domain", "image_id")


def as_pil(value: Any, what: str) -> Image.Image:
    """A decoded `Image` value, an undecoded `{"bytes", "path"}` dict, a path or an array -> PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            with Image.open(io.BytesIO(value["bytes"])) as image:
                image.load()
                return image.copy()
        if value.get("path"):
            return load_image(value["path"])
        raise SchemaError(f"{what}: image dict without bytes or path")
    if value is None:
        raise SchemaError(f"{what}: image is missing (None)")
    return load_image(value)


class AnomalyTransform:
    """Batch transform: schema columns -> model inputs (see the module docstring). Picklable, so it
    works with `DataLoader(num_workers>0)` under any start method."""

    def __init__(self, processor: ZSADImageProcessor) -> None:
        self.processor = processor

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r})"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "image" not in batch or "label" not in batch:
            raise SchemaError(
                f"examples need 'image' and 'label' columns, got {sorted(batch)}; load data with "
                "zsad.data.load_anomaly_dataset to check the schema"
            )
        images = batch["image"]
        size = len(images)
        masks = batch.get("mask") or [None] * size
        ids = batch.get("image_id") or [None] * size
        categories = batch.get("category") or [None] * size
        defects = batch.get("defect_type") or [None] * size
        names = batch.get("dataset") or [None] * size
        domains = batch.get("domain") or names  # a `domain` column, else the source dataset
        out: dict[str, list] = {key: [] for key in EXAMPLE_KEYS}
        for i in range(size):
            where = f"image {ids[i]!r}" if ids[i] else f"example {i} of the batch"
            label = label_to_id(batch["label"][i], where)
            image = as_pil(images[i], where)
            mask = None if masks[i] is None else as_pil(masks[i], f"mask of {where}")
            if mask is not None and mask.size != image.size:
                raise SchemaError(
                    f"mask of {where} is {mask.size[0]}x{mask.size[1]} but the image is "
                    f"{image.size[0]}x{image.size[1]}; masks must have their image's size"
                )
            out["pixel_values"].append(self.processor.preprocess_image(image))
            out["mask"].append(self.processor.preprocess_mask(mask))
            out["label"].append(label)
            out["has_mask"].append(mask is not None or label == NORMAL)
            out["category"].append(categories[i] if categories[i] is not None else DEFAULT_CATEGORY)
            out["defect_type"].append(
                defects[i] if defects[i] is not None else (NORMAL_DEFECT_TYPE if label == NORMAL else "anomaly")
            )
            out["dataset"].append(names[i] if names[i] is not None else "")
            out["domain"].append(domains[i] if domains[i] is not None else "")
            out["image_id"].append(ids[i] if ids[i] is not None else "")
        return out


def build_transform(
    processor: Optional[ZSADImageProcessor] = None, *, image_size: Optional[int] = None
) -> AnomalyTransform:
    """A batch transform for `Dataset.with_transform` (or `IterableDataset.map(..., batched=True)`).

    `processor` defaults to `ZSADImageProcessor(image_size=image_size or 518)`. Only `image` and
    `label` are required; a missing `mask` column means image-level-only data, a missing `category`
    becomes "object", a missing `defect_type` becomes "good"/"anomaly".
    """
    if processor is None:
        processor = ZSADImageProcessor(image_size=image_size or 518)
    elif image_size is not None and image_size != processor.image_size:
        raise ValueError(f"image_size={image_size} disagrees with the processor's image_size={processor.image_size}")
    return AnomalyTransform(processor)


def collate_fn(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack transformed examples (see `build_transform`) into the batch dict of the module docstring."""
    if not examples:
        raise ValueError("collate_fn got an empty list of examples")
    missing = [key for key in ("pixel_values", "mask", "label") if key not in examples[0]]
    if missing:
        raise ValueError(
            f"collate_fn expects examples from build_transform (keys {list(EXAMPLE_KEYS)}), got keys "
            f"{sorted(examples[0])}; use ds.with_transform(build_transform(processor)) or AnomalyCollator(processor)"
        )
    shapes = {tuple(example["pixel_values"].shape) for example in examples}
    if len(shapes) > 1:
        raise ValueError(f"examples have different pixel_values shapes {sorted(shapes)}; use one processor")
    labels = [int(example["label"]) for example in examples]
    has_mask = [bool(example.get("has_mask", example["label"] == NORMAL)) for example in examples]
    batch = {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"], dtype=torch.float32) for e in examples]),
        "masks": torch.stack([torch.as_tensor(e["mask"], dtype=torch.float32) for e in examples]),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "has_mask": torch.tensor(has_mask, dtype=torch.bool),
        "categories": [str(e.get("category", DEFAULT_CATEGORY)) for e in examples],
        "defect_types": [str(e.get("defect_type", "")) for e in examples],
        "datasets": [str(e.get("dataset", "")) for e in examples],
        "domains": [str(e.get("domain", e.get("dataset", ""))) for e in examples],
        "image_ids": [str(e.get("image_id", "")) for e in examples],
    }
    bad = [label for label in labels if label not in (NORMAL, ANOMALY)]
    if bad:
        raise ValueError(f"labels must be 0 (normal) or 1 (anomaly), got {bad}")
    return batch


class AnomalyCollator:
    """Collate *raw* schema examples (PIL images) directly: transform + `collate_fn` in one step.

    Handy for streaming datasets: `DataLoader(iterable_ds, batch_size=8, collate_fn=AnomalyCollator(p))`.
    """

    def __init__(self, processor: Optional[ZSADImageProcessor] = None, *, image_size: Optional[int] = None) -> None:
        self.transform = build_transform(processor, image_size=image_size)
        self.processor = self.transform.processor

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("AnomalyCollator got an empty list of examples")
        keys = set().union(*(example.keys() for example in examples))
        columns = {key: [example.get(key) for example in examples] for key in keys}
        out = self.transform(columns)
        rows = [{key: out[key][i] for key in out} for i in range(len(examples))]
        return collate_fn(rows)


def with_anomaly_transform(dataset, processor: Optional[ZSADImageProcessor] = None, *, image_size: Optional[int] = None):
    """Attach the transform to a `Dataset`/`DatasetDict` (lazy `with_transform`) or an iterable dataset (lazy `map`)."""
    transform = build_transform(processor, image_size=image_size)
    if isinstance(dataset, (datasets.Dataset, datasets.DatasetDict)):
        return dataset.with_transform(transform)
    if isinstance(dataset, datasets.IterableDatasetDict):
        return datasets.IterableDatasetDict(
            {name: with_anomaly_transform(split, transform.processor) for name, split in dataset.items()}
        )
    if isinstance(dataset, datasets.IterableDataset):
        columns = list(dataset.column_names or [])
        return dataset.map(transform, batched=True, remove_columns=columns)
    raise TypeError(f"expected a datasets Dataset, DatasetDict or IterableDataset, got {type(dataset).__name__}")
