"""Validate `Sample`s and write them as parquet shards or an imagefolder, atomically.

The output is built in a temporary folder next to `out` (`.<name>.zsad-tmp-<id>`) and renamed onto
`out` only when everything succeeded, so a failed or interrupted run never leaves a half-written
dataset and never touches an earlier result. An existing empty `out` is simply filled; a non-empty one
is replaced only with `overwrite=True`, and only when it was written by zsad (its README.md carries a
`zsad:` entry), so a typo cannot delete an unrelated folder.

Images are stored byte-for-byte (JPEG stays JPEG); BMP and TIFF files are re-encoded losslessly to PNG.
Masks are decoded, checked against their image's size, binarised (non-zero = anomalous; > 127 for
lossy JPEG masks) and stored as L-mode 0/255 PNGs.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import ClassLabel, Features, Value
from PIL import Image

from ..clip.processing import ImageLoadError, load_image, mask_to_binary
from .errors import ConversionError, DataWarning, PathLike
from .layouts import ProblemLog, Sample
from .schema import ANOMALY, COLUMN_DESCRIPTIONS, FEATURES, LABEL_NAMES, SPLITS

FORMATS = ("parquet", "imagefolder")
ROWS_PER_ROW_GROUP = 100
DEFAULT_MAX_SHARD_BYTES = 500 * 1024 * 1024
_KEEP_BYTES_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}  # modes PNG stores without loss
_LOSSY_MASK_EXTENSIONS = {".jpg", ".jpeg"}

IMAGEFOLDER_METADATA_FEATURES = Features(
    {
        "file_name": Value("string"),
        "mask_file_name": Value("string"),
        "label": ClassLabel(names=list(LABEL_NAMES)),
        "category": Value("string"),
        "defect_type": Value("string"),
        "dataset": Value("string"),
        "image_id": Value("string"),
    }
)


@dataclass
class ConversionReport:
    """What a conversion wrote. `counts[(split, category, defect_type)]` = number of images."""

    out: Path
    format: str
    dataset: str
    counts: Counter = field(default_factory=Counter)
    empty_masks: list[str] = field(default_factory=list)
    without_mask: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(self.counts.values())

    def split_sizes(self) -> dict[str, int]:
        sizes: Counter = Counter()
        for (split, _, _), n in self.counts.items():
            sizes[split] += n
        return {split: sizes[split] for split in SPLITS if split in sizes}

    def __str__(self) -> str:
        splits = ", ".join(f"{split} {n}" for split, n in self.split_sizes().items())
        text = f"wrote {self.num_rows} rows ({splits}) of '{self.dataset}' to {self.out} as {self.format}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} invalid file(s)"
        return text


# --------------------------------------------------------------------------------------- sample decoding


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class _Encoded:
    image_bytes: bytes
    image_ext: str
    mask_bytes: Optional[bytes]
    mask_empty: bool


def _encode_sample(sample: Sample) -> _Encoded:
    """Decode and check one sample; raises ConversionError naming the file."""
    try:
        image = load_image(sample.image_path)
    except ImageLoadError as error:
        raise ConversionError(f"corrupt or unreadable image {sample.image_path}: {error}", sample.image_path)
    except Exception as error:  # PIL's DecompressionBombError and other decoder failures
        raise ConversionError(f"cannot read image {sample.image_path}: {type(error).__name__}: {error}", sample.image_path)
    ext = sample.image_path.suffix.lower()
    if ext in _KEEP_BYTES_EXTENSIONS or image.mode not in _PNG_MODES:
        image_bytes = sample.image_path.read_bytes()
    else:
        image_bytes, ext = _png_bytes(image), ".png"
    mask_bytes, empty = None, False
    if sample.mask_path is not None:
        try:
            mask = load_image(sample.mask_path)
        except ImageLoadError as error:
            raise ConversionError(f"corrupt or unreadable mask {sample.mask_path}: {error}", sample.mask_path)
        except Exception as error:
            raise ConversionError(f"cannot read mask {sample.mask_path}: {type(error).__name__}: {error}", sample.mask_path)
        if mask.size != image.size:
            raise ConversionError(
                f"mask {sample.mask_path} is {mask.size[0]}x{mask.size[1]} but its image {sample.image_path} is "
                f"{image.size[0]}x{image.size[1]} (width x height); masks must match their image pixel for pixel",
                sample.mask_path,
            )
        binary = mask_to_binary(mask, lossy=sample.mask_path.suffix.lower() in _LOSSY_MASK_EXTENSIONS)
        empty = not binary.any()
        mask_bytes = _png_bytes(Image.fromarray(binary.astype(np.uint8) * 255, mode="L"))
    return _Encoded(image_bytes, ext, mask_bytes, empty)


# ----------------------------------------------------------------------------------------------- writers


class _ParquetSplitWriter:
    """Writes one split as `data/<split>-XXXXX-of-YYYYY.parquet` shards with the schema's features."""

    def __init__(self, root: Path, split: str, max_shard_bytes: int) -> None:
        self.dir = root / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.max_shard_bytes = max_shard_bytes
        self.schema = FEATURES.arrow_schema
        self.shards: list[Path] = []
        self.writer: Optional[pq.ParquetWriter] = None
        self.rows: list[dict] = []
        self.shard_bytes = 0

    def add(self, row: dict, encoded: _Encoded, image_name: str, mask_name: Optional[str]) -> None:
        size = len(encoded.image_bytes) + len(encoded.mask_bytes or b"")
        if self.writer is not None and self.shard_bytes + size > self.max_shard_bytes:
            self._flush()
            self.writer.close()
            self.writer = None
        if self.writer is None:
            path = self.dir / f"{self.split}-{len(self.shards):05d}.parquet.partial"
            self.shards.append(path)
            self.writer = pq.ParquetWriter(path, self.schema)
            self.shard_bytes = 0
        self.shard_bytes += size
        row = dict(row)
        row["image"] = {"bytes": encoded.image_bytes, "path": image_name}
        row["mask"] = None if encoded.mask_bytes is None else {"bytes": encoded.mask_bytes, "path": mask_name}
        self.rows.append(row)
        if len(self.rows) >= ROWS_PER_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows and self.writer is not None:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        total = len(self.shards)
        for i, path in enumerate(self.shards):
            path.rename(self.dir / f"{self.split}-{i:05d}-of-{total:05d}.parquet")

    def data_files(self) -> str:
        return f"data/{self.split}-*"


class _ImageFolderSplitWriter:
    """Writes one split as `<split>/images/...`, `<split>/masks/...` and `<split>/metadata.parquet`."""

    def __init__(self, root: Path, split: str) -> None:
        self.dir = root / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.rows: list[dict] = []

    def add(self, row: dict, encoded: _Encoded, image_name: str, mask_name: Optional[str]) -> None:
        image_file = Path("images") / image_name
        (self.dir / image_file).parent.mkdir(parents=True, exist_ok=True)
        (self.dir / image_file).write_bytes(encoded.image_bytes)
        mask_file = None
        if encoded.mask_bytes is not None and mask_name is not None:
            mask_file = Path("masks") / mask_name
            (self.dir / mask_file).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / mask_file).write_bytes(encoded.mask_bytes)
        metadata = {"file_name": image_file.as_posix(), "mask_file_name": mask_file and mask_file.as_posix()}
        metadata.update(row)
        self.rows.append(metadata)

    def close(self) -> None:
        schema = IMAGEFOLDER_METADATA_FEATURES.arrow_schema
        pq.write_table(pa.Table.from_pylist(self.rows, schema=schema), self.dir / "metadata.parquet")

    def data_files(self) -> str:
        return f"{self.split}/**"


# --------------------------------------------------------------------------------------------- the card


def _dataset_card(report: ConversionReport, layout: str, splits: dict[str, str], source_name: str) -> str:
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": pattern} for split, pattern in splits.items()],
            }
        ],
        "tags": ["anomaly-detection", "zsad"],
        "zsad": {"converter": layout, "format": report.format, "source": source_name, "schema_version": 1},
    }
    if report.format == "parquet":
        header["dataset_info"] = {"features": FEATURES._to_yaml_list()}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# {report.dataset} (anomaly-detection schema)",
        "",
        f"Converted by `zsad convert {layout}` from `{source_name}` ({report.num_rows} images). Load it with "
        "`datasets.load_dataset(<this folder>)` or `zsad.data.load_anomaly_dataset(<this folder>)`.",
        "",
        "**Licence:** this folder holds copies of the source images. Check the source dataset's licence before "
        "sharing it; MVTec AD (CC BY-NC-SA 4.0) and VisA must not be re-hosted on the Hub.",
        "",
        "| split | category | defect_type | images |",
        "|---|---|---|---|",
    ]
    for (split, category, defect), n in sorted(report.counts.items(), key=lambda item: (SPLITS.index(item[0][0]), item[0][1], item[0][2] != "good", item[0][2])):
        lines.append(f"| {split} | {category} | {defect} | {n} |")
    lines += ["", "| column | meaning |", "|---|---|"]
    lines += [f"| `{column}` | {text} |" for column, text in COLUMN_DESCRIPTIONS.items()]
    if report.empty_masks:
        lines += ["", f"{len(report.empty_masks)} anomalous image(s) have an empty (all-zero) mask: "
                  + ", ".join(f"`{name}`" for name in report.empty_masks)]
    if report.without_mask:
        lines += ["", f"{len(report.without_mask)} anomalous image(s) have no mask (image-level labels only)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- atomic output


def is_zsad_output(folder: Path) -> bool:
    """True when `folder` was written by a zsad converter (its README.md front matter has `zsad:`)."""
    card = folder / "README.md"
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return False
    try:
        header = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return False
    return isinstance(header, dict) and isinstance(header.get("zsad"), dict)


def _check_output(out: Path, overwrite: bool, sources: Sequence[Path]) -> None:
    resolved = out.resolve()
    for src in sources:
        src = src.resolve()
        if resolved == src or src in resolved.parents:
            raise ConversionError(f"output folder {out} must not be inside the source folder {src}", out)
        if resolved in src.parents:
            raise ConversionError(f"output folder {out} must not contain the source folder {src}", out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConversionError(f"output path {out} exists and is not a folder", out)
    if not any(out.iterdir()):
        return  # an empty folder holds nothing to lose
    if not overwrite:
        raise ConversionError(
            f"output folder {out} already exists; pass --overwrite (overwrite=True) to replace it", out
        )
    if not is_zsad_output(out):
        raise ConversionError(
            f"refusing to overwrite {out}: it is not empty and was not written by zsad convert "
            "(no README.md with a 'zsad:' entry); remove it yourself or choose another output folder",
            out,
        )


def write_samples(
    samples: Sequence[Sample],
    out: PathLike,
    *,
    dataset_name: str,
    layout: str,
    sources: Sequence[Path],
    format: str = "parquet",
    overwrite: bool = False,
    log: Optional[ProblemLog] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> ConversionReport:
    """Check every sample, then write them to `out` in one atomic step. Returns a `ConversionReport`."""
    if format not in FORMATS:
        raise ConversionError(f"unknown output format {format!r}; choose one of {list(FORMATS)}", out)
    log = log or ProblemLog()
    out = Path(out)
    _check_output(out, overwrite, sources)
    if not samples:
        raise ConversionError(f"nothing to convert: no images found in {', '.join(map(str, sources))}", sources[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.zsad-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    report = ConversionReport(out=out, format=format, dataset=dataset_name)
    report.skipped.extend(log.skipped)
    report.notes.extend(log.notes)
    try:
        ordered = sorted(samples, key=lambda s: (SPLITS.index(s.split), s.category, s.label, s.defect_type, s.image_id))
        writers: dict[str, object] = {}
        iterator = ordered
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(ordered, desc=f"converting {dataset_name}", unit="img")
        for sample in iterator:
            try:
                encoded = _encode_sample(sample)
            except ConversionError as error:
                log.problem(str(error), error.path or sample.image_path)
                report.skipped.append(str(error))
                continue
            image_id = Path(sample.image_id)
            stem = image_id.with_suffix("").as_posix()
            image_name = sample.image_id if encoded.image_ext == image_id.suffix.lower() else stem + encoded.image_ext
            mask_name = stem + "_mask.png" if encoded.mask_bytes is not None else None
            if sample.label == ANOMALY:
                if encoded.mask_bytes is None:
                    report.without_mask.append(sample.image_id)
                elif encoded.mask_empty:
                    report.empty_masks.append(sample.image_id)
            if sample.split not in writers:
                writers[sample.split] = (
                    _ParquetSplitWriter(tmp, sample.split, max_shard_bytes)
                    if format == "parquet"
                    else _ImageFolderSplitWriter(tmp, sample.split)
                )
            row = {
                "label": int(sample.label),
                "category": sample.category,
                "defect_type": sample.defect_type,
                "dataset": dataset_name,
                "image_id": sample.image_id,
            }
            writers[sample.split].add(row, encoded, image_name, mask_name)
            report.counts[(sample.split, sample.category, sample.defect_type)] += 1
        if not writers:
            raise ConversionError(
                f"nothing to convert: every image in {', '.join(map(str, sources))} was invalid", sources[0]
            )
        for writer in writers.values():
            writer.close()
        if report.empty_masks:
            shown = ", ".join(report.empty_masks[:10]) + (" ..." if len(report.empty_masks) > 10 else "")
            message = (
                f"{len(report.empty_masks)} anomalous images have an empty mask (kept as all-zero pixel ground "
                f"truth; check the source): {shown}"
            )
            report.notes.append(message)
            warnings.warn(message, DataWarning, stacklevel=3)
        splits = {split: writers[split].data_files() for split in SPLITS if split in writers}
        source_name = ", ".join(src.name for src in sources)
        (tmp / "README.md").write_text(_dataset_card(report, layout, splits, source_name), encoding="utf-8")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.warn_notes()
    return report


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` onto `out`; an existing `out` is moved aside first and deleted last."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.zsad-old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)

