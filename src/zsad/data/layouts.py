"""Scanners that turn the standard on-disk layouts into a list of `Sample`s (no image is decoded here).

- MVTec AD (`<cat>/train/good`, `<cat>/test/<defect>`, `<cat>/ground_truth/<defect>/<name>_mask.png`),
  which also covers MPDD and BTAD (`ok`/`ko` folders, masks named like their image);
- VisA (`split_csv/1cls.csv` listing `object,split,label,image,mask`, optional `<cat>/image_anno.csv`);
- a generic folder layout: `normal/` and `anomaly/` (optionally `anomaly/<defect>/`), masks optional.

Per-file problems (orphan masks, empty folders, missing files) go through a `ProblemLog`: they raise a
`ConversionError` naming the path, or, with `skip_invalid=True`, are turned into warnings and the file
is left out. A source that matches no layout always raises.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import ConversionError, DataWarning, PathLike

from .schema import ANOMALY, LABEL_ALIASES, NORMAL, NORMAL_DEFECT_TYPE

# The raster formats PIL decodes by itself: what the folder searches of `zsad detect`, the converters and
# the few-shot reference folders pick up (not PIL's stub formats such as .h5 or .grib, which it cannot load).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".ico"})
NORMAL_FOLDER_NAMES: tuple[str, ...] = ("good", "ok", "normal")
MASK_SUFFIXES: tuple[str, ...] = ("_mask", "-mask")
FOLDER_NORMAL_CANDIDATES: tuple[str, ...] = ("normal", "good", "ok")
FOLDER_ANOMALY_CANDIDATES: tuple[str, ...] = ("anomaly", "anomalous", "abnormal", "defect", "bad", "ng", "ko")
FOLDER_MASK_CANDIDATES: tuple[str, ...] = ("masks", "mask", "ground_truth")


@dataclass(frozen=True)
class Sample:
    """One image to convert. `image_id` is the image path relative to the source root (POSIX)."""

    split: str
    category: str
    defect_type: str
    label: int
    image_path: Path
    mask_path: Optional[Path]
    image_id: str


@dataclass
class ProblemLog:
    """Collects per-file problems: raise at once (strict) or keep them as warnings (`skip_invalid`); notes
    about usable but suspicious data are warned about once the conversion has succeeded (`warn_notes`),
    so a later fatal error is never preceded by a warning about something else."""

    skip_invalid: bool = False
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, message: str, path: PathLike) -> None:
        if not self.skip_invalid:
            raise ConversionError(message, path)
        self.skipped.append(message)
        warnings.warn(f"skipped: {message}", DataWarning, stacklevel=3)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def warn_notes(self) -> None:
        for message in self.notes:
            warnings.warn(message, DataWarning, stacklevel=3)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.startswith("__")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files and other extensions ignored)."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _has_any_image(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if any(Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".") for name in files):
            return True
    return False


def _relative_id(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _mask_key(mask: Path) -> str:
    stem = mask.stem
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


class _MaskIndex:
    """Masks of one folder, keyed by the stem of the image they belong to (`000_mask.png` -> `000`)."""

    def __init__(self, folder: Optional[Path], log: ProblemLog) -> None:
        self.folder = folder
        self.by_key: dict[str, Path] = {}
        self.used: set[str] = set()
        if folder is None or not folder.is_dir():
            return
        for mask in list_images(folder):
            key = _mask_key(mask)
            if key in self.by_key:
                log.problem(
                    f"two masks for the same image in {folder}: {self.by_key[key].name} and {mask.name}", mask
                )
                continue
            self.by_key[key] = mask

    def take(self, image: Path) -> Optional[Path]:
        mask = self.by_key.get(image.stem)
        if mask is not None:
            self.used.add(image.stem)
        return mask

    def orphans(self) -> list[Path]:
        return [mask for key, mask in sorted(self.by_key.items()) if key not in self.used]


def _check_unique_stems(images: Sequence[Path], log: ProblemLog) -> list[Path]:
    seen: dict[str, Path] = {}
    kept = []
    for image in images:
        if image.stem in seen:
            log.problem(
                f"two images with the same name in {image.parent}: {seen[image.stem].name} and {image.name} "
                "(masks are matched by name, so this is ambiguous)",
                image,
            )
            continue
        seen[image.stem] = image
        kept.append(image)
    return kept


def _select_categories(available: Sequence[str], wanted: Optional[Iterable[str]], src: Path) -> list[str]:
    if wanted is None:
        return list(available)
    wanted = list(wanted)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ConversionError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown} in {src}; available: {list(available)}",
            src,
        )
    return [name for name in available if name in wanted]


def _require_dir(src: PathLike) -> Path:
    path = Path(src)
    if not path.exists():
        raise ConversionError(f"source folder not found: {path}", path)
    if not path.is_dir():
        raise ConversionError(f"source is not a folder: {path}", path)
    return path


# ----------------------------------------------------------------------------------------------- MVTec AD


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "test").is_dir() or (folder / "train").is_dir()


def scan_mvtec(
    src: PathLike,
    categories: Optional[Iterable[str]] = None,
    normal_names: Sequence[str] = NORMAL_FOLDER_NAMES,
    log: Optional[ProblemLog] = None,
) -> list[Sample]:
    """Scan an MVTec AD-style root (many categories) or a single category folder."""
    log = log or ProblemLog()
    src = _require_dir(src)
    normal_names = {name.lower() for name in normal_names}
    if _is_mvtec_category(src):
        root, category_dirs = src.parent, [src]
    else:
        root = src
        category_dirs = []
        candidates = _subdirs(src)
        for folder in candidates:
            if _is_mvtec_category(folder):
                category_dirs.append(folder)
        if not category_dirs:
            found = ", ".join(p.name + "/" for p in candidates) or "no sub-folders"
            raise ConversionError(
                f"unknown layout: {src} does not look like an MVTec AD dataset: expected "
                f"<category>/train/good and <category>/test/<defect> folders (found {found})",
                src,
            )
        for folder in candidates:
            if folder in category_dirs:
                continue
            if not _has_any_image(folder):
                log.problem(f"empty category folder {folder}: no train/ or test/ images inside", folder)
            else:
                log.problem(
                    f"{folder} is not an MVTec AD category folder: expected {folder.name}/train/<good> and "
                    f"{folder.name}/test/<defect> inside",
                    folder,
                )
    names = _select_categories([d.name for d in category_dirs], categories, src)
    samples: list[Sample] = []
    for folder in category_dirs:
        if folder.name in names:
            samples.extend(_scan_mvtec_category(folder, root, normal_names, log))
    return samples


def _scan_mvtec_category(folder: Path, root: Path, normal_names: set[str], log: ProblemLog) -> list[Sample]:
    category = folder.name
    ground_truth = folder / "ground_truth"
    mask_indexes: dict[str, _MaskIndex] = {}
    samples: list[Sample] = []
    missing: dict[str, list[str]] = {}
    for split in ("train", "test"):
        split_dir = folder / split
        if not split_dir.is_dir():
            continue
        loose = list_images(split_dir)
        if loose:
            log.problem(
                f"images directly in {split_dir} (e.g. {loose[0].name}); expected {split_dir}/<good|defect>/<image>",
                loose[0],
            )
        defect_dirs = _subdirs(split_dir)
        if not defect_dirs:
            log.problem(f"empty folder {split_dir}: no <good|defect> sub-folders", split_dir)
        for defect_dir in defect_dirs:
            images = list_images(defect_dir)
            if not images:
                log.problem(f"empty folder {defect_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})", defect_dir)
                continue
            is_normal = defect_dir.name.lower() in normal_names
            label = NORMAL if is_normal else ANOMALY
            defect_type = NORMAL_DEFECT_TYPE if is_normal else defect_dir.name
            if not is_normal:
                images = _check_unique_stems(images, log)
            index = None
            if not is_normal:
                if defect_dir.name not in mask_indexes:
                    gt_dir = ground_truth / defect_dir.name
                    mask_indexes[defect_dir.name] = _MaskIndex(gt_dir if gt_dir.is_dir() else None, log)
                index = mask_indexes[defect_dir.name]
            for image in images:
                mask = index.take(image) if index is not None else None
                if not is_normal and mask is None:
                    missing.setdefault(_relative_id(defect_dir, root), []).append(image.name)
                samples.append(
                    Sample(split, category, defect_type, label, image, mask, _relative_id(image, root))
                )
    if not samples and not log.skipped:
        log.problem(f"empty category folder {folder}: no images under train/ or test/", folder)
    # Masks whose image does not exist.
    if ground_truth.is_dir():
        for gt_dir in _subdirs(ground_truth):
            if gt_dir.name.lower() in normal_names:
                continue  # masks of normal images carry no information
            index = mask_indexes.get(gt_dir.name) or _MaskIndex(gt_dir, log)
            for orphan in index.orphans():
                log.problem(
                    f"mask without an image: {orphan} (no image named {_mask_key(orphan)}.* in "
                    f"{folder}/test/{gt_dir.name} or {folder}/train/{gt_dir.name})",
                    orphan,
                )
    for defect_dir, names in missing.items():
        log.note(
            f"{len(names)} anomalous image(s) in {defect_dir} have no mask under {category}/ground_truth: "
            f"kept with image-level labels only (pixel metrics skip them): {', '.join(names[:5])}"
            + (" ..." if len(names) > 5 else "")
        )
    return samples


# ----------------------------------------------------------------------------------------------------- VisA

VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def _read_defect_types(category_dir: Path, root: Path) -> dict[str, str]:
    """`<cat>/image_anno.csv` (image,label,mask) -> {image id: defect name}; empty when absent."""
    anno = category_dir / "image_anno.csv"
    if not anno.is_file():
        return {}
    types: dict[str, str] = {}
    with open(anno, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            image, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
            if image and label:
                types[Path(image).as_posix()] = label
    return types


def scan_visa(
    src: PathLike, categories: Optional[Iterable[str]] = None, log: Optional[ProblemLog] = None
) -> list[Sample]:
    """Scan a VisA root: `split_csv/1cls.csv` plus the category folders it points to."""
    log = log or ProblemLog()
    src = _require_dir(src)
    csv_path = src / VISA_CSV
    if not csv_path.is_file():
        raise ConversionError(
            f"unknown layout: {src} does not look like a VisA dataset: {csv_path} not found "
            "(expected split_csv/1cls.csv with columns object,split,label,image,mask)",
            src,
        )
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing_columns = [c for c in VISA_COLUMNS if c not in columns]
        if missing_columns:
            raise ConversionError(f"{csv_path} lacks column(s) {missing_columns} (has {columns})", csv_path)
        rows = [(line, {k.strip(): (v or "").strip() for k, v in row.items() if k}) for line, row in enumerate(reader, 2)]
    if not rows:
        raise ConversionError(f"{csv_path} lists no images", csv_path)
    available = sorted({row["object"] for _, row in rows})
    names = set(_select_categories(available, categories, src))
    defect_types = {name: _read_defect_types(src / name, src) for name in names}
    samples: list[Sample] = []
    referenced_masks: set[Path] = set()
    no_mask: list[str] = []
    for line, row in rows:
        category = row["object"]
        if category not in names:
            continue
        where = f"{csv_path}:{line}"
        split = row["split"].lower()
        if split not in ("train", "test"):
            log.problem(f"{where}: split {row['split']!r} is not 'train' or 'test'", csv_path)
            continue
        label_name = row["label"].lower()
        if label_name not in LABEL_ALIASES:
            log.problem(f"{where}: label {row['label']!r} is not 'normal' or 'anomaly'", csv_path)
            continue
        label = LABEL_ALIASES[label_name]
        if not row["image"]:
            log.problem(f"{where}: empty image path", csv_path)
            continue
        image = src / row["image"]
        image_id = _relative_id(image, src)
        if image_id.startswith("../"):
            log.problem(f"{where}: image path {row['image']!r} points outside {src}", csv_path)
            continue
        if not image.is_file():
            log.problem(f"{where}: image file not found: {image}", image)
            continue
        mask = src / row["mask"] if row["mask"] else None
        if mask is not None:
            referenced_masks.add(mask.resolve())
            if not mask.is_file():
                log.problem(f"{where}: mask file not found: {mask} (for image {image})", mask)
                continue
            if label == NORMAL:
                mask = None  # VisA has no masks for normal images; a listed one holds no information
        elif label == ANOMALY:
            no_mask.append(image_id)
        if label == NORMAL:
            defect_type = NORMAL_DEFECT_TYPE
        else:
            defect_type = defect_types.get(category, {}).get(image_id) or "anomaly"
        samples.append(Sample(split, category, defect_type, label, image, mask, image_id))
    for name in sorted(names):
        mask_root = src / name / "Data" / "Masks"
        if mask_root.is_dir():
            for directory, _, files in os.walk(mask_root):
                for file_name in sorted(files):
                    path = Path(directory) / file_name
                    if path.suffix.lower() in IMAGE_EXTENSIONS and path.resolve() not in referenced_masks:
                        log.problem(f"mask without an image: {path} is not listed in {csv_path}", path)
    for folder in _subdirs(src):
        if folder.name == "split_csv" or folder.name in available:
            continue
        if not _has_any_image(folder):
            log.problem(f"empty category folder {folder}: no images inside and no rows in {csv_path}", folder)
        else:
            log.note(f"{folder} is ignored: no rows of {csv_path} refer to it")
    if no_mask:
        log.note(
            f"{len(no_mask)} anomalous image(s) have no mask in {csv_path}: kept with image-level labels only "
            f"(pixel metrics skip them): {', '.join(no_mask[:5])}" + (" ..." if len(no_mask) > 5 else "")
        )
    return samples


# ------------------------------------------------------------------------------------------ generic folders


def _pick(src: Path, given: Optional[str], candidates: Sequence[str], what: str) -> Optional[Path]:
    if given is not None:
        path = src / given
        if not path.is_dir():
            raise ConversionError(f"{what} folder not found: {path}", path)
        return path
    for name in candidates:
        for folder in _subdirs(src):
            if folder.name.lower() == name:
                return folder
    return None


def scan_folder(
    src: PathLike,
    *,
    category: Optional[str] = None,
    normal_dir: Optional[str] = None,
    anomaly_dir: Optional[str] = None,
    mask_dir: Optional[str] = None,
    split: str = "test",
    log: Optional[ProblemLog] = None,
) -> list[Sample]:
    """Scan a user folder: `normal/` images, `anomaly/` images (or `anomaly/<defect>/`), optional masks.

    Folder names are found case-insensitively among common spellings (normal/good/ok,
    anomaly/anomalous/abnormal/defect/bad/ng/ko, masks/mask/ground_truth) unless given. Masks mirror the
    anomaly folder: `masks/<defect>/<name>[_mask].<ext>` (or `masks/<name>[_mask].<ext>`). When `src`
    holds neither, each sub-folder that does is taken as one category.
    """
    log = log or ProblemLog()
    src = _require_dir(src)
    if split not in ("train", "test"):
        raise ConversionError(f"split must be 'train' or 'test', got {split!r}", src)
    normal = _pick(src, normal_dir, FOLDER_NORMAL_CANDIDATES, "normal")
    anomaly = _pick(src, anomaly_dir, FOLDER_ANOMALY_CANDIDATES, "anomaly")
    if normal is None and anomaly is None:
        sub_categories = [
            folder
            for folder in _subdirs(src)
            if _pick(folder, None, FOLDER_NORMAL_CANDIDATES, "normal") is not None
            or _pick(folder, None, FOLDER_ANOMALY_CANDIDATES, "anomaly") is not None
        ]
        if sub_categories and category is None and normal_dir is None and anomaly_dir is None:
            samples = []
            for folder in sub_categories:
                samples.extend(
                    _scan_folder_category(folder, src, folder.name, None, None, mask_dir, split, log)
                )
            return samples
        raise ConversionError(
            f"unknown layout: {src} has no folder of normal images ({'/'.join(FOLDER_NORMAL_CANDIDATES)}) "
            f"nor of anomalous images ({'/'.join(FOLDER_ANOMALY_CANDIDATES)}); name them with "
            "--normal-dir/--anomaly-dir",
            src,
        )
    return _scan_folder_category(src, src.parent, category or src.name, normal, anomaly, mask_dir, split, log)


def _scan_folder_category(
    folder: Path,
    root: Path,
    category: str,
    normal: Optional[Path],
    anomaly: Optional[Path],
    mask_dir: Optional[str],
    split: str,
    log: ProblemLog,
) -> list[Sample]:
    normal = normal if normal is not None else _pick(folder, None, FOLDER_NORMAL_CANDIDATES, "normal")
    anomaly = anomaly if anomaly is not None else _pick(folder, None, FOLDER_ANOMALY_CANDIDATES, "anomaly")
    masks = _pick(folder, mask_dir, FOLDER_MASK_CANDIDATES, "mask")
    samples: list[Sample] = []
    if normal is not None:
        images = list_images(normal)
        if not images:
            log.problem(f"empty folder {normal}: no normal images", normal)
        for image in images:
            samples.append(
                Sample(split, category, NORMAL_DEFECT_TYPE, NORMAL, image, None, _relative_id(image, root))
            )
    without_mask: list[str] = []
    indexes: list[_MaskIndex] = []
    if anomaly is not None:
        groups: list[tuple[str, Path, Optional[Path]]] = []
        if list_images(anomaly):
            groups.append(("anomaly", anomaly, masks))
        for sub in _subdirs(anomaly):
            groups.append((sub.name, sub, (masks / sub.name) if masks is not None else None))
        if not groups:
            log.problem(f"empty folder {anomaly}: no anomalous images", anomaly)
        for defect_type, directory, mask_folder in groups:
            images = _check_unique_stems(list_images(directory), log)
            if not images:
                log.problem(f"empty folder {directory}: no anomalous images", directory)
                continue
            index = _MaskIndex(mask_folder, log)
            indexes.append(index)
            for image in images:
                mask = index.take(image)
                if mask is None:
                    without_mask.append(_relative_id(image, root))
                samples.append(Sample(split, category, defect_type, ANOMALY, image, mask, _relative_id(image, root)))
    for index in indexes:
        for orphan in index.orphans():
            log.problem(f"mask without an image: {orphan} (no image named {_mask_key(orphan)}.* in {anomaly})", orphan)
    if masks is not None:
        covered = {index.folder for index in indexes}
        for directory in [masks, *_subdirs(masks)]:
            if directory not in covered:
                for orphan in list_images(directory):
                    log.problem(f"mask without an image: {orphan} (no matching anomalous image folder)", orphan)
    if without_mask:
        if masks is None:
            log.note(
                f"{folder}: no mask folder ({'/'.join(FOLDER_MASK_CANDIDATES)}); the {len(without_mask)} "
                "anomalous image(s) have image-level labels only (pixel metrics will be skipped)"
            )
        else:
            log.note(
                f"{len(without_mask)} anomalous image(s) in {anomaly} have no mask in {masks}: kept with "
                f"image-level labels only (pixel metrics skip them): {', '.join(without_mask[:5])}"
                + (" ..." if len(without_mask) > 5 else "")
            )
    if not samples:
        log.problem(f"empty category folder {folder}: no images", folder)
    return samples
