"""Model cards for zsad checkpoints: YAML metadata + usage, results, limitations."""

from __future__ import annotations

import os
from pathlib import Path
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedModel

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


def build_model_card(
    model: PreTrainedModel,
    *,
    repo_id: str | None = None,
    training_data: str | None = None,
    results_markdown: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    eval_results: list[EvalResult] | None = None,
    model_name: str | None = None,
    provenance: str | None = None,
) -> ModelCard:
    """A `ModelCard` describing `model` (method, backbone, adapters, usage, results, citation).

    `license` is the license of the weights (e.g. the source license of imported weights);
    `eval_results` become the `model-index` (named `model_name`, default `repo_id`); `provenance` is a
    paragraph on where the weights come from.
    """
    info = model.card_info
    backbone = model.config.backbone_name_or_path
    title = repo_id or model_name or f"zsad {info['name']}"
    card_data = ModelCardData(
        library_name="transformers",
        base_model=backbone if _is_hub_id(backbone) else None,
        pipeline_tag="image-segmentation",
        license=license,
        tags=["anomaly-detection", "zero-shot-anomaly-detection", "clip", "zsad", info["tag"]],
        datasets=datasets,
        metrics=["roc_auc", "average_precision", "aupro"],
        model_name=title if eval_results else None,
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        provenance=provenance,
        model_name=title,
        method_name=info["name"],
        summary=info["summary"],
        paper=info["paper"],
        citation=info["citation"],
        backbone=backbone,
        save_backbone=model.config.save_backbone,
        num_trainable_parameters=f"{model.num_trainable_parameters():,}",
        image_size=model.config.image_size,
        training_data=training_data or info.get("training_data", "not recorded"),
        repo_id=repo_id or "<this repository>",
        results=results_markdown or "No evaluation results recorded for this checkpoint yet.",
    )


def write_model_card(model: PreTrainedModel, save_directory: str | os.PathLike, *, overwrite: bool = False, **kwargs) -> Path:
    """Write `README.md` into `save_directory` (kept as is if present and not `overwrite`)."""
    path = Path(save_directory) / "README.md"
    if overwrite or not path.exists():
        build_model_card(model, **kwargs).save(path)
    return path
