"""Publishing to the Hub: everything of a folder goes up in one commit.

`PreTrainedModel.push_to_hub` would replace our README with transformers' generic card, so zsad saves
the folder itself and uploads it. `push_directory` (`zsad push`) recognises two kinds of folders:
- a zsad model folder (config.json of a zsad model type, model.safetensors, README.md card,
  modeling_zsad.py shim) -> a model repository;
- a parquet dataset written by `zsad convert` (README.md with a `zsad:` entry, data/*.parquet) -> a
  dataset repository, with a dataset card generated from the parquet files themselves: schema, counts
  per split, per category and label, source and license of the images.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from huggingface_hub import CommitOperationAdd, HfApi

# Training by-products that must never be published.
IGNORE_PATTERNS = ["checkpoints/*", "logs/*", "*.pkl", "*.bin", "*.pt", "*.pth", ".zsad-lock*", ".zsad-write-test-*"]
MODEL_FILES = ("config.json", "model.safetensors", "README.md", "modeling_zsad.py")
REPO_PLACEHOLDER = "<this repository>"  # the model card's stand-in for the repository id


class PushError(ValueError):
    """A folder that cannot be pushed as it is (not a zsad model or dataset, a missing file or license)."""


@dataclass
class PushPlan:
    """What `push_directory` uploads (or would upload, for a dry run) in its one commit."""

    repo_type: str
    files: list[tuple[str, int]]
    commit_url: str | None = None


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload zsad model",
    revision: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` (config, safetensors, README card, shim); return the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=os.fspath(folder),
        commit_message=commit_message,
        revision=revision,
        ignore_patterns=IGNORE_PATTERNS,
    )
    return info.commit_url


def _front_matter(card: Path) -> tuple[dict, str]:
    """(YAML header, body) of a card; an empty header when there is none."""
    text = card.read_text(encoding="utf-8")
    if text.startswith("---"):
        parts = text.split("---", 2)
        if len(parts) == 3:
            header = yaml.safe_load(parts[1])
            return (header if isinstance(header, dict) else {}), parts[2]
    return {}, text


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(relative, p) for p in IGNORE_PATTERNS):
            files.append(path)
    return files


def model_upload(folder: Path, repo_id: str) -> dict[str, bytes | Path]:
    """`path in repo -> content` of a zsad model folder; the card names `repo_id` in its usage lines."""
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise PushError(f"{folder} is not a complete zsad model folder: {missing[0]} is missing (write it with save_pretrained or zsad import-checkpoint)")
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PushError(f"{folder / 'config.json'}: not valid JSON ({error})") from None
    if not str(model_type).startswith("zsad"):
        raise PushError(f"{folder / 'config.json'}: model_type {model_type!r} is not a zsad model")
    upload: dict[str, bytes | Path] = {path.relative_to(folder).as_posix(): path for path in _folder_files(folder)}
    card = (folder / "README.md").read_text(encoding="utf-8")
    upload["README.md"] = card.replace(REPO_PLACEHOLDER, repo_id).encode("utf-8")
    return upload


def dataset_counts(folder: Path) -> tuple[Counter, Counter]:
    """From the parquet shards `data/<split>-*.parquet`: images per split, and per (split, category, label name)."""
    from ..data.schema import LABEL_NAMES

    per_split: Counter = Counter()
    per_group: Counter = Counter()
    for shard in sorted((folder / "data").glob("*.parquet")):
        split = shard.name.split("-")[0]
        table = pq.read_table(shard, columns=["label", "category"])
        per_split[split] += table.num_rows
        for label, category in zip(table.column("label").to_pylist(), table.column("category").to_pylist()):
            per_group[(split, category, LABEL_NAMES[label])] += 1
    return per_split, per_group


def _feature_text(feature) -> str:
    """`string`, `Image`, `ClassLabel(normal, anomaly)`: a feature as the card's schema table shows it."""
    if hasattr(feature, "names"):
        return f"ClassLabel({', '.join(feature.names)})"
    return getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else type(feature).__name__


def dataset_card(folder: Path, repo_id: str, license: str | None) -> str:
    """The dataset card of a `zsad convert` parquet folder: the converter's YAML header (configs, features)
    plus license, and a body with the source, the license, the schema and the counts."""
    from ..data.schema import COLUMN_DESCRIPTIONS, FEATURES, SPLITS

    header, _ = _front_matter(folder / "README.md")
    license = license or header.get("license")
    if not license:
        raise PushError(
            f"{folder}: no license recorded for the images; pass --license (the source dataset's license, "
            "e.g. cc-by-4.0) and check that it allows re-hosting"
        )
    header["license"] = license
    header.setdefault("task_categories", ["image-segmentation", "image-classification"])
    zsad_info = header.get("zsad", {})
    per_split, per_group = dataset_counts(folder)
    splits = [s for s in SPLITS if s in per_split] + sorted(set(per_split) - set(SPLITS))
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", f"# {repo_id}", ""]
    lines += [
        f"Anomaly-detection images converted by `zsad convert {zsad_info.get('converter', '?')}` from "
        f"`{zsad_info.get('source', '?')}`, in zsad's anomaly-detection schema. Train or evaluate on it with "
        f"`zsad train --dataset {repo_id} ...` or `zsad.data.load_anomaly_dataset(\"{repo_id}\")`.",
        "",
        f"- **Source:** `{zsad_info.get('source', '?')}` (layout `{zsad_info.get('converter', '?')}`)",
        f"- **License of the images:** {license} (the source dataset's license)",
        f"- **Images:** {sum(per_split.values())}",
        "",
        "## Schema",
        "",
        "| column | feature | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {_feature_text(FEATURES[name])} | {COLUMN_DESCRIPTIONS[name]} |" for name in FEATURES]
    lines += ["", "## Counts", "", "| split | images |", "|---|---|"]
    lines += [f"| {split} | {per_split[split]} |" for split in splits]
    lines += ["", "| split | category | label | images |", "|---|---|---|---|"]
    for split in splits:
        for (s, category, label), count in sorted(per_group.items()):
            if s == split:
                lines.append(f"| {split} | {category} | {label} | {count} |")
    return "\n".join(lines) + "\n"


def dataset_upload(folder: Path, repo_id: str, license: str | None) -> dict[str, bytes | Path]:
    """`path in repo -> content` of a `zsad convert` parquet folder, with the generated dataset card."""
    header, _ = _front_matter(folder / "README.md")
    if header.get("zsad", {}).get("format") != "parquet":
        raise PushError(f"{folder} was converted as an imagefolder; convert it with --format parquet to push it")
    shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        raise PushError(f"{folder / 'data'} holds no parquet files")
    upload: dict[str, bytes | Path] = {shard.relative_to(folder).as_posix(): shard for shard in shards}
    upload["README.md"] = dataset_card(folder, repo_id, license).encode("utf-8")
    return upload


def push_directory(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    license: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushPlan:
    """Push a zsad model folder (model repository) or a `zsad convert` parquet folder (dataset repository)
    to `repo_id` in one commit; with `dry_run`, only return what would be uploaded."""
    from ..data.writer import is_zsad_output

    folder = Path(directory)
    if not folder.is_dir():
        raise PushError(f"{folder}: no such folder")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"repository id {repo_id!r} must look like org/name")
    if is_zsad_output(folder):
        repo_type, upload = "dataset", dataset_upload(folder, repo_id, license)
    elif (folder / "config.json").is_file():
        repo_type, upload = "model", model_upload(folder, repo_id)
    else:
        raise PushError(f"{folder} is neither a zsad model folder (config.json) nor a folder written by zsad convert")
    files = [(name, len(content) if isinstance(content, bytes) else content.stat().st_size) for name, content in sorted(upload.items())]
    plan = PushPlan(repo_type, files)
    if dry_run:
        return plan
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else os.fspath(content))
                  for name, content in sorted(upload.items())]
    info = api.create_commit(
        repo_id, operations, repo_type=repo_type,
        commit_message=commit_message or f"Upload zsad {repo_type} from {folder.name}",
    )
    plan.commit_url = info.commit_url
    return plan
