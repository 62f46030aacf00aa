"""The `zsad` command line: `zsad detect IMAGES...` (more subcommands register themselves here)."""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from .data.cli import register_convert_command
from .hub.cli import register_hub_commands
from .inference_cli import register_calibrate_command, register_export_command
from .visualize import MAP_SCALES

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_BACKBONE = "openai/clip-vit-large-patch14-336"


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


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


def resolve_device(name: str):
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_detector(model_id: str | None, backbone: str | None, object_name: str | None):
    """The model to run: a zsad checkpoint (`model_id`), else the training-free ZeroShotCLIP on `backbone`."""
    from transformers import AutoModel

    from . import ZeroShotCLIPModel, ZSADPreTrainedModel

    try:
        if model_id is None:
            kwargs = {"object_name": object_name} if object_name else {}
            return ZeroShotCLIPModel.from_backbone(backbone or DEFAULT_BACKBONE, **kwargs)
        model = AutoModel.from_pretrained(model_id, **({"backbone_name_or_path": backbone} if backbone else {}))
    except (OSError, ValueError, KeyError) as error:
        what = f"model {model_id!r}" if model_id else f"backbone {backbone or DEFAULT_BACKBONE!r}"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # zsad's own loaders already name what failed; transformers' messages do not.
        raise CommandError(reason if reason.startswith("cannot load") else f"cannot load {what}: {reason}") from error
    if not isinstance(model, ZSADPreTrainedModel):
        raise CommandError(f"{model_id!r} is a {type(model).__name__}, not a zsad anomaly detection model")
    return model


def set_reference_folder(model, folder: str, image_size: int) -> None:
    """`model.set_normal_references` with the images directly inside `folder` (few-shot, docs/few_shot.md)."""
    from .few_shot import reference_images

    try:
        model.set_normal_references(reference_images(folder, image_size).to(model.device, model.dtype))
    except ValueError as error:
        raise CommandError(f"--normal-references: {error}") from error


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unique_names(paths: list[Path]) -> list[str]:
    """File names for the overlays: the stem, made unique with the parent folders where stems collide."""
    stems = [p.stem for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            stem = "__".join(path.with_suffix("").parts[-3:])
        names.append(f"{stem}.png")
    return names


def run_detect(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .clip.processing import ImageLoadError, ZSADImageProcessor, load_image, to_rgb
    from .modeling_base import LABELS
    from .report import DetectReport

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = find_images(args.images)
    device = resolve_device(args.device)
    model = load_detector(args.model, args.backbone, args.object_name).to(device).eval()
    if device.type == "cuda" and args.dtype == "auto":
        model = model.to(torch.bfloat16)
    elif args.dtype not in ("auto", "float32"):
        model = model.to(getattr(torch, args.dtype))
    image_size = args.image_size or model.config.image_size
    patch = model.config.clip_config.vision_config.patch_size
    if image_size % patch:
        raise CommandError(f"--image-size must be a multiple of the backbone's patch size {patch}, got {image_size}")
    if args.normal_references:
        set_reference_folder(model, args.normal_references, image_size)
    processor = ZSADImageProcessor(image_size=image_size)
    out_dir = Path(args.out)
    overlay_dir = out_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    names = dict(zip(paths, _unique_names(paths)))
    model_name = args.model or f"ZeroShotCLIP on {args.backbone or DEFAULT_BACKBONE}"
    report = DetectReport(out_dir, map_scale=args.map_scale, title=f"zsad detect: {model_name}",
                          details=[f"image threshold: {model.config.image_threshold}"])

    rows = []
    with tqdm(total=len(paths), desc="zsad detect", unit="img", disable=args.quiet) as progress:
        for batch_paths in _batches(paths, args.batch_size):
            images, kept = [], []
            for path in batch_paths:
                try:
                    images.append(to_rgb(load_image(path)))
                    kept.append(path)
                except ImageLoadError as error:
                    warnings.warn(f"skipped unreadable image: {error}", stacklevel=1)
            if images:
                pixels = torch.stack([processor.preprocess_image(image) for image in images])
                with torch.inference_mode():
                    output = model(pixel_values=pixels.to(device, model.dtype))
                scores = output.pred_scores.float().cpu().tolist()
                labels = [None] * len(kept) if output.pred_labels is None else [LABELS[i] for i in output.pred_labels.tolist()]
                for path, image, score, label, anomaly_map in zip(kept, images, scores, labels, output.anomaly_maps.float().cpu()):
                    overlay_path = overlay_dir / names[path]
                    report.add(path, image, anomaly_map, score, label, overlay_path.relative_to(out_dir).as_posix())
                    rows.append({"image": str(path), "score": score, "label": label or "", "overlay": str(overlay_path)})
            progress.update(len(batch_paths))

    if not rows:
        raise CommandError("none of the images could be read")
    report_path = report.finish()
    with open(out_dir / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "score", "label", "overlay"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"model": model_name, "image_size": image_size, "image_threshold": model.config.image_threshold, "results": rows}
    (out_dir / "scores.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    skipped = len(paths) - len(rows)
    print(f"scored {len(rows)} image(s){f', skipped {skipped} unreadable' if skipped else ''}; results in {out_dir}, "
          f"report: {report_path}")
    return 0


def add_detect_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="score images and write anomaly heat maps",
        description="Score images for anomalies. Without --model, runs the training-free ZeroShotCLIP on --backbone.",
    )
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--model", help="zsad checkpoint: Hub id or local folder (default: training-free ZeroShotCLIP)")
    parser.add_argument("--backbone", help=f"CLIP backbone id or folder (default for ZeroShotCLIP: {DEFAULT_BACKBONE}; "
                        "with --model, overrides the checkpoint's backbone id)")
    parser.add_argument("--object-name", help="object word in ZeroShotCLIP's prompts (default 'object')")
    parser.add_argument("--out", default="zsad_output", help="output folder (default: zsad_output)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, help="input resolution (default: the model's, 518 for ViT-L/14)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto = bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--normal-references", metavar="DIR",
                        help="folder of normal images of the inspected class: adds the few-shot memory map (WinCLIP+ style)")
    parser.add_argument("--map-scale", choices=MAP_SCALES, default="absolute",
                        help="heat-map colours: absolute probabilities (default), each map's own min..max (image), "
                        "or one min..max shared by the run (run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_detect)


def run_evaluate(args: argparse.Namespace) -> int:
    from .data import DataError
    from .evaluation import evaluate_datasets

    model = load_detector(args.model, args.backbone, args.object_name)
    model = model.to(resolve_device(args.device)).eval()
    try:
        evaluate_datasets(
            model, args.datasets, output_dir=args.out, split=args.split, categories=args.categories,
            image_size=args.image_size, batch_size=args.batch_size, aupro_mode=args.aupro,
            report_cflow=args.report_cflow, heatmaps_per_category=args.heatmaps_per_category,
            model_name=args.model or "ZeroShotCLIP", normal_references=args.normal_references,
        )
    except DataError as error:
        raise CommandError(str(error)) from error
    return 0


def add_evaluate_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="per-category metrics of a model on datasets",
        description="Image AUROC/AP/F1-max and pixel AUROC/AP/F1-max/AUPRO per category, with macro averages. "
        "For several processes use `accelerate launch examples/evaluate.py`.",
    )
    parser.add_argument("datasets", nargs="+", help="converted folders, parquet, imagefolder or Hub ids")
    parser.add_argument("--model", help="zsad checkpoint (default: training-free ZeroShotCLIP)")
    parser.add_argument("--backbone", help="CLIP backbone for ZeroShotCLIP, or a mirror of the checkpoint's backbone")
    parser.add_argument("--object-name", help="object word in ZeroShotCLIP's prompts")
    parser.add_argument("--split", default="test")
    parser.add_argument("--categories", nargs="+")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--aupro", choices=["exact", "binned", "cflow"], default="exact")
    parser.add_argument("--report-cflow", action="store_true", help="also report the paper-comparable cflow AUPRO")
    parser.add_argument("--heatmaps-per-category", type=int, default=0)
    parser.add_argument("--normal-references", metavar="DIR",
                        help="few-shot: normal images of each category in DIR/<category>/ (docs/few_shot.md)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="zsad_eval", help="output folder (default: zsad_eval)")
    parser.set_defaults(func=run_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsad", description="Zero-shot anomaly detection with CLIP.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_detect_command(subparsers)
    add_evaluate_command(subparsers)
    register_convert_command(subparsers)
    register_calibrate_command(subparsers)
    register_export_command(subparsers)
    register_hub_commands(subparsers)
    return parser


def _quiet_libraries() -> None:
    """Keep library logging (Hub retries, weight-loading bars) out of the command's output."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    hub_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    _quiet_libraries()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning_line
            return args.func(args)
    except CommandError as error:
        print(f"zsad {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zsad {args.command}: interrupted", file=sys.stderr)
        return 130


def _show_warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one readable line (`warning: ...`) instead of Python's file:line format."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


if __name__ == "__main__":
    sys.exit(main())
