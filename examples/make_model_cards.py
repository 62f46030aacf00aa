"""Regenerate `model_cards/<variant>.md` from the shared template (zsad/hub/templates/model_card.md).

    python examples/make_model_cards.py [--out model_cards]

One card per published variant: each method on its default backbone (openai/clip-vit-large-patch14-336;
WinCLIP: openai/clip-vit-base-patch16), with its default configuration, and every checkpoint that can be
built from the authors' released weights (`zsad import-checkpoint`; e.g.
crane-vit-large-patch14-336-trained-on-mvtec.md), with the configuration of the authors' test script and
their reported numbers. Models are built on the meta device, so no weights are needed.
"""

import argparse
from pathlib import Path

import torch

import zsad
from zsad.hub.released.cards import released_variant_card
from zsad.hub.released.variants import RELEASED_VARIANTS
from zsad.hub.model_card import build_model_card

def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model_class in zsad.MODEL_CLASSES.items():
        with torch.device("meta"):
            model = model_class(model_class.config_class())
        variant = model.config.backbone_name_or_path.split("/")[-1].removeprefix("clip-")
        repo_id = f"zsad/{name.replace('_', '-')}-{variant}"
        path = out_dir / f"{repo_id.split('/')[1]}.md"
        build_model_card(model, repo_id=repo_id).save(path)
        written.append(path)
    for variant in RELEASED_VARIANTS:
        path = out_dir / f"{variant.slug}.md"
        released_variant_card(variant, f"zsad/{variant.slug}").save(path)
        written.append(path)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "model_cards")
    for path in generate(parser.parse_args().out):
        print(f"wrote {path}")
