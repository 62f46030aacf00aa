"""Fetch a registry entry's file that a user can trust, and import it once into a zsad checkpoint.

Layout under the Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME/hub` by default):

    zsad-released/<name>/<checksum>/<file>                   the verified file
    zsad-released/<name>/<checksum>/<file>.incomplete        a partial download (resumed next time)
    zsad-released/<name>/<checksum>/imported-<backbones>/    the zsad checkpoint made from it
    zsad-released/<name>/.lock                               held while a process downloads or imports

A download streams into the `.incomplete` file (huggingface_hub's `http_get`: progress bar, retries that
resume where the connection dropped; `hf_hub_download` for a file on the Hub), its checksum is verified, and only then is it renamed into place:
a file under its final name is always complete and verified. A checksum mismatch deletes the partial file.
The lock makes two processes download and import once. With `HF_HUB_OFFLINE=1` a cached entry loads
without any request and an uncached one fails at once, naming the URL and the manual route.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ...errors import first_line
from .registry import RegistryEntry

CACHE_FOLDER = "zsad-released"
CHUNK = 1 << 20


class ReleasedModelError(OSError):
    """A released model that cannot be fetched or verified (one line: the file, the URL, what to do)."""


def cache_root() -> Path:
    """`zsad-released/` under the Hugging Face hub cache (read at call time: `HF_HUB_CACHE`, `HF_HOME`)."""
    from huggingface_hub import constants

    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME") or constants.HF_HOME, "hub")
    return Path(cache).expanduser() / CACHE_FOLDER


def is_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE


def entry_folder(entry: RegistryEntry) -> Path:
    kind, value = next(iter(entry.checksum.items()))
    return cache_root() / entry.name / f"{kind}-{value}"


def cached_file(entry: RegistryEntry) -> Path:
    return entry_folder(entry) / entry.file_name


def imported_folder(entry: RegistryEntry, backbone: str, dino_backbone: str | None) -> Path:
    """The zsad checkpoint of `entry` for these backbones (their ids are part of its config)."""
    key = hashlib.sha256(f"{backbone}\0{dino_backbone or ''}".encode()).hexdigest()[:16]
    return entry_folder(entry) / f"imported-{key}"


def is_cached(entry: RegistryEntry) -> bool:
    return cached_file(entry).is_file()


def manual_route(entry: RegistryEntry) -> str:
    method = entry.method
    return (f"download {entry.url} and run `zsad import-checkpoint {method} FILE OUT_DIR --trained-on "
            f"{entry.trained_on}`, then pass --model OUT_DIR")


def file_digest(path: Path, kind: str) -> str:
    """The checksum of `path`: `sha256`, `sha256-prefix` (its first characters compared) or
    `git-blob-sha1` (SHA-1 of `blob <size>\\0` + the bytes: git's id of the file at a commit)."""
    if kind in ("sha256", "sha256-prefix"):
        digest = hashlib.sha256()
    elif kind == "git-blob-sha1":
        digest = hashlib.sha1()
        digest.update(f"blob {path.stat().st_size}\0".encode())
    else:
        raise ValueError(f"unknown checksum kind {kind!r}")
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, entry: RegistryEntry) -> None:
    """Raise (and delete `path`) unless it has the entry's size and checksum."""
    kind, expected = next(iter(entry.checksum.items()))
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        path.unlink()
        raise ReleasedModelError(f"{entry.url}: downloaded {size:,} bytes, expected {entry.size:,}; "
                                 "the partial file was deleted, run the command again")
    actual = file_digest(path, kind)
    if not actual.startswith(expected) if kind == "sha256-prefix" else actual != expected:
        path.unlink()
        raise ReleasedModelError(f"{entry.url}: {entry.file_name} has {kind} {actual}, expected {expected}; "
                                 "the file was deleted and nothing was cached (a changed or corrupted download)")


def fetch(entry: RegistryEntry) -> Path:
    """The entry's verified file in the cache, downloaded first if needed (no request when cached)."""
    from filelock import FileLock

    target = cached_file(entry)
    if target.is_file():
        return target
    if is_offline():
        raise ReleasedModelError(f"{entry.name} is not in the cache ({cache_root()}) and HF_HUB_OFFLINE is set; "
                                 f"go online once, or {manual_route(entry)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_root() / entry.name / ".lock")):
        if target.is_file():  # another process finished it while this one waited
            return target
        partial = target.with_name(target.name + ".incomplete")
        _download(entry, partial)
        verify(partial, entry)
        os.replace(partial, target)
    return target


def _download(entry: RegistryEntry, partial: Path) -> None:
    """Stream `entry.url` into `partial`, resuming from its current size; a Hub file through
    `hf_hub_download` (its own cache, resume and authentication), then copied."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.file_download import http_get

    if entry.hub:
        try:
            shutil.copyfile(hf_hub_download(entry.hub["repo_id"], entry.hub["filename"], revision=entry.hub["revision"],
                                            tqdm_class=download_bar()), partial)
        except Exception as error:  # noqa: BLE001 - huggingface_hub's errors name the repository and file
            raise ReleasedModelError(f"cannot download {entry.url} ({first_line(error)}); {manual_route(entry)}") from error
        return
    resume = partial.stat().st_size if partial.is_file() else 0
    if entry.size is not None and resume > entry.size:  # not a prefix of this file: start again
        partial.unlink()
        resume = 0
    try:
        with open(partial, "ab") as handle:
            http_get(entry.url, handle, resume_size=resume, expected_size=entry.size, tqdm_class=download_bar(),
                     displayed_filename=f"{entry.name} ({entry.file_name})")
    except Exception as error:  # noqa: BLE001 - httpx, huggingface_hub and OS errors alike end in one line
        done = partial.stat().st_size if partial.is_file() else 0
        raise ReleasedModelError(f"cannot download {entry.url} ({first_line(error)}); {done:,} bytes are kept and the "
                                 f"next run resumes, or {manual_route(entry)}") from error


def download_bar() -> type:
    """A tqdm class for the download's bar: drawn on a terminal only (tqdm's `disable=None`), whatever
    huggingface_hub's progress-bar setting (the commands silence the libraries' bars, not this one)."""
    from tqdm.auto import tqdm

    class DownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": None})

    return DownloadBar


def released_checkpoint(entry: RegistryEntry, *, backbone: str | os.PathLike | None = None,
                        dino_backbone: str | os.PathLike | None = None) -> Path:
    """The zsad checkpoint of `entry`: imported from the verified file on first use, then reused."""
    from filelock import FileLock

    from ...modeling_checkpoints import backbone_reference
    from .importer import import_released_checkpoint

    backbone_id = backbone_reference(backbone or entry.backbone)
    dino_id = backbone_reference(dino_backbone) if dino_backbone else None
    folder = imported_folder(entry, backbone_id, dino_id)
    if (folder / "config.json").is_file():
        return folder
    source = fetch(entry)
    with FileLock(str(cache_root() / entry.name / ".lock")):
        if not (folder / "config.json").is_file():
            import_released_checkpoint(entry.method, source, folder, backbone=backbone_id, trained_on=entry.trained_on,
                                       dino_backbone=dino_id)
    return folder
