"""Model cards of imported released checkpoints: source, licence, training protocol and the authors'
reported numbers as `model-index` results (not measured by zsad)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from ..model_card import build_model_card
from .reported_results import METRIC_NAMES
from .variants import ReleasedVariant


def model_class(kind: str) -> type[PreTrainedModel]:
    """The zsad model class of a released method (`anomalyclip`, `adaclip`, `crane`, `crane+`)."""
    from ... import AdaCLIPModel, AnomalyCLIPModel, CraneModel

    return {"anomalyclip": AnomalyCLIPModel, "adaclip": AdaCLIPModel, "crane": CraneModel, "crane+": CraneModel}[kind]


def released_variant_card(variant: ReleasedVariant, repo_id: str):
    """The model card of `variant` on the default backbone (openai/clip-vit-large-patch14-336), built on
    the meta device: no weights needed."""
    cls = model_class(variant.kind)
    config = cls.config_class(**variant.config_settings(24))
    with torch.device("meta"):
        model = cls(config)
    return build_model_card(model, **released_card_kwargs(variant, model, repo_id))

def released_card_kwargs(variant: ReleasedVariant, model: PreTrainedModel, repo_id: str | None = None) -> dict[str, Any]:
    """`build_model_card` arguments for an imported checkpoint: license, source, protocol, reported numbers."""
    from huggingface_hub import EvalResult

    source = variant.source
    rows = variant.reported_rows()
    image_metrics, pixel_metrics = variant.metric_names
    eval_results = []
    markdown = []
    for row in rows:
        cells = []
        for level, values, metrics, task in (
            ("image", row.image, image_metrics, "image-classification"),
            ("pixel", row.pixel, pixel_metrics, "image-segmentation"),
        ):
            if values is None:
                cells.append("-")
                continue
            cells.append(", ".join(f"{v:.1f}" for v in values))
            for metric, value in zip(metrics, values):
                eval_results.append(EvalResult(
                    task_type=task,
                    task_name=f"{level}-level zero-shot anomaly {'detection' if level == 'image' else 'segmentation'}",
                    dataset_type=row.dataset.lower().replace(" ", "-"),
                    dataset_name=row.dataset,
                    dataset_split="test",
                    metric_type=metric,
                    metric_name=f"{level} {METRIC_NAMES[metric]} (reported by the authors)",
                    metric_value=value,
                    verified=False,
                    source_name=f"{source.table_name}; reported by the authors, not measured by zsad",
                    source_url=source.paper_url,
                ))
        markdown.append(f"| {row.dataset} | {cells[0]} | {cells[1]} |")
    if rows:
        image_header = ", ".join(METRIC_NAMES[m] for m in image_metrics)
        pixel_header = ", ".join(METRIC_NAMES[m] for m in pixel_metrics)
        results = (
            f"Reported by the authors ({source.table_name}), **not measured by zsad**: the numbers the authors "
            f"published for this checkpoint, in %.\n\n| dataset | image ({image_header}) | pixel ({pixel_header}) |\n"
            "|---|---|---|\n" + "\n".join(markdown)
        )
        if variant.kind == "crane+" and not variant.medical:
            results += (
                "\n\nThe authors' script tests DAGM with `soft_mean=True` (the other industrial sets with "
                "`soft_mean=False`, this checkpoint's setting): set `model.config.soft_mean = True` for DAGM."
            )
    elif variant.kind == "adaclip":
        results = (
            "The AdaCLIP repository shows its results as table images; no first-party numbers could be "
            "read to record here, and zsad has not measured this checkpoint."
        )
    else:
        results = (
            f"The authors' test script evaluates epoch {' or '.join(map(str, variant.evaluated_epochs))}"
            f" of this training run; this file is epoch {variant.epoch}, so no published numbers apply to it."
        )
    extra = ""
    if variant.kind in ("crane", "crane+"):
        extra = (
            "\n\nThe prompts are static at test time (the released test script evaluates without the image "
            "token); `prompt_conditioning='train'` inserts it in training mode only."
        )
    if variant.kind == "adaclip":
        extra = (
            "\n\nAdaCLIP prompts with the category name: call `model.set_class_names([...])` and pass "
            "`categories=` to the forward (the imported config holds the single name `object`)."
        )
    provenance = (
        f"Converted by `zsad import-checkpoint {variant.kind}` from the weights released by the "
        f"{source.name.rstrip('+')} authors ({source.repository}, commit {source.commit}, {source.license.upper()} license), "
        f"{variant.training_protocol}"
        + (f" (epoch {variant.epoch})" if variant.epoch is not None else "")
        + ". The adapter tensors are the released values, unchanged (fp32, not rounded to fp16)."
        + extra
    )
    return {
        "repo_id": repo_id,
        "model_name": repo_id or variant.slug,
        "training_data": f"{variant.training_protocol} (the authors' protocol)",
        "results_markdown": results,
        "license": source.license,
        "eval_results": eval_results or None,
        "provenance": provenance,
        "datasets": None,
    }
