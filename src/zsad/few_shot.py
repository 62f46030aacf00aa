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

from .clip.processing import check_pixel_values
from .clip.vision import VisionFeatures
from .file_modes import save_safetensors
from .scoring import gaussian_blur, upsample_patch_scores

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


class NormalReferencesMixin:
    """The few-shot memory of `ZSADPreTrainedModel`: set, save, load and score against k normal images.

    The memory holds the features of the model's own `image_features` step (`reference_features`);
    `fuse_normal_references`, step 5 of the forward, adds the memory map (`memory_patch_map`,
    `upsample_memory`) and its image score (`memory_image_scores`).
    """

    @property
    def normal_references(self) -> NormalReferences | None:
        """The memory set by `set_normal_references` / `load_normal_references`, or None (zero-shot)."""
        return self._normal_references

    @torch.no_grad()
    def set_normal_references(
        self,
        pixel_values: torch.Tensor,
        categories: str | Sequence[str] | None = None,
        *,
        batch_size: int = 8,
        dtype: torch.dtype = torch.float32,
    ) -> NormalReferences:
        """Store the dense features of k normal images `(k, 3, H, W)` as the memory (WinCLIP+, §4.3).

        The features are those of the `image_features` step (`reference_features`), so every model gets
        its own: AdaCLIP's projected tokens, Crane+'s guided map, WinCLIP's windows. Later forwards add
        the memory map (`config.reference_fusion`). Images run `batch_size` at a time; `dtype=float16`
        halves the memory. Replaces any earlier references; not part of the checkpoint.
        """
        check_pixel_values(pixel_values, self.config.clip_config.vision_config.patch_size, "normal reference images")
        if pixel_values.shape[0] == 0:
            raise ValueError("set_normal_references needs at least one normal reference image")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        chunks = pixel_values.split(batch_size)
        banks: list[list[torch.Tensor]] = []
        for chunk, chunk_categories in zip(chunks, split_categories(categories, [len(c) for c in chunks])):
            features = self.image_features(chunk.to(self.device, self.dtype), chunk_categories)
            for index, group in enumerate(self.reference_features(features)):
                if index == len(banks):
                    banks.append([])
                banks[index].append(F.normalize(group.float(), dim=-1).flatten(0, 1).to(dtype))
        self._normal_references = NormalReferences(
            tuple(torch.cat(bank) for bank in banks),
            tuple(pixel_values.shape[-2:]),
            pixel_values.shape[0],
            self.config.model_type,
        )
        return self._normal_references

    def clear_normal_references(self) -> None:
        """Forget the normal references: forwards are zero-shot again."""
        self._normal_references = None

    def save_normal_references(self, path: str | os.PathLike) -> None:
        """Write the memory to one safetensors file (it is never part of `save_pretrained`)."""
        if self._normal_references is None:
            raise ValueError("this model has no normal references to save: call set_normal_references(...) first")
        self._normal_references.save(path)

    def load_normal_references(self, path: str | os.PathLike) -> NormalReferences:
        """Read a memory written by `save_normal_references` of a model of the same type (and configuration)."""
        references = NormalReferences.load(path)
        if references.model_type != self.config.model_type:
            raise ValueError(
                f"these normal references were computed by a {references.model_type!r} model; "
                f"this model is {self.config.model_type!r}"
            )
        self._normal_references = references.to(self.device)
        return self._normal_references

    def reference_features(self, features: VisionFeatures) -> list[torch.Tensor]:
        """The `(B, n, P)` feature groups stored by `set_normal_references`, one memory bank each;
        default: every dense map (feature layers, then guided-attention outputs)."""
        return [*features.patch_embeds, *features.guided_patch_embeds]

    def memory_patch_scores(self, scores: list[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
        """`(B, N)` patch scores from the association scores of every bank; default: their mean."""
        return torch.stack(scores).mean(dim=0)

    def memory_patch_map(self, features: VisionFeatures, size: tuple[int, int]) -> torch.Tensor:
        """`(B, N)` memory scores on the patch grid: per patch the visual association score with the normal
        references (`1/2 (1 - max cos)`, WinCLIP Eq. 4), combined over the banks by `memory_patch_scores`."""
        references = self._normal_references
        if references is None:
            raise ValueError("this model has no normal references: call set_normal_references(...) first")
        if tuple(size) != tuple(references.image_size):
            height, width = references.image_size
            raise ValueError(
                f"the normal references are {height}x{width} images but these are {size[0]}x{size[1]}: "
                "process both at the same size"
            )
        queries = self.reference_features(features)
        shapes = [bank.shape[-1] for bank in references.banks]
        if shapes != [q.shape[-1] for q in queries]:
            raise ValueError(
                f"the normal references hold features of widths {shapes}; this model makes "
                f"{[q.shape[-1] for q in queries]} (references of another model or configuration?)"
            )
        device = queries[0].device
        if references.banks[0].device != device:
            references = self._normal_references = references.to(device)
        scores = [association_scores(q, bank) for q, bank in zip(queries, references.banks)]
        return self.memory_patch_scores(scores, features.grid_size)

    def upsample_memory(self, patch_scores: torch.Tensor, grid_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """`(B, H, W)` memory map: the patch scores upsampled and blurred like the zero-shot map."""
        maps = upsample_patch_scores(patch_scores.unsqueeze(-1), grid_size, size)[:, 0]
        return gaussian_blur(maps, self.config.gaussian_sigma)

    def memory_image_scores(self, patch_scores: torch.Tensor, memory_map: torch.Tensor) -> torch.Tensor:
        """`(B,)` the memory's part of the few-shot image score: the maximum of the memory map (the base
        rule; WinCLIP's anomalib setting takes it on the patch grid)."""
        return memory_map.flatten(1).amax(dim=1)
