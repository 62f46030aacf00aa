"""The `zsad` command line: `zsad detect`, `zsad evaluate`, `zsad convert`, `zsad train` (more subcommands
register here).

Every subcommand follows the error contract of `zsad.cli_utils` (one line, exit 2, `--debug`). This
module imports neither torch nor transformers at import time, so `zsad --help` answers at once.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import __version__
from .hub.cli import register_hub_commands
from .cli_utils import (
    ArgumentParser,
    CommandError,
    add_debug_flag,
    check_hub_access,
    image_size,
    local_path_or_hub_id,
    looks_like_path,
    non_negative_int,
    positive_int,
    prepare_output_dir,
    resolve_device,
    run_command,
)
from .inference_cli import register_calibrate_command, register_export_command
from .visualize import MAP_SCALES

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_BACKBONE = "openai/clip-vit-large-patch14-336"
# Overlays (and the decoded images behind them) are kept within this size; JPEGs decode at a reduced
# scale directly (PIL draft mode), so a 50-megapixel photo never reaches memory at full size.
MAX_OVERLAY_SIDE = 2048
SCORE_FIELDS = ["image", "status", "score", "label", "overlay", "message"]

__all__ = ["CommandError", "build_parser", "find_images", "load_detector", "main", "resolve_device"]


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted, de-duplicated list of images."""
    found: dict[Path, None] = {}
    for item in inputs:
        matches = [Path(m) for m in glob.glob(item, recursive=True)] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise CommandError(f"no file matches {item!r}")
        for path in matches:
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            elif path.is_file():
                files = [path]
            else:
                raise CommandError(f"no such file or folder: {path}")
            found.update(dict.fromkeys(files))
    if not found:
        raise CommandError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {', '.join(inputs)}")
    return list(found)



def _quiet_libraries() -> None:
    """Keep library logging (Hub retries, weight-loading bars) out of the command's output."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    hub_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def check_checkpoint_folder(folder: Path) -> dict:
    """The parsed config.json of a local zsad checkpoint; one-line errors for anything that would fail later."""
    from . import MODEL_CLASSES

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CommandError(f"{folder} is not a zsad checkpoint: it has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CommandError(f"{config_path} is not valid JSON ({error}); re-save or re-download the checkpoint") from None
    known = sorted(cls.config_class.model_type for cls in MODEL_CLASSES.values())
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in known:
        raise CommandError(f"{config_path} has model_type {model_type!r}, which is not a zsad model "
                           f"({', '.join(known)}); pass a zsad checkpoint, or upgrade zsad if it is newer")
    weights = folder / "model.safetensors"
    if not weights.is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise CommandError(f"{folder} has no model.safetensors; re-save or re-download the checkpoint")
    if weights.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CommandError(f"{weights} is not a valid safetensors file ({reason}); "
                               "re-save or re-download the checkpoint") from None
    return config


def _resolve_backbone(value: str, what: str) -> str:
    backbone = local_path_or_hub_id(value, "--backbone")
    check_hub_access(backbone, what=what, flag="--backbone")
    return backbone


def check_sources(model_id: str | None, backbone: str | None) -> tuple[str | None, str | None]:
    """Check what `load_detector` will load before anything heavy is imported: local paths as paths,
    checkpoints validated, and a Hub download that cannot happen fails within seconds with the offline
    recipe. Returns `(model_id, backbone)` as they will be loaded."""
    if model_id is None:
        backbone = _resolve_backbone(backbone or DEFAULT_BACKBONE, "CLIP backbone")
    else:
        model_id = local_path_or_hub_id(model_id, "--model")
        if Path(model_id).is_dir():
            config = check_checkpoint_folder(Path(model_id))
            stored = config.get("backbone_name_or_path")
            if backbone is None and not config.get("save_backbone") and isinstance(stored, str):
                if not Path(stored).expanduser().exists() and looks_like_path(stored):
                    raise CommandError(f"the CLIP backbone of {model_id}, {stored}, is not on this machine; "
                                       "pass --backbone DIR with a copy of it")
                check_hub_access(stored, what=f"CLIP backbone of {model_id}", flag="--backbone")
        else:
            check_hub_access(model_id, what="model", flag="--model")
        if backbone is not None:
            backbone = _resolve_backbone(backbone, "CLIP backbone")
    return model_id, backbone


def load_detector(model_id: str | None, backbone: str | None, object_name: str | None):
    """The model to run: a zsad checkpoint (`model_id`), else the training-free ZeroShotCLIP on `backbone`
    (checked by `check_sources` first; no remote code ever runs)."""
    model_id, backbone = check_sources(model_id, backbone)
    _quiet_libraries()
    from transformers import AutoModel

    from . import ZeroShotCLIPModel, ZSADPreTrainedModel

    try:
        if model_id is None:
            kwargs = {"object_name": object_name} if object_name else {}
            return ZeroShotCLIPModel.from_backbone(backbone, **kwargs)
        model = AutoModel.from_pretrained(model_id, trust_remote_code=False,
                                          **({"backbone_name_or_path": backbone} if backbone else {}))
    except (OSError, ValueError, KeyError) as error:
        what = f"model {model_id!r}" if model_id else f"backbone {backbone!r}"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # zsad's own loaders already name what failed; transformers' messages do not.
        message = reason if reason.startswith("cannot load") else f"cannot load {what}: {reason}"
        if "backbone" in message and "--backbone" not in message:
            message += "; pass --backbone DIR with a local copy of the CLIP backbone"
        raise CommandError(message) from error
    if not isinstance(model, ZSADPreTrainedModel):
        raise CommandError(f"{model_id!r} is a {type(model).__name__}, not a zsad anomaly detection model")
    return model


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def overlay_names(paths: list[Path]) -> list[str]:
    """A distinct overlay file name per input: `<stem>.png`, or, where stems collide (`a/part.png`,
    `b/part.png`, `part.jpg`), the path below the inputs' common folder with its extension
    (`a__part_png.png`). Compared case-insensitively, so names are distinct on every file system."""
    stems = Counter(p.stem.lower() for p in paths)
    absolute = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in absolute])) if paths else Path()
    names, used = [], set()
    for path, full in zip(paths, absolute):
        if stems[path.stem.lower()] == 1:
            base = path.stem
        else:
            relative = full.relative_to(root)
            base = "__".join(relative.with_suffix("").parts) + "_" + path.suffix.lstrip(".").lower()
        name, counter = f"{base}.png", 2
        while name.lower() in used:
            name, counter = f"{base}-{counter}.png", counter + 1
        used.add(name.lower())
        names.append(name)
    return names


def set_reference_folder(model, folder: str, image_size: int) -> None:
    """`model.set_normal_references` with the images directly inside `folder` (few-shot, docs/few_shot.md)."""
    from .few_shot import reference_images

    try:
        model.set_normal_references(reference_images(folder, image_size).to(model.device, model.dtype))
    except ValueError as error:
        raise CommandError(f"--normal-references: {error}") from error


def _detect_settings(args: argparse.Namespace, image_size_: int) -> dict:
    model = args.model or f"ZeroShotCLIP on {args.backbone or DEFAULT_BACKBONE}"
    settings = {"model": model, "image_size": image_size_, "map_scale": args.map_scale}
    if args.object_name:
        settings["object_name"] = args.object_name
    if args.normal_references:
        settings["normal_references"] = str(Path(args.normal_references).resolve())
    return settings


def _finished_rows(out_dir: Path, settings: dict) -> dict[str, dict]:
    """Rows of an earlier run in `out_dir` that `--resume` keeps: same settings, overlay on disk."""
    summary_path, scores_path = out_dir / "scores.json", out_dir / "scores.csv"
    if not scores_path.is_file():
        return {}
    try:
        earlier = json.loads(summary_path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError):
        earlier = {}
    for key, value in settings.items():
        if earlier.get(key) != value:
            raise CommandError(f"--resume: {out_dir} holds results with {key} = {earlier.get(key)!r}, not {value!r}; "
                               "resume with the same options, or pass --overwrite to start again")
    with open(scores_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row["image"]: row
        for row in rows
        if row.get("status") == "unreadable" or (row.get("status") == "ok" and (out_dir / row.get("overlay", "")).is_file())
    }


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SCORE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def run_detect(args: argparse.Namespace) -> int:
    paths = find_images(args.images)
    out_dir = prepare_output_dir(args.out, flag="--out", overwrite=args.overwrite, resume=args.resume,
                                 resume_flag="--resume")
    check_sources(args.model, args.backbone)  # fail fast, before torch is imported
    device = resolve_device(args.device)
    model = load_detector(args.model, args.backbone, args.object_name)

    import torch
    from tqdm.auto import tqdm

    from .clip.processing import ImageLoadError, ZSADImageProcessor, load_rgb
    from .modeling_base import LABELS
    from .report import DetectReport

    model = model.to(device).eval()
    if device.type == "cuda" and args.dtype == "auto":
        model = model.to(torch.bfloat16)
    elif args.dtype not in ("auto", "float32"):
        model = model.to(getattr(torch, args.dtype))
    size = args.image_size or model.config.image_size
    patch = model.config.clip_config.vision_config.patch_size
    if size % patch:
        raise CommandError(f"--image-size must be a multiple of the backbone's patch size {patch}, got {size}")
    processor = ZSADImageProcessor(image_size=size)
    if args.normal_references:
        set_reference_folder(model, args.normal_references, size)
    settings = _detect_settings(args, size)
    overlay_dir = out_dir / "overlays"
    overlay_dir.mkdir(exist_ok=True)
    names = dict(zip(paths, overlay_names(paths)))
    report = DetectReport(out_dir, map_scale=args.map_scale, title=f"zsad detect: {settings['model']}",
                          details=[f"image threshold: {model.config.image_threshold}"])

    done = _finished_rows(out_dir, settings) if args.resume else {}
    rows = {str(p): done[str(p)] for p in paths if str(p) in done}
    for row in rows.values():
        if row["status"] == "ok":
            report.add_finished(row["image"], float(row["score"]), row.get("label") or None, row["overlay"])
    (out_dir / "scores.json").write_text(json.dumps({"settings": settings, "complete": False}, indent=2), encoding="utf-8")
    _write_rows(out_dir / "scores.csv", list(rows.values()))  # finished rows first; new ones are appended
    todo = [p for p in paths if str(p) not in rows]
    failures: list[str] = []
    try:
        with open(out_dir / "scores.csv", "a", newline="", encoding="utf-8") as handle, \
                tqdm(total=len(paths), initial=len(rows), desc="zsad detect", unit="img",
                     disable=True if args.quiet else None) as progress:
            writer = csv.DictWriter(handle, fieldnames=SCORE_FIELDS)
            for batch_paths in _batches(todo, args.batch_size):
                images, kept = [], []
                for path in batch_paths:
                    try:
                        images.append(load_rgb(path, max_side=MAX_OVERLAY_SIDE))
                        kept.append(path)
                    except ImageLoadError as error:
                        failures.append(str(error))
                        rows[str(path)] = {"image": str(path), "status": "unreadable", "score": "", "label": "",
                                           "overlay": "", "message": str(error)}
                        writer.writerow(rows[str(path)])
                if images:
                    pixels = torch.stack([processor.preprocess_image(image) for image in images])
                    with torch.inference_mode():
                        output = model(pixel_values=pixels.to(device, model.dtype))
                    scores = output.pred_scores.float().cpu().tolist()
                    labels = [None] * len(kept) if output.pred_labels is None else [LABELS[i] for i in output.pred_labels.tolist()]
                    for path, image, score, label, anomaly_map in zip(kept, images, scores, labels, output.anomaly_maps.float().cpu()):
                        overlay = (Path("overlays") / names[path]).as_posix()
                        report.add(path, image, anomaly_map, score, label, overlay)
                        rows[str(path)] = {"image": str(path), "status": "ok", "score": repr(score),
                                           "label": label or "", "overlay": overlay, "message": ""}
                        writer.writerow(rows[str(path)])
                handle.flush()
                progress.update(len(batch_paths))
    except KeyboardInterrupt:
        print(f"zsad detect: interrupted after {len(rows)} of {len(paths)} image(s); to continue, run the same "
              "command with --resume", file=sys.stderr)
        return 130

    ordered = [rows[str(p)] for p in paths]
    _write_rows(out_dir / "scores.csv", ordered)
    report_path = report.finish() if report.items else None
    results = [{**row, "score": float(row["score"]) if row["status"] == "ok" else None} for row in ordered]
    summary = {"settings": settings, "complete": True, **settings, "image_threshold": model.config.image_threshold,
               "results": results}
    (out_dir / "scores.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    scored = sum(row["status"] == "ok" for row in ordered)
    if not scored:
        reason = f": {failures[0]}" if len(paths) == 1 and failures else " (see scores.csv)"
        raise CommandError(f"none of the {len(paths)} image(s) could be read{reason}")
    for message in failures:
        print(f"warning: skipped unreadable image: {message}", file=sys.stderr)
    skipped = len(paths) - scored
    resumed = f" ({len(done)} from the earlier run)" if done else ""
    print(f"scored {scored} image(s){resumed}{f', skipped {skipped} unreadable' if skipped else ''}; results in {out_dir}, "
          f"report: {report_path}")
    return 0


def _add_common_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="zsad checkpoint: Hub id (org/name) or local folder "
                        "(default: the training-free ZeroShotCLIP)")
    parser.add_argument("--backbone", help=f"CLIP backbone: Hub id or local folder (default for ZeroShotCLIP: "
                        f"{DEFAULT_BACKBONE}; with --model, replaces the checkpoint's backbone, e.g. a local copy)")
    parser.add_argument("--object-name", help="object word in ZeroShotCLIP's prompts (default 'object')")
    parser.add_argument("--image-size", type=image_size, metavar="N",
                        help="input resolution, a multiple of the patch size, at most 2048 "
                        "(default: the model's, 518 for ViT-L/14)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder "
                        "(files of the same names are replaced)")
    add_debug_flag(parser, suppress_default=True)


def add_detect_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="score images and write anomaly heat maps",
        description="Score images for anomalies. Without --model, runs the training-free ZeroShotCLIP on --backbone.",
    )
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", default="zsad_output", help="output folder, empty or new (default: zsad_output)")
    _add_common_model_options(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out: images already scored there are skipped")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto = bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--map-scale", choices=MAP_SCALES, default="absolute",
                        help="heat-map colours: absolute probabilities (default), each map's own min..max (image), "
                        "or one min..max shared by the run (run)")
    parser.add_argument("--normal-references", metavar="DIR",
                        help="folder of normal images of the inspected class: adds the few-shot memory map (WinCLIP+ style)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_detect)


def run_evaluate(args: argparse.Namespace) -> int:
    out_dir = prepare_output_dir(args.out, flag="--out", overwrite=args.overwrite)
    check_sources(args.model, args.backbone)
    device = resolve_device(args.device)
    model = load_detector(args.model, args.backbone, args.object_name).to(device).eval()

    from .evaluation import evaluate_datasets

    evaluate_datasets(
        model, args.datasets, output_dir=out_dir, split=args.split, categories=args.categories,
        image_size=args.image_size, batch_size=args.batch_size, aupro_mode=args.aupro,
        report_cflow=args.report_cflow, heatmaps_per_category=args.heatmaps_per_category,
        model_name=args.model or "ZeroShotCLIP", normal_references=args.normal_references,
    )
    return 0


def add_evaluate_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="per-category metrics of a model on datasets",
        description="Image AUROC/AP/F1-max and pixel AUROC/AP/F1-max/AUPRO per category, with macro averages. "
        "For several processes use `accelerate launch examples/evaluate.py`.",
    )
    parser.add_argument("datasets", nargs="+", help="folders written by `zsad convert`, parquet, imagefolder or Hub ids")
    parser.add_argument("--out", default="zsad_eval", help="output folder, empty or new (default: zsad_eval)")
    _add_common_model_options(parser)
    parser.add_argument("--split", default="test")
    parser.add_argument("--categories", nargs="+")
    parser.add_argument("--aupro", choices=["exact", "binned", "cflow"], default="exact")
    parser.add_argument("--report-cflow", action="store_true", help="also report the paper-comparable cflow AUPRO")
    parser.add_argument("--heatmaps-per-category", type=non_negative_int, default=0, metavar="N",
                        help="save N overlays per category, anomalous and normal images alike")
    parser.add_argument("--normal-references", metavar="DIR",
                        help="few-shot: normal images of each category in DIR/<category>/ (docs/few_shot.md)")
    parser.set_defaults(func=run_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The `zsad` parser. `convert` and `train` are listed here and parsed by their own modules
    (`run_own_parser_command`), so building this parser imports nothing heavy."""
    parser = ArgumentParser(prog="zsad", description="Zero-shot anomaly detection with CLIP.")
    parser.add_argument("--version", action="version", version=f"zsad {__version__}")
    add_debug_flag(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_detect_command(subparsers)
    add_evaluate_command(subparsers)
    register_calibrate_command(subparsers)
    register_export_command(subparsers)
    register_hub_commands(subparsers)
    subparsers.add_parser("convert", add_help=False,
                          help="convert an anomaly-detection dataset on disk to the zsad schema (parquet or imagefolder)")
    subparsers.add_parser("train", add_help=False,
                          help="train a method's adapters in this process (on several GPUs: accelerate launch -m zsad.train)")
    return parser


def run_own_parser_command(argv: list[str]) -> int:
    """`zsad convert ...` and `zsad train ...`, whose modules parse their own options: imported only when
    they run, so that `zsad --help` stays light."""
    try:
        if argv[0] == "convert":
            from .data.cli import main as convert_main

            return convert_main(argv)
        from .train import main as train_main

        return train_main(argv[1:], prog="zsad train", launcher=["zsad", "train"])
    except SystemExit as done:  # --help, or a one-line usage error (exit 2)
        return done.code if isinstance(done.code, int) else 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"] and argv[1:2] in (["convert"], ["train"]):
        argv = [argv[1], "--debug", *argv[2:]]  # `zsad --debug train ...` is `zsad train --debug ...`
    if argv[:1] in (["convert"], ["train"]):
        return run_own_parser_command(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a one-line usage error (exit 2)
        return done.code if isinstance(done.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return run_command(f"zsad {args.command}", lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
