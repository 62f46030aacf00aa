"""Turn a folder of the authors' released weights into push-ready zsad model folders with generated cards.

    python examples/publish_released.py RELEASED_DIR OUT_DIR [--backbone ID_OR_DIR] [--org zsad]
        [--dino-backbone ID_OR_DIR] [--adaclip FILE=TRAINED_ON ...]

RELEASED_DIR is searched for the files the reference test scripts evaluate, in the reference repositories'
own folder names:
- Crane / Crane+: `trained_on_{mvtec,visa}_{crane,cranep}/epoch_5.pth`, and `trained_on_mvtec_cranep/epoch_1.pth`
  (Crane+ on the medical datasets);
- AnomalyCLIP: `9_12_4_multiscale_visa/epoch_15.pth` (trained on MVTec AD) and `9_12_4_multiscale/epoch_15.pth`
  (trained on VisA).
AdaCLIP's downloads do not say reliably what they were trained on (their names and the README disagree),
so each is named explicitly: `--adaclip pretrained_mvtec_colondb.pth=mvtec+colondb`.

Every file becomes `OUT_DIR/<variant>/` (e.g. `crane-vit-large-patch14-336-trained-on-mvtec/`) written by
`zsad import-checkpoint`, its card naming the repository `<org>/<variant>`; upload one with
`zsad push OUT_DIR/<variant> <org>/<variant>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zsad.hub.released.importer import import_released_checkpoint
from zsad.hub.released.safe_loading import CheckpointImportError
from zsad.hub.released.variants import ReleasedVariant
from zsad.clip import DEFAULT_BACKBONE

# (method, training set, epoch) -> path under RELEASED_DIR, in the reference repositories' layout.
RELEASED_PATHS = {
    ("crane", "mvtec", 5): "trained_on_mvtec_crane/epoch_5.pth",
    ("crane", "visa", 5): "trained_on_visa_crane/epoch_5.pth",
    ("crane+", "mvtec", 5): "trained_on_mvtec_cranep/epoch_5.pth",
    ("crane+", "mvtec", 1): "trained_on_mvtec_cranep/epoch_1.pth",
    ("crane+", "visa", 5): "trained_on_visa_cranep/epoch_5.pth",
    ("anomalyclip", "mvtec", 15): "9_12_4_multiscale_visa/epoch_15.pth",
    ("anomalyclip", "visa", 15): "9_12_4_multiscale/epoch_15.pth",
}


def find_released(root: Path) -> list[tuple[str, Path, str | None]]:
    """(method, file, training set) of every released file found under `root` (at any depth)."""
    found = []
    for (kind, trained_on, _), relative in RELEASED_PATHS.items():
        matches = sorted(root.rglob(relative))
        found.extend((kind, path, trained_on) for path in matches[:1])
    return found


def publish(
    root: Path,
    out: Path,
    *,
    backbone: str,
    org: str,
    dino_backbone: str | None = None,
    adaclip: list[tuple[Path, str]] = (),
) -> list[Path]:
    """Import every released file found under `root` (plus the named AdaCLIP files) into `out/<variant>`."""
    jobs = find_released(root) + [("adaclip", path, trained_on) for path, trained_on in adaclip]
    if not jobs:
        raise CheckpointImportError(f"{root}: no released checkpoint found (see this script's docstring for the expected names)")
    written = []
    for kind, path, trained_on in jobs:
        variant = ReleasedVariant(kind, trained_on, None if kind == "adaclip" else int(path.stem.split("_")[1]))
        target = out / variant.slug
        result = import_released_checkpoint(
            kind, path, target, backbone=backbone, trained_on=trained_on, dino_backbone=dino_backbone,
            repo_id=f"{org}/{variant.slug}",
        )
        for line in result.warnings:
            print(f"warning: {line}", file=sys.stderr)
        print(f"{path} -> {target}")
        written.append(target)
    return written


def _adaclip_entry(text: str) -> tuple[Path, str]:
    file, separator, trained_on = text.rpartition("=")
    if not separator or not file:
        raise argparse.ArgumentTypeError(f"expected FILE=TRAINED_ON (e.g. w.pth=mvtec+colondb), got {text!r}")
    return Path(file), trained_on


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("released_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--dino-backbone", default=None)
    parser.add_argument("--org", default="zsad", help="Hub organisation named in the cards (default: zsad)")
    parser.add_argument("--adaclip", type=_adaclip_entry, action="append", default=[], metavar="FILE=TRAINED_ON")
    args = parser.parse_args(argv)
    try:
        publish(args.released_dir, args.out_dir, backbone=args.backbone, org=args.org,
                dino_backbone=args.dino_backbone, adaclip=args.adaclip)
    except (CheckpointImportError, OSError) as error:
        print(f"publish_released.py: error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
