"""Training helpers for `zsad.train` (`zsad train`, `examples/train.py`): models by method name, the method's
optimiser, a resumable deterministic shuffle, adapter-only Accelerate checkpoints, batch -> inputs."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import Sampler

from . import MODEL_CLASSES
from .errors import ZSADWarning
from .file_modes import save_safetensors
from .modeling_base import ZSADPreTrainedModel

ADAPTER_CHECKPOINT_NAME = "adapter_model_{index}.safetensors"


def trainable_methods() -> list[str]:
    return sorted(name for name, cls in MODEL_CLASSES.items() if cls.config_class.training_defaults is not None)


def get_model_class(method: str) -> type[ZSADPreTrainedModel]:
    """The model class of a trainable method (`anomalyclip`, ...); a clear error otherwise."""
    if method not in MODEL_CLASSES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(trainable_methods())}")
    model_class = MODEL_CLASSES[method]
    if model_class.config_class.training_defaults is None:
        raise ValueError(f"{method!r} is training-free; trainable methods: {', '.join(trainable_methods())}")
    return model_class


def parse_config_overrides(items: list[str]) -> dict[str, Any]:
    """`["dino_attention=true", "dense_attention=qq+kk+vv"]` -> config kwargs (JSON values, else strings)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"model config overrides must look like KEY=VALUE; got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def build_optimizer(
    model: ZSADPreTrainedModel,
    *,
    learning_rate: float | None = None,
    betas: tuple[float, float] | None = None,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """The method's reference optimiser over the trainable parameters; explicit values override.

    One parameter group per `model.parameter_groups()` entry, at `learning_rate` (default: the method's)
    times the group's factor in `training_defaults["learning_rate_scales"]` (1 if absent): an explicit
    `learning_rate` moves every group and keeps their ratios (DA-CLIP: prompts 1e-3, experts 1e-4).
    """
    defaults = type(model.config).training_defaults or {}
    groups = {name: params for name, params in model.parameter_groups().items() if params}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    grouped = [id(p) for params in groups.values() for p in params]
    if sorted(grouped) != sorted(map(id, trainable)):
        raise ValueError(f"{type(model).__name__}.parameter_groups() must list every trainable parameter exactly once")
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[defaults.get("optimizer", "adam")]
    base_rate = learning_rate if learning_rate is not None else defaults.get("learning_rate", 1e-3)
    scales = defaults.get("learning_rate_scales", {})
    kwargs: dict[str, Any] = {
        "lr": base_rate,
        "betas": tuple(betas) if betas is not None else tuple(defaults.get("betas", (0.9, 0.999))),
    }
    decay = weight_decay if weight_decay is not None else defaults.get("weight_decay")
    if decay is not None:
        kwargs["weight_decay"] = decay
    param_groups = [{"name": name, "params": params, "lr": base_rate * scales.get(name, 1.0)} for name, params in groups.items()]
    return optimizer_class(param_groups, **kwargs)


def scaled_learning_rate(
    model: ZSADPreTrainedModel, learning_rate: float | None, scale: bool, num_processes: int
) -> float | None:
    """The learning rate to train with: `learning_rate` (None: the method's), times `num_processes` when
    `scale` (the linear scaling rule for an effective batch `num_processes` times the per-device one).
    Returns None when neither an explicit rate nor scaling asks for a change (the method's default applies)."""
    if not scale:
        return learning_rate
    base = learning_rate if learning_rate is not None else (type(model.config).training_defaults or {}).get("learning_rate", 1e-3)
    return base * num_processes


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch, fully determined by `(seed, epoch)`.

    Resuming only needs the epoch number (and how many batches of it were done), so a resumed run
    sees exactly the data order of an uninterrupted one, whatever RNG state the process has.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError("the training dataset is empty")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def register_adapter_checkpointing(accelerator) -> None:
    """Make `accelerator.save_state` / `load_state` store adapter tensors only (never the frozen backbone).

    Optimizer, scheduler and RNG states are still saved by Accelerate itself.
    """

    def save_adapters(models, weights, output_dir):
        if accelerator.is_main_process:
            for index, model in enumerate(models):
                state = accelerator.unwrap_model(model).adapter_state_dict()
                tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
                save_safetensors(tensors, os.path.join(output_dir, ADAPTER_CHECKPOINT_NAME.format(index=index)), metadata={"format": "pt"})
        weights.clear()  # nothing left for Accelerate's full-model dump

    def load_adapters(models, input_dir):
        for index in reversed(range(len(models))):
            path = os.path.join(input_dir, ADAPTER_CHECKPOINT_NAME.format(index=index))
            if not os.path.exists(path):
                raise FileNotFoundError(f"checkpoint {input_dir} has no adapter file {os.path.basename(path)}")
            model = accelerator.unwrap_model(models.pop(index))
            adapters = set(model.adapter_state_dict())
            missing, unexpected = model.load_state_dict(load_file(path), strict=False)
            missing = [k for k in missing if k in adapters]
            if missing or unexpected:
                raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")

    accelerator.register_save_state_pre_hook(save_adapters)
    accelerator.register_load_state_pre_hook(load_adapters)


def model_inputs(batch: Mapping[str, Any], *, with_targets: bool) -> dict[str, Any]:
    """Forward kwargs from a collated batch (`zsad.data.collate_fn`): pixels and each image's category.

    With targets: `labels`, each image's domain (`domains`, read by domain-aware models), and `masks` unless an anomalous image of the batch has no pixel ground
    truth (image-level-only data), in which case the batch trains with the image loss only.
    """
    inputs = {"pixel_values": batch["pixel_values"], "categories": batch["categories"]}
    if with_targets:
        inputs["labels"] = batch["labels"]
        if "domains" in batch:
            inputs["domains"] = batch["domains"]
        has_mask = batch.get("has_mask")
        if has_mask is None or bool(has_mask.all()):
            inputs["masks"] = batch["masks"]
    return inputs


def warn_if_image_level_only(dataset) -> bool:
    """Warn (once, before training) when anomalous training images lack masks; True if they do."""
    from .data import summarize

    missing = summarize(dataset)["anomalous_without_mask"]
    if missing:
        warnings.warn(
            f"{missing} anomalous training image(s) have no mask: batches containing them train with the "
            "image-level loss only",
            ZSADWarning,
            stacklevel=2,
        )
    return bool(missing)
