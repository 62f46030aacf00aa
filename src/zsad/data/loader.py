"""Input pipelines that keep the model busy: decoding and preprocessing in `DataLoader` workers, pinned
memory for non-blocking copies to a GPU (docs/benchmarks.md, "End to end").

- `anomaly_dataloader(dataset, processor, ...)`: batches of an anomaly dataset (evaluate, calibrate);
- `ImageFiles` + `collate_image_files`: image files for `zsad detect`, an unreadable file reported as
  an item with its error instead of stopping the run;
- `default_num_workers()`: the worker count the commands use when `--num-workers` is not given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..background import usable_cores
from ..clip.processing import ImageLoadError, ZSADImageProcessor, load_rgb
from .transforms import collate_fn, with_anomaly_transform

# More workers than this rarely help one model: decoding a 518 px image takes ~10 ms on one core.
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """One worker per core this process may use, less one for the main process, at most 8 (0 on one core)."""
    return max(0, min(MAX_DEFAULT_WORKERS, usable_cores() - 1))


def _loader_options(num_workers: Optional[int], device: Optional[torch.device]) -> dict[str, Any]:
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0; got {workers}")
    return {"num_workers": workers, "pin_memory": device is not None and device.type == "cuda"}


def anomaly_dataloader(
    dataset,
    processor: ZSADImageProcessor,
    batch_size: int,
    *,
    num_workers: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> DataLoader:
    """Batches (`zsad.data.collate_fn`) of an anomaly dataset in row order, decoded in `num_workers`
    workers (None: `default_num_workers()`), pinned when `device` is CUDA."""
    return DataLoader(with_anomaly_transform(dataset, processor), batch_size=batch_size, collate_fn=collate_fn,
                      **_loader_options(num_workers, device))


class ImageFiles(Dataset):
    """Image files, each decoded (within `max_side`) and preprocessed where the `DataLoader` runs it.

    An item is `{"index", "path", "image", "size", "pixel_values", "error"}` (`size` the decoded image's
    `(width, height)`); for a file that cannot be read, `image` and `pixel_values` are None and `error` says
    why. `keep_images=False` leaves `image` out (None) where only the scores and maps are needed, so that
    no decoded picture travels from the workers.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], processor: ZSADImageProcessor, max_side: Optional[int] = None,
                 keep_images: bool = True):
        self.paths = [Path(p) for p in paths]
        self.processor = processor
        self.max_side = max_side
        self.keep_images = keep_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image = load_rgb(path, max_side=self.max_side)
        except ImageLoadError as error:
            return {"index": index, "path": path, "image": None, "size": None, "pixel_values": None, "error": str(error)}
        return {"index": index, "path": path, "image": image if self.keep_images else None, "size": image.size,
                "pixel_values": self.processor.preprocess_image(image), "error": None}


def collate_image_files(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`{"items": items, "pixel_values": (n, 3, S, S) of the readable ones, or None}`."""
    pixels = [item["pixel_values"] for item in items if item["error"] is None]
    return {"items": items, "pixel_values": torch.stack(pixels) if pixels else None}


def image_file_loader(
    paths: Sequence[str | os.PathLike],
    processor: ZSADImageProcessor,
    batch_size: int,
    *,
    max_side: Optional[int] = None,
    keep_images: bool = True,
    num_workers: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> DataLoader:
    """`ImageFiles` batches in the order of `paths`."""
    return DataLoader(ImageFiles(paths, processor, max_side, keep_images), batch_size=batch_size, collate_fn=collate_image_files,
                      **_loader_options(num_workers, device))
