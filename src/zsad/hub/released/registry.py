"""The registry of released detectors: the authors' trained checkpoints by short name (`crane-plus-visa`).

The entries are data (`registry.json` beside this module): the method and the authors' variant (training
set and epoch, which fix the settings their test script uses, `variants.ReleasedVariant`), the source
pinned to an immutable revision, the file size and checksum, and the licence; the paper numbers come
from `reported_results` through the variant. `download.released_checkpoint` fetches, verifies and imports
an entry once; `zoo.from_zoo` returns it as a model. Importing this module imports neither torch nor
transformers (`zsad models` and `--model NAME` read it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ...clip import DEFAULT_BACKBONE
from .variants import TRAINED_ON_NAMES, ReleasedVariant

REGISTRY_PATH = Path(__file__).with_name("registry.json")
# Where pinned GitHub files are served; `ZSAD_GITHUB_RAW_URL` points elsewhere (a mirror, or a test server).
GITHUB_RAW_URL = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class RegistryEntry:
    """One released detector: where its file lives, how to check it, and the variant it is."""

    name: str
    method: str
    trained_on: str
    epoch: int | None
    summary: str
    checksum: dict[str, str]
    license: str
    size: int | None = None
    github: dict[str, str] | None = None
    hub: dict[str, str] | None = None

    @property
    def variant(self) -> ReleasedVariant:
        return ReleasedVariant(self.method, self.trained_on, self.epoch)

    @property
    def file_name(self) -> str:
        return Path(self.github["path"] if self.github else self.hub["filename"]).name

    @property
    def url(self) -> str:
        """The download URL (GitHub files through `ZSAD_GITHUB_RAW_URL` when set)."""
        if self.github:
            base = os.environ.get("ZSAD_GITHUB_RAW_URL", GITHUB_RAW_URL).rstrip("/")
            return f"{base}/{self.github['repository']}/{self.github['revision']}/{self.github['path']}"
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.hub['repo_id']}/resolve/{self.hub['revision']}/{self.hub['filename']}"

    @property
    def checksum_text(self) -> str:
        (kind, value), = self.checksum.items()
        return f"{kind}:{value}"

    @property
    def trained_on_name(self) -> str:
        return TRAINED_ON_NAMES[self.trained_on]

    @property
    def backbone(self) -> str:
        return DEFAULT_BACKBONE

    def paper_means(self) -> dict[str, float]:
        """Mean image and pixel AUROC (%) over the datasets the authors report for this very file."""
        rows = self.variant.reported_rows()
        image = [row.image[0] for row in rows if row.image]
        pixel = [row.pixel[0] for row in rows if row.pixel]
        means = {}
        if image:
            means["image_auroc"] = round(sum(image) / len(image), 1)
        if pixel:
            means["pixel_auroc"] = round(sum(pixel) / len(pixel), 1)
        return means


@dataclass(frozen=True)
class TrainingFreeEntry:
    """A training-free model by name: built on any CLIP backbone, no file to fetch."""

    name: str
    model_type: str
    summary: str


@lru_cache(maxsize=None)
def _load() -> tuple[str, dict[str, RegistryEntry], dict[str, TrainingFreeEntry]]:
    data = json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))
    entries = {item["name"]: RegistryEntry(**item) for item in data["models"]}
    training_free = {item["name"]: TrainingFreeEntry(**item) for item in data["training_free"]}
    return data["default"], entries, training_free


def registry() -> dict[str, RegistryEntry]:
    """`{name: RegistryEntry}` of the released detectors, in the registry's order."""
    return _load()[1]


def training_free_models() -> dict[str, TrainingFreeEntry]:
    """`{name: TrainingFreeEntry}`: ZeroShotCLIP and WinCLIP by name."""
    return _load()[2]


def default_model_name() -> str:
    """The released model the commands run without `--model` (docs/released_weights.md says why)."""
    return _load()[0]


def get_entry(name: str) -> RegistryEntry | None:
    return registry().get(name)
