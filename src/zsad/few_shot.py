"""Normal references: a memory of k normal images' dense features that turns any zsad model few-shot.

WinCLIP+ (Jeong et al., CVPR 2023, §4.3) keeps the patch and window features of k normal reference
images; a test feature f scores its *visual association* with the memory R (Eq. 4)

    s(f) = 1/2 (1 - max_{r in R} cos(f, r))    in [0, 1],

and the few-shot map is fused with the zero-shot one. zsad applies this to every model through the
base class (`ZSADPreTrainedModel.set_normal_references`): the memory holds the model's own dense
features (the same `image_features` step as a forward), so it is kept out of checkpoints and saved on
its own (`save_normal_references`, safetensors). See docs/few_shot.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from .file_modes import save_safetensors

REFERENCE_FUSIONS = ("mean", "memory_only", "zero_shot_only")
REFERENCES_FORMAT = "zsad-normal-references"
# Largest similarity block (queries x memory rows) formed at once by the nearest-neighbour search.
MAX_SIMILARITY_ELEMENTS = 2**24


@dataclass
class NormalReferences:
    """The memory: per feature group (feature layer, WinCLIP window scale...), `(M, P)` L2-normalised
    features of all reference images, the reference image size and how many images went in."""

    banks: tuple[torch.Tensor, ...]
    image_size: tuple[int, int]
    num_images: int
    model_type: str

    @property
    def nbytes(self) -> int:
        return sum(bank.numel() * bank.element_size() for bank in self.banks)

    def to(self, device: torch.device | str) -> NormalReferences:
        banks = tuple(bank.to(device) for bank in self.banks)
        return NormalReferences(banks, self.image_size, self.num_images, self.model_type)

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file: `bank.<i>` tensors; size, count and model type as metadata."""
        tensors = {f"bank.{i}": bank.detach().contiguous().cpu() for i, bank in enumerate(self.banks)}
        metadata = {
            "format": REFERENCES_FORMAT,
            "image_size": f"{self.image_size[0]}x{self.image_size[1]}",
            "num_images": str(self.num_images),
            "model_type": self.model_type,
        }
        save_safetensors(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormalReferences:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != REFERENCES_FORMAT:
                raise ValueError(f"{os.fspath(path)!r} is not a zsad normal-reference file (save_normal_references)")
            count = sum(1 for key in handle.keys() if key.startswith("bank."))
            banks = tuple(handle.get_tensor(f"bank.{i}") for i in range(count))
        height, width = (int(v) for v in metadata["image_size"].split("x"))
        return cls(banks, (height, width), int(metadata["num_images"]), metadata["model_type"])


def association_scores(
    queries: torch.Tensor, memory: torch.Tensor, max_elements: int = MAX_SIMILARITY_ELEMENTS
) -> torch.Tensor:
    """`(B, n, P)` features against an `(M, P)` L2-normalised memory -> `(B, n)` scores
    `1/2 (1 - max_r cos(f, r))` (WinCLIP Eq. 4).

    Exact nearest-neighbour search on the memory's device, in float32 (a float16 memory is widened one
    chunk at a time), over memory chunks of at most `max_elements / (B n)` rows, so the similarity
    block stays bounded whatever k is.
    """
    with torch.autocast(queries.device.type, enabled=False):
        queries = F.normalize(queries.float(), dim=-1)
        rows = max(1, max_elements // max(1, queries.shape[0] * queries.shape[1]))
        best = queries.new_full(queries.shape[:2], -1.0)
        for chunk in memory.split(rows):
            best = torch.maximum(best, (queries @ chunk.float().t()).amax(dim=-1))
        return (1.0 - best) / 2


def reference_images(folder: str | os.PathLike, image_size: int) -> torch.Tensor:
    """`(k, 3, S, S)` pixel values of the images directly inside `folder` (sorted by name), processed
    like the images they are compared with (`ZSADImageProcessor(image_size)`)."""
    from .clip.processing import ZSADImageProcessor
    from .data.layouts import IMAGE_EXTENSIONS, list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"normal-reference folder {os.fspath(folder)!r} does not exist")
    paths = list_images(folder)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) directly inside {os.fspath(folder)!r}")
    processor = ZSADImageProcessor(image_size=image_size)
    return torch.stack([processor.preprocess_image(path) for path in paths])


def fuse(zero_shot: torch.Tensor, memory: torch.Tensor, fusion: str) -> torch.Tensor:
    """Zero-shot and memory maps (or scores) fused by `fusion` (WinCLIP+: the mean, §4.3)."""
    if fusion == "mean":
        return (zero_shot + memory.to(zero_shot.dtype)) / 2
    if fusion == "memory_only":
        return memory.to(zero_shot.dtype)
    if fusion == "zero_shot_only":
        return zero_shot
    raise ValueError(f"reference_fusion must be one of {REFERENCE_FUSIONS}; got {fusion!r}")


def split_categories(categories: str | Sequence[str] | None, sizes: Sequence[int]) -> list:
    """Per-chunk `categories` for a batch processed in chunks of `sizes` (a str or None stays shared)."""
    if categories is None or isinstance(categories, str):
        return [categories] * len(sizes)
    categories = list(categories)
    if len(categories) != sum(sizes):
        raise ValueError(f"categories must name one class per reference image ({sum(sizes)}); got {len(categories)}")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [categories[start : start + size] for start, size in zip(starts, sizes)]
