"""`zsad benchmark`: released models on datasets with their authors' protocol, next to the papers' numbers."""

from __future__ import annotations

import argparse

from .common import (
    CommandError,
    add_output_flags,
    positive_int,
    prepare_output_dir,
    resolve_device,
)
from .loading import check_sources, load_detector


def run(args: argparse.Namespace) -> int:
    from ..benchmark import benchmark_model, parse_datasets, write_tables
    from ..hub.released.registry import get_entry, registry

    try:
        datasets = parse_datasets(args.dataset)
    except ValueError as error:
        raise CommandError(str(error)) from None
    unknown = [name for name in args.model if get_entry(name) is None]
    if unknown:
        raise CommandError(f"--model {unknown[0]!r} is not a released model; benchmark compares released models with "
                           f"their papers: use one of {', '.join(registry())} (zsad models)")
    out_dir = prepare_output_dir(args.out, flag="--out", overwrite=args.overwrite)
    for name in args.model:
        check_sources(name, args.backbone)
    device = resolve_device(args.device)
    rows, notes = [], []
    for name in args.model:
        entry = get_entry(name)
        model = load_detector(name, args.backbone, None).to(device).eval()
        reported = {row.dataset: row for row in entry.variant.reported_rows()}
        found, skipped = benchmark_model(model, name, datasets, out_dir, trained_on=entry.trained_on, reported=reported,
                                         batch_size=args.batch_size, image_size=args.image_size, categories=args.categories)
        rows += found
        notes += [f"{name} was trained on {key}: left out (zero-shot protocol)" for key in skipped]
        del model
    if not rows:
        raise CommandError("every --dataset is a training set of every --model (zero-shot protocol): nothing to evaluate")
    csv_path, md_path = write_tables(rows, out_dir, notes)
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {md_path} and {csv_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="evaluate released models with their authors' protocol beside the papers' numbers",
        description="Evaluate released models (zsad models) on datasets with the authors' zero-shot protocol (a "
        "model's own training data is left out) and write per-category and mean image AUROC, pixel AUROC and "
        "AUPRO (exact, and the papers' 200-threshold variant) beside the numbers the authors report, with the "
        "difference, as benchmark.md and benchmark.csv.",
    )
    parser.add_argument("--model", action="append", required=True, metavar="NAME",
                        help="a released model (zsad models); repeat for several")
    parser.add_argument("--dataset", action="append", required=True, metavar="NAME=PATH",
                        help="a dataset of the papers' tables and where it is (anything zsad evaluate reads), "
                        "e.g. mvtec=data/mvtec_ad visa=data/visa mpdd=... headct=...; repeat for several")
    parser.add_argument("--out", default="zsad_benchmark", help="output folder, empty or new (default: zsad_benchmark)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--backbone", help="a local copy of the CLIP backbone (default: the models' own)")
    parser.add_argument("--categories", nargs="+", metavar="NAME", help="evaluate these categories only")
    parser.add_argument("--image-size", type=positive_int, metavar="N", help="input size (default: the model's, 518)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    add_output_flags(parser, suppress_default=True)
    parser.set_defaults(func=run)
