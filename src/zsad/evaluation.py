"""Evaluation over `zsad.data` batches with the mergeable metric accumulators (per category + macro).

Used by `examples/evaluate.py` (any number of Accelerate processes) and `zsad evaluate`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .file_modes import write_text_atomic
from .metrics import AnomalyMetrics, format_markdown
from .training import model_inputs


def evaluation_accelerator(mixed_precision: str | None = None):
    """The `accelerate.Accelerator` an evaluation runs under: `even_batches=False`, so that no image is
    repeated to even out the processes' last batches (the gathered metrics would count it twice)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(mixed_precision=mixed_precision, dataloader_config=DataLoaderConfiguration(even_batches=False))


@torch.inference_mode()
def evaluate_model(
    model,
    dataloader: Iterable[dict[str, Any]],
    *,
    metrics: AnomalyMetrics | None = None,
    accelerator=None,
    heatmap_dir: str | os.PathLike | None = None,
    max_heatmaps_per_category: int = 0,
    show_progress: bool = True,
    original_images=None,
    results_log: ResultsLog | None = None,
) -> dict[str, Any]:
    """Run `model` over `dataloader` and return `AnomalyMetrics.compute()` of all processes together.

    With a `results_log`, the batches it holds from an interrupted run are counted first and every new
    batch's results are saved as it is scored (the dataloader then holds only the images not yet scored).

    With an `accelerator`, the dataloader must be prepared by it (use `even_batches=False`) and the
    accumulators of all processes are merged; every process gets the same results. Heat-map overlays
    of `max_heatmaps_per_category` images of each category go to `heatmap_dir` (main process): the first
    anomalous images (half, rounded up) and the first normal ones, so anomalies are always shown; drawn on
    the original image (`original_images(image_id)`, when given) at its own size, else on the input.
    """
    from .background import BackgroundWriter
    from .progress import progress

    metrics = metrics if metrics is not None else AnomalyMetrics()
    main_process = accelerator is None or accelerator.is_main_process
    saved: dict[tuple[str, int], int] = {}
    model.eval()
    parameter = next(model.parameters())
    for output, batch in results_log.load() if results_log is not None else ():
        metrics.update(output, batch)
    with BackgroundWriter() as writer:  # heat-map panels are drawn and encoded beside the forward passes
        for batch in progress(dataloader, desc="evaluate", unit="batch", disable=not (show_progress and main_process)):
            inputs = model_inputs(batch, with_targets=False)
            inputs["pixel_values"] = inputs["pixel_values"].to(parameter.device, parameter.dtype, non_blocking=True)
            output = model(**inputs)
            metrics.update(output, batch)
            if results_log is not None:
                results_log.save(output, batch)
            if heatmap_dir is not None and max_heatmaps_per_category > 0:
                on_cpu = {"pred_scores": output.pred_scores.float().cpu(), "anomaly_maps": output.anomaly_maps.float().cpu(),
                          "pred_labels": None if output.pred_labels is None else output.pred_labels.cpu()}
                writer.submit(commit=lambda batch=batch, on_cpu=on_cpu: _save_heatmaps(  # in order: quotas per category
                    batch, on_cpu, Path(heatmap_dir), saved, max_heatmaps_per_category, original_images))
    if accelerator is not None:
        metrics = metrics.gather(accelerator)
    return metrics.compute()


class ResultsLog:
    """The results of one dataset's evaluation, saved batch by batch as they are scored
    (`<folder>/partial/<n>.safetensors`: scores, maps, labels, masks, categories, image ids), so that
    `zsad evaluate --resume` continues an interrupted run and gives exactly the metrics of an uninterrupted
    one (the batches already scored are replayed into the metrics, the rest are scored in the same
    batches). Removed once the dataset's metrics are written."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder) / "partial"

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("*.safetensors"), key=lambda p: int(p.stem)) if self.folder.is_dir() else []

    def num_scored(self) -> int:
        """How many rows the saved batches hold: the dataloader's first rows (it runs in order)."""
        from safetensors import safe_open

        count = 0
        for part in self.parts():
            with safe_open(str(part), framework="pt") as handle:
                count += len(json.loads(handle.metadata()["image_ids"]))
        return count

    def load(self):
        """`(output, batch)` pairs of the saved batches, in order."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        for part in self.parts():
            with safe_open(str(part), framework="pt") as handle:
                metadata = handle.metadata()
            tensors = load_file(str(part))
            output = {"pred_scores": tensors["pred_scores"], "anomaly_maps": tensors.get("anomaly_maps")}
            batch = {"labels": tensors["labels"], "masks": tensors.get("masks"), "has_mask": tensors["has_mask"].bool(),
                     "categories": json.loads(metadata["categories"]), "image_ids": json.loads(metadata["image_ids"])}
            yield output, batch

    def save(self, output, batch) -> None:
        from .file_modes import save_safetensors

        self.folder.mkdir(parents=True, exist_ok=True)
        index = len(self.parts())
        tensors = {"pred_scores": output.pred_scores.detach().float().cpu(), "labels": batch["labels"].cpu(),
                   "has_mask": batch["has_mask"].to(torch.uint8).cpu()}
        if output.anomaly_maps is not None:
            tensors["anomaly_maps"] = output.anomaly_maps.detach().float().cpu()
            tensors["masks"] = (batch["masks"] > 0.5).to(torch.uint8).cpu()
        metadata = {"categories": json.dumps(list(batch["categories"])), "image_ids": json.dumps(list(batch["image_ids"]))}
        partial = self.folder / f".{index}.tmp"
        save_safetensors({k: v.contiguous() for k, v in tensors.items()}, partial, metadata=metadata)
        os.replace(partial, self.folder / f"{index}.safetensors")  # a part is complete or absent

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def original_image_lookup(dataset):
    """`image_id -> RGB PIL image` from the untransformed rows (None for an unknown id): the few images whose
    panels evaluate draws, at their own size."""
    from .clip.processing import to_rgb
    from .data.transforms import as_pil

    rows: dict[str, int] = {}

    def lookup(image_id: str):
        if not rows:
            rows.update({name: i for i, name in enumerate(dataset["image_id"]) if name})
        index = rows.get(image_id)
        return None if index is None else to_rgb(as_pil(dataset[index]["image"], image_id))

    return lookup


def heatmap_quota(limit: int, label: int) -> int:
    """Overlays per category and label: anomalous images get half of `limit`, rounded up."""
    return (limit + 1) // 2 if label == 1 else limit // 2


def _save_heatmaps(batch, output, folder: Path, saved: dict[tuple[str, int], int], limit: int, original_images=None) -> None:
    """Panels (image | overlay with the ground-truth outline | colour bar, with score and decision), per
    category and label up to its quota, on the original image at its own size (`original_images`), else
    on the de-normalised input. Absolute probability colours."""
    from PIL import Image

    from .clip.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from .modeling_outputs import LABELS
    from .visualize import anomaly_panel

    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    has_mask = batch.get("has_mask")
    for index, category in enumerate(batch["categories"]):
        key = (category, int(batch["labels"][index]))
        if saved.get(key, 0) >= heatmap_quota(limit, key[1]):
            continue
        image_id = batch.get("image_ids", [""] * len(batch["categories"]))[index]
        image = original_images(image_id) if original_images is not None and image_id else None
        if image is None:
            pixels = batch["pixel_values"][index].float().cpu() * std + mean
            image = Image.fromarray((pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        label = "anomaly" if int(batch["labels"][index]) == 1 else "normal"
        name = batch.get("image_ids", [""] * len(batch["categories"]))[index] or f"{saved.get(key, 0):03d}"
        target = folder / category / f"{label}_{Path(name).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with_mask = "masks" in batch and (has_mask is None or bool(has_mask[index]))
        decision = None if output["pred_labels"] is None else LABELS[int(output["pred_labels"][index])]
        anomaly_panel(
            image,
            output["anomaly_maps"][index],
            score=float(output["pred_scores"][index]),
            label=decision,
            ground_truth=batch["masks"][index] if with_mask else None,
            title=f"{Path(name).name} (ground truth: {label})",
        ).save(target)
        saved[key] = saved.get(key, 0) + 1


def _batches_with_references(model, dataset, processor, batch_size: int, folder: Path, num_workers: int | None):
    """One category at a time: `set_normal_references` with `folder/<category>/`, then its batches."""
    from .data import DataError
    from .data.loader import anomaly_dataloader
    from .few_shot import reference_images

    for category in sorted(set(dataset["category"])):
        try:
            references = reference_images(folder / category, processor.image_size)
        except ValueError as error:
            raise DataError(f"normal references of {category!r}: {error}", folder / category) from error
        model.set_normal_references(references.to(model.device, model.dtype), category if model.class_aware else None)
        subset = dataset.filter(lambda name: name == category, input_columns="category")
        yield from anomaly_dataloader(subset, processor, batch_size, num_workers=num_workers, device=model.device)
    model.clear_normal_references()


def write_report(results: dict[str, Any], output_dir: str | os.PathLike, *, title: str, extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write `metrics.json` and `metrics.md` (per-category table + macro average) into `output_dir`."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "metrics.json"
    payload = _json_ready({"title": title, **(extra or {}), **results})
    write_text_atomic(json_path, json.dumps(payload, indent=2, allow_nan=False))
    markdown_path = folder / "metrics.md"
    write_text_atomic(markdown_path, f"# {title}\n\n{format_markdown(results)}\n")
    return json_path, markdown_path


def _json_ready(value):
    """NaN (undefined metric) -> null, recursively; JSON has no NaN."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def evaluate_datasets(
    model,
    sources: list[str],
    *,
    output_dir: str | os.PathLike,
    split: str | None = "test",
    categories: list[str] | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
    aupro_mode: str = "exact",
    report_cflow: bool = False,
    heatmaps_per_category: int = 0,
    accelerator=None,
    model_name: str | None = None,
    normal_references: str | os.PathLike | None = None,
    log=print,
    resumable: bool = False,
    loading_options: dict[str, Any] | None = None,
    num_workers: int | None = None,
    max_memory: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on every dataset in `sources`; write `<output_dir>/<name>/metrics.{json,md}`.

    Class-aware models (AdaCLIP) get prompts for every category of the datasets first. With an
    `accelerator`, the model and each dataloader are prepared here and the metrics of all processes
    are merged. With `normal_references` (a folder), each category is scored few-shot with the
    images in `normal_references/<category>/` (docs/few_shot.md; one process only). `resumable` saves
    each batch's results as it goes (`ResultsLog`) and continues from those an interrupted run left in
    `output_dir` (one process, without normal references). `loading_options` go to
    `load_anomaly_dataset` (column, split and label mappings, `preset`). Images are decoded in
    `num_workers` `DataLoader` workers (None: `zsad.data.loader.default_num_workers()`); `max_memory` bytes
    of maps stay in memory for the exact metrics, the rest is spilled to disk (`AnomalyMetrics`). Returns
    `{source: results}`.
    """
    from .clip.processing import ZSADImageProcessor
    from .data import load_anomaly_dataset
    from .data.loader import anomaly_dataloader

    if normal_references is not None and accelerator is not None:
        raise ValueError("evaluation with normal references runs in one process (no accelerator)")
    if resumable and accelerator is not None:
        raise ValueError("a resumable evaluation runs in one process (no accelerator)")
    datasets = {
        source: load_anomaly_dataset(source, split=split, categories=categories, **(loading_options or {}))
        for source in sources
    }
    if model.class_aware:
        model.set_class_names(sorted({name for ds in datasets.values() for name in ds["category"]}))
    processor = ZSADImageProcessor(image_size=image_size or model.config.image_size)
    model_name = model_name or type(model).__name__
    main_process = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        model = accelerator.prepare(model)
    all_results = {}
    for source, dataset in datasets.items():
        folder = Path(output_dir) / (Path(source).name or source.replace("/", "__"))
        # Resumable in the plain pass, whose batches follow the rows in order (not per category with references).
        results_log = ResultsLog(folder) if resumable and normal_references is None else None
        done = results_log.num_scored() if results_log is not None else 0
        if done:
            log(f"{source}: {done} image(s) already scored by the interrupted run")
            dataset = dataset.select(range(done, len(dataset)))
        if normal_references is not None:
            dataloader = _batches_with_references(model, dataset, processor, batch_size, Path(normal_references), num_workers)
        else:
            dataloader = anomaly_dataloader(dataset, processor, batch_size, num_workers=num_workers,
                                            device=next(model.parameters()).device)
        if accelerator is not None:
            dataloader = accelerator.prepare(dataloader)
        results = evaluate_model(
            model,
            dataloader,
            metrics=AnomalyMetrics(aupro_mode, report_cflow=report_cflow, undefined="nan",
                                   max_memory=max_memory if aupro_mode != "binned" else None),
            accelerator=accelerator,
            heatmap_dir=folder / "heatmaps" if main_process else None,
            max_heatmaps_per_category=heatmaps_per_category,
            original_images=original_image_lookup(dataset) if heatmaps_per_category else None,
            results_log=results_log,
        )
        if main_process:
            title = f"{model_name} on {source}" + (f" ({split})" if split else "")
            extra = {"model": model_name, "dataset": source, "split": split, "aupro_mode": aupro_mode}
            json_path, markdown_path = write_report(results, folder, title=title, extra=extra)
            log(markdown_path.read_text(encoding="utf-8"))
            log(f"wrote {json_path} and {markdown_path}")
        if results_log is not None:
            results_log.clear()
        all_results[source] = results
    return all_results
