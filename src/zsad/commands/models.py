"""`zsad models`: the models `--model NAME` accepts, from the registry (docs/released_weights.md)."""

from __future__ import annotations

import argparse
import json

from ..hub.released.registry import default_model_name, registry, training_free_models
from .common import add_output_flags


def run(args: argparse.Namespace) -> int:
    from ..hub.released.download import is_cached

    rows = []
    for entry in registry().values():
        means = entry.paper_means()
        rows.append({
            "name": entry.name + (" (default)" if entry.name == default_model_name() else ""),
            "method": entry.variant.source.name,
            "trained on": entry.trained_on_name,
            "size": f"{entry.size / 1e6:.2f} MB" if entry.size else "?",
            "paper image AUROC": f"{means['image_auroc']:.1f}" if "image_auroc" in means else "-",
            "paper pixel AUROC": f"{means['pixel_auroc']:.1f}" if "pixel_auroc" in means else "-",
            "cached": "yes" if is_cached(entry) else "no",
        })
    for entry in training_free_models().values():
        rows.append({"name": entry.name, "method": entry.summary.split(":")[0], "trained on": "-", "size": "-",
                     "paper image AUROC": "-", "paper pixel AUROC": "-", "cached": "-"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = list(rows[0])
    widths = [max(len(column), *(len(row[column]) for row in rows)) for column in columns]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip())
    for row in rows:
        print("  ".join(row[column].ljust(width) for column, width in zip(columns, widths)).rstrip())
    print("\npaper AUROC: the authors' mean over the datasets they report for that very file (none outside its "
          "training data for AdaCLIP); zsad --model NAME downloads, verifies and imports a model on first use")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models --model NAME accepts: the authors' released detectors and the training-free ones",
        description="The registry of named models: method, training data, file size, the authors' reported mean "
        "AUROC, and whether the file is already in the cache.",
    )
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    add_output_flags(parser, suppress_default=True)
    parser.set_defaults(func=run)
