#!/usr/bin/env python
"""Evaluate a zsad model per category on one or more datasets, on any number of processes.

    accelerate launch examples/evaluate.py --model out/anomalyclip-visa --datasets data/mvtec_ad --output_dir eval/

Without --model, the registry's trained default (crane-mvtec, as `zsad detect`) runs. Writes, per dataset,
`<output_dir>/<dataset>/metrics.json` and `metrics.md` (image AUROC/AP/F1-max, pixel AUROC/AP/F1-max/AUPRO
per category and their macro average), and optional heat-map samples. Single-process equivalent:
`zsad evaluate`.
"""

import sys

from zsad.commands.common import (
    ArgumentParser,
    add_output_flags,
    image_size,
    non_negative_int,
    positive_int,
    prepare_output_dir,
    run_command,
)
from zsad.commands.loading import load_detector
from zsad.hub.released.registry import default_model_name
from zsad.evaluation import evaluate_datasets, evaluation_accelerator


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, fromfile_prefix_chars="@",
                            hyphen_aliases=True)
    parser.add_argument("--model", help="a registry name (zsad models; default: crane-mvtec; zero-shot-clip is the "
                        "training-free ZeroShotCLIP), a zsad checkpoint folder or a Hub id")
    parser.add_argument("--backbone", help="the CLIP backbone the model runs on (e.g. a local copy)")
    parser.add_argument("--datasets", nargs="+", required=True, help="evaluation datasets (converted folders, parquet, Hub ids)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--categories", nargs="+", help="only these categories")
    parser.add_argument("--image_size", type=image_size, help="default: the model's")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="per process")
    parser.add_argument("--aupro", choices=["exact", "binned", "cflow"], default="exact",
                        help="AUPRO variant (exact = official MVTec definition; cflow = paper-comparable)")
    parser.add_argument("--report_cflow", action="store_true", help="with --aupro exact, also report the cflow AUPRO")
    parser.add_argument("--heatmaps_per_category", type=non_negative_int, default=0,
                        help="save this many overlays per category, anomalous and normal images alike")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--output_dir", required=True, help="an empty or new folder (see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")
    add_output_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return run_command("evaluate.py", lambda: evaluate(args), debug=args.debug, verbose=args.verbose)


def evaluate(args):
    prepare_output_dir(args.output_dir, flag="--output_dir", overwrite=args.overwrite)
    # even_batches=False: no sample is duplicated to pad the last batch, so the metrics stay exact.
    accelerator = evaluation_accelerator(args.mixed_precision)
    model = load_detector(args.model, args.backbone, None)
    evaluate_datasets(
        model, args.datasets, output_dir=args.output_dir, split=args.split,
        categories=args.categories, image_size=args.image_size, batch_size=args.batch_size,
        aupro_mode=args.aupro, report_cflow=args.report_cflow, heatmaps_per_category=args.heatmaps_per_category,
        accelerator=accelerator, model_name=args.model or default_model_name(), log=accelerator.print,
    )


if __name__ == "__main__":
    sys.exit(main())
