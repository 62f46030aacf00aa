"""`zsad detect`: score images, write per-image scores, heat-map overlays and an HTML report (docs/cli.md)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..hub.released.registry import default_model_name
from ..file_modes import write_text_atomic
from ..visualize import MAP_SCALES
from .common import CommandError, add_num_workers_flag, launch_world_size, prepare_output_dir, resolve_device
from .loading import add_model_options, check_sources, load_detector

# Overlays (and the decoded images behind them) are kept within this size; JPEGs decode at a reduced
# scale directly (PIL draft mode), so a 50-megapixel photo never reaches memory at full size.
MAX_OVERLAY_SIDE = 2048
SCORE_FIELDS = ["image", "status", "score", "label", "overlay", "message"]


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted, de-duplicated list of images
    (`zsad.data.layouts.IMAGE_EXTENSIONS`: the raster formats PIL decodes, GIF included)."""
    from ..data.layouts import IMAGE_EXTENSIONS

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


def set_reference_folder(model, folder: str, image_size: int, class_name: str | None = None) -> None:
    """`model.set_normal_references` with the images directly inside `folder` (few-shot, docs/few_shot.md)."""
    from ..few_shot import reference_images

    try:
        model.set_normal_references(reference_images(folder, image_size).to(model.device, model.dtype), class_name)
    except ValueError as error:
        raise CommandError(f"--normal-references: {error}") from error


def settings_model(args: argparse.Namespace) -> str:
    return args.model or default_model_name()


def _detect_settings(args: argparse.Namespace, image_size_: int) -> dict:
    settings = {"model": settings_model(args), "image_size": image_size_, "map_scale": args.map_scale}
    if args.backbone:
        settings["backbone"] = str(Path(args.backbone).resolve()) if Path(args.backbone).exists() else args.backbone
    if args.object_name:
        settings["object_name"] = args.object_name
    if args.normal_references:
        settings["normal_references"] = str(Path(args.normal_references).resolve())
    if args.class_name:
        settings["class_name"] = args.class_name
    if args.save_maps or args.save_masks:
        settings.update(save_maps=args.save_maps, save_masks=args.save_masks)
    if args.scores_only:
        settings["scores_only"] = True
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
        if row.get("status") == "unreadable"
        or (row.get("status") == "ok" and (settings.get("scores_only") or (out_dir / row.get("overlay", "")).is_file()))
    }


def save_map_files(out_dir: Path, name: str, anomaly_map, size: tuple[int, int], processor, args: argparse.Namespace,
                   pixel_threshold: float | None) -> None:
    """`--save-maps`: the map at the image's size, `maps/<name>.npy` (float16) or `maps/<name>.png` (16-bit,
    the probability times 65535); `--save-masks`: `masks/<name>.png`, 255 where the map reaches the pixel
    threshold. `name` is the overlay's file name."""
    if not (args.save_maps or args.save_masks):
        return
    import numpy as np
    from PIL import Image

    from ..modeling_outputs import exceeds

    resized = processor.post_process_anomaly_detection(anomaly_map[None], [size])[0]["anomaly_map"].clamp(0, 1)
    stem = Path(name).stem
    if args.save_maps:
        (out_dir / "maps").mkdir(exist_ok=True)
        if args.save_maps == "npy":
            np.save(out_dir / "maps" / f"{stem}.npy", resized.numpy().astype(np.float16))
        else:
            Image.fromarray(np.rint(resized.numpy() * 65535).astype(np.uint16)).save(out_dir / "maps" / f"{stem}.png")
    if args.save_masks:
        (out_dir / "masks").mkdir(exist_ok=True)
        mask = exceeds(resized, pixel_threshold).numpy().astype(np.uint8) * 255
        Image.fromarray(mask, mode="L").save(out_dir / "masks" / f"{stem}.png")


def _write_rows(path: Path, rows: list[dict]) -> None:
    """The whole `scores.csv`, replaced atomically (rows of the running batch are appended in between)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SCORE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def _distributed():
    """`accelerate.PartialState` when this process is one of several (torchrun / `accelerate launch`), else None."""
    if launch_world_size() < 2:
        return None
    from accelerate import PartialState

    return PartialState()


def run(args: argparse.Namespace) -> int:
    paths = find_images(args.images)
    several = launch_world_size() > 1
    if several and args.resume:
        raise CommandError("--resume continues a run of one process; run it without a distributed launch")
    if several and args.map_scale == "run":
        raise CommandError("--map-scale run shares one colour range over all images, which needs one process; "
                           "use --map-scale absolute or image with several processes")
    out_dir = prepare_output_dir(args.out, flag="--out", overwrite=args.overwrite, resume=args.resume,
                                 resume_flag="--resume")
    check_sources(args.model, args.backbone)  # fail fast, before torch is imported
    state = _distributed()
    device = resolve_device(args.device)
    if state is not None and device.type == "cuda":
        device = state.device  # one GPU per process
    model = load_detector(args.model, args.backbone, args.object_name)

    import torch
    from ..progress import progress as progress_bar

    from ..background import BackgroundWriter
    from ..clip.processing import ZSADImageProcessor
    from ..data.loader import image_file_loader
    from ..modeling_outputs import LABELS
    from ..report import DetectReport

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
    if args.class_name:
        if not model.class_aware:
            raise CommandError(f"--class-name: {settings_model(args)} has object-agnostic prompts, which name no class; "
                               "use a class-aware model (zero-shot-clip, winclip, an AdaCLIP checkpoint) or drop --class-name")
        model.set_class_names([args.class_name])
    if args.normal_references:
        set_reference_folder(model, args.normal_references, size, args.class_name)
    if args.save_masks and model.config.pixel_threshold is None:
        raise CommandError(f"--save-masks: {settings_model(args)} has no pixel threshold; set one with zsad calibrate "
                           "(or save the maps with --save-maps and threshold them yourself)")
    settings = _detect_settings(args, size)
    main_process = state is None or state.is_main_process
    if state is not None:
        state.wait_for_everyone()  # the main process has checked and claimed --out
    if not args.scores_only:
        (out_dir / "overlays").mkdir(exist_ok=True)
    names = dict(zip(paths, overlay_names(paths)))
    report = DetectReport(out_dir, map_scale=args.map_scale, title=f"zsad detect: {settings['model']}",
                          details=[f"image threshold: {model.config.image_threshold}"])

    done = _finished_rows(out_dir, settings) if args.resume else {}
    rows = {str(p): done[str(p)] for p in paths if str(p) in done}
    for row in rows.values():
        if row["status"] == "ok" and not args.scores_only:
            report.add_finished(row["image"], float(row["score"]), row.get("label") or None, row["overlay"])
    if main_process:
        write_text_atomic(out_dir / "scores.json", json.dumps({"settings": settings, "complete": False}, indent=2))
        _write_rows(out_dir / "scores.csv", list(rows.values()))  # finished rows first; new ones are appended
    todo = [p for p in paths if str(p) not in rows]
    if state is not None:
        todo = todo[state.process_index :: state.num_processes]  # this process's share; rows are merged below
    failures: list[str] = []

    def record(row: dict, handle, writer) -> None:
        rows[row["image"]] = row
        if writer is not None:  # one process: scores.csv grows as images finish (what --resume reads)
            writer.writerow(row)
            handle.flush()

    def write_files(path, image, size, anomaly_map, score, label) -> None:
        """On the background writer's pool: an image's map files and panel."""
        save_map_files(out_dir, names[path], anomaly_map, size[::-1], processor, args, model.config.pixel_threshold)
        if not args.scores_only:
            report.add(path, image, anomaly_map, score, label, (Path("overlays") / names[path]).as_posix())

    def ok_row(path, score, label) -> dict:
        return {"image": str(path), "status": "ok", "score": repr(score), "label": label or "",
                "overlay": "" if args.scores_only else (Path("overlays") / names[path]).as_posix(), "message": ""}

    loader = image_file_loader(todo, processor, args.batch_size, max_side=MAX_OVERLAY_SIDE, keep_images=not args.scores_only,
                               num_workers=args.num_workers, device=device)
    try:
        with open(out_dir / "scores.csv", "a", newline="", encoding="utf-8") if state is None else contextlib.nullcontext() as handle, \
                progress_bar(total=len(paths) if state is None else len(todo), initial=len(rows), desc="zsad detect",
                             unit="img", disable=True if args.quiet or not main_process else None) as progress, \
                BackgroundWriter() as background:
            writer = csv.DictWriter(handle, fieldnames=SCORE_FIELDS) if handle is not None else None
            for batch in loader:
                kept = [item for item in batch["items"] if item["error"] is None]
                for item in batch["items"]:
                    if item["error"] is not None:
                        failures.append(item["error"])
                        row = {"image": str(item["path"]), "status": "unreadable", "score": "", "label": "", "overlay": "",
                               "message": item["error"]}
                        background.submit(commit=lambda row=row: record(row, handle, writer))
                if kept:
                    pixels = batch["pixel_values"].to(device, model.dtype, non_blocking=True)
                    with torch.inference_mode():
                        output = model(pixel_values=pixels, categories=args.class_name)  # one class for all, or None
                    scores = output.pred_scores.float().cpu().tolist()
                    labels = [None] * len(kept) if output.pred_labels is None else [LABELS[i] for i in output.pred_labels.tolist()]
                    for item, score, label, anomaly_map in zip(kept, scores, labels, output.anomaly_maps.float().cpu()):
                        # The files on the pool; the row, which says they exist, after them and in input order.
                        background.submit(lambda a=(item["path"], item["image"], item["size"], anomaly_map, score, label):
                                          write_files(*a),
                                          commit=lambda r=ok_row(item["path"], score, label): record(r, handle, writer))
                progress.update(len(batch["items"]))
    except KeyboardInterrupt:
        print(f"zsad detect: interrupted after {len(rows)} of {len(paths)} image(s); to continue, run the same "
              "command with --resume", file=sys.stderr)
        return 130

    if state is not None:  # every process's rows, panels and failures to the main process
        from accelerate.utils import gather_object

        shares = gather_object([(rows, report.items, failures)])
        if not main_process:
            return 0
        for share_rows, share_items, share_failures in shares[1:]:
            rows.update(share_rows)
            report.items.extend(share_items)
            failures.extend(share_failures)
    ordered = [rows[str(p)] for p in paths]
    position = {str(p): index for index, p in enumerate(paths)}
    report.items.sort(key=lambda item: position[item.image])  # input order, however the work was shared out
    _write_rows(out_dir / "scores.csv", ordered)
    report_path = report.finish() if report.items else None
    results = [{**row, "score": float(row["score"]) if row["status"] == "ok" else None} for row in ordered]
    summary = {"settings": settings, "complete": True, **settings, "image_threshold": model.config.image_threshold,
               "results": results}
    write_text_atomic(out_dir / "scores.json", json.dumps(summary, indent=2))
    scored = sum(row["status"] == "ok" for row in ordered)
    if not scored:
        reason = f": {failures[0]}" if len(paths) == 1 and failures else " (see scores.csv)"
        raise CommandError(f"none of the {len(paths)} image(s) could be read{reason}")
    for message in failures:
        print(f"warning: skipped unreadable image: {message}", file=sys.stderr)
    skipped = len(paths) - scored
    resumed = f" ({len(done)} from the earlier run)" if done else ""
    where = f", report: {report_path}" if report_path else ""
    print(f"scored {scored} image(s){resumed}{f', skipped {skipped} unreadable' if skipped else ''}; results in {out_dir}{where}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="score images and write anomaly heat maps",
        description="Score images for anomalies. Without --model, runs the registry's trained default "
        f"({default_model_name()}, downloaded and verified on first use; zsad models lists the others).",
    )
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", default="zsad_output", help="output folder, empty or new (default: zsad_output)")
    add_model_options(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out: images already scored there are skipped")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto = bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--map-scale", choices=MAP_SCALES, default="absolute",
                        help="heat-map colours: absolute probabilities (default), each map's own min..max (image), "
                        "or one min..max shared by the run (run)")
    parser.add_argument("--normal-references", metavar="DIR",
                        help="folder of normal images of the inspected class: adds the few-shot memory map (WinCLIP+ style)")
    parser.add_argument("--class-name", metavar="NAME",
                        help="what the images show (e.g. metal_nut, written 'metal nut' in the prompts): class-aware "
                        "models (zero-shot-clip, winclip, AdaCLIP) prompt with it instead of 'object'")
    parser.add_argument("--save-maps", choices=["npy", "png"],
                        help="also save each anomaly map at its image's size: maps/<name>.npy (float16) or "
                        "maps/<name>.png (16-bit, probability x 65535)")
    parser.add_argument("--save-masks", action="store_true",
                        help="also save each binary mask (map >= the model's pixel threshold, from zsad calibrate) "
                        "at its image's size: masks/<name>.png")
    parser.add_argument("--scores-only", action="store_true",
                        help="write scores.csv and scores.json (and --save-maps / --save-masks) only: no panels, thumbnails "
                        "or report, which cost more than the model's forward for a small backbone (large batch jobs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_num_workers_flag(parser)
    parser.set_defaults(func=run)
