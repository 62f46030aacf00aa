"""Import the authors' released AnomalyCLIP, AdaCLIP, Crane and Crane+ weights as zsad checkpoints.

The released files are PyTorch pickles of plain tensors in the reference repositories' own layouts
(AnomalyCLIP / Crane: `{"prompt_learner": state_dict}`; AdaCLIP: a flat dict of `clip_model.*` tensors).
They are read with `torch.load(weights_only=True)` only: a file that needs anything beyond tensors and
plain containers is refused, never unpickled. Keys, shapes and the prompt token ids are checked against
the documented layouts, the tensors are mapped onto the zsad adapters (see `docs/released_weights.md`),
the configuration is the one the reference test script uses for that checkpoint, and the result is an
adapter-only zsad checkpoint with a model card (source, license, citation, training protocol and the
authors' reported numbers as `model-index` results).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..modeling_base import DEFAULT_BACKBONE, ZSADPreTrainedModel, _first_line, _load_clip, _load_tokenizer, relative_layer
from .cli import RELEASED_METHODS
from .reported_results import (
    ANOMALYCLIP_TABLE,
    CRANE_PLUS_TABLE,
    CRANE_TABLE,
    IMAGE_METRICS_ANOMALYCLIP,
    IMAGE_METRICS_CRANE,
    INDUSTRIAL,
    MEDICAL_ANOMALYCLIP,
    MEDICAL_CRANE,
    METRIC_NAMES,
    PIXEL_METRICS_ANOMALYCLIP,
    PIXEL_METRICS_CRANE,
    ReportedRow,
)


# Released configurations (docs/released_weights.md): AnomalyCLIP / Crane prompt learner with 12
# context tokens, 8 deep layers of 4 tokens; AdaCLIP with 4 prompted layers of 5 tokens and 4 taps.
NUM_CONTEXT_TOKENS = 12
NUM_DEEP_LAYERS = 8
DEEP_PROMPT_LENGTH = 4
ANOMALYCLIP_PROJECTION_WIDTH = 896  # the unused compound_prompt_projections: Linear(text width -> 896)
ADACLIP_DEPTH = 4
ADACLIP_LENGTH = 5
ADACLIP_TAPS = 4
ADACLIP_PREFIX = "clip_model."

# Relative tolerance of the token-embedding buffers against the backbone's table (docs/released_weights.md).
EMBEDDING_RTOL = 1e-3

# Known training sets: --trained-on value -> name in cards.
TRAINED_ON_NAMES = {
    "mvtec": "MVTec AD",
    "visa": "VisA",
    "mvtec+colondb": "MVTec AD + ColonDB",
    "visa+clinicdb": "VisA + ClinicDB",
}
TRAINED_ON_CHOICES = {
    "anomalyclip": ("mvtec", "visa"),
    "crane": ("mvtec", "visa"),
    "crane+": ("mvtec", "visa"),
    "adaclip": ("mvtec+colondb", "visa+clinicdb"),
}


class CheckpointImportError(ValueError):
    """A released file that cannot be imported (refused pickle, wrong layout, inconsistent buffers)."""


@dataclass(frozen=True)
class MethodSource:
    """Where a method's released weights come from."""

    name: str
    repository: str
    commit: str
    license: str
    paper_url: str
    table_name: str


SOURCES = {
    "anomalyclip": MethodSource(
        "AnomalyCLIP", "https://github.com/zqhang/AnomalyCLIP", "45ed4dd", "mit",
        "https://arxiv.org/abs/2310.18961", "AnomalyCLIP paper (ICLR 2024), Tables 1 and 2",
    ),
    "adaclip": MethodSource(
        "AdaCLIP", "https://github.com/caoyunkang/AdaCLIP", "e27ee32", "mit",
        "https://arxiv.org/abs/2407.15795", "",
    ),
    "crane": MethodSource(
        "Crane", "https://github.com/AlirezaSalehy/Crane", "39181f9", "mit",
        "https://arxiv.org/abs/2504.11055", "Crane paper (arXiv 2504.11055 v2), Table 1",
    ),
    "crane+": MethodSource(
        "Crane+", "https://github.com/AlirezaSalehy/Crane", "39181f9", "mit",
        "https://arxiv.org/abs/2504.11055", "Crane paper (arXiv 2504.11055 v2), Table 1",
    ),
}

# The epoch each reference test script evaluates (AnomalyCLIP test.sh: 15; Crane: 5, Crane+ on medical: 1).
REFERENCE_EPOCHS = {"anomalyclip": (15,), "crane": (5,), "crane+": (5, 1)}


@dataclass(frozen=True)
class ReleasedVariant:
    """One checkpoint as the authors evaluate it: method, training set, epoch and the resulting settings.

    `epoch` is None where the file name does not tell (AdaCLIP keeps its best epoch under one name).
    """

    kind: str
    trained_on: str
    epoch: int | None = None

    @property
    def source(self) -> MethodSource:
        return SOURCES[self.kind]

    @property
    def medical(self) -> bool:
        """Crane+ trained on MVTec AD: the authors test epoch 1 on the medical sets, epoch 5 elsewhere."""
        return self.kind == "crane+" and self.trained_on == "mvtec" and self.epoch == 1

    @property
    def slug(self) -> str:
        """File-name part, e.g. `crane-plus-vit-large-patch14-336-trained-on-mvtec`."""
        method = self.kind.replace("+", "-plus")
        trained = self.trained_on.replace("+", "-and-")
        suffix = "-medical" if self.medical else ""
        return f"{method}-vit-large-patch14-336-trained-on-{trained}{suffix}"

    def config_settings(self, vision_depth: int) -> dict[str, Any]:
        """The zsad configuration the reference test script uses for this checkpoint (docs/released_weights.md),
        with layers expressed for a backbone of `vision_depth` layers."""
        if self.kind == "adaclip":
            taps = sorted({relative_layer(vision_depth, f) for f in (0.25, 0.5, 0.75, 1.0)})
            return {
                "feature_layers": taps, "prompt_depth": ADACLIP_DEPTH, "prompt_length": ADACLIP_LENGTH,
                "backbone_hidden_act": "gelu", "hybrid_semantic_fusion": True,
            }
        settings: dict[str, Any] = {"feature_layers": [vision_depth], "backbone_hidden_act": "quick_gelu"}
        if self.kind == "anomalyclip":
            return settings
        # Test-time conditioning off: the image token only enters in training mode (the released test.py
        # evaluates with static prompts).
        settings.update(prompt_conditioning="train", dino_attention=self.kind == "crane+")
        if self.kind == "crane+":
            # test.sh: soft_mean False on the industrial sets (epoch 5), True on the medical ones (epoch 1).
            settings.update(soft_mean=self.medical, guided_value_source="post_attention")
        else:
            settings.update(soft_mean=True)
        return settings

    @property
    def training_protocol(self) -> str:
        data = TRAINED_ON_NAMES[self.trained_on]
        if self.trained_on == "visa":
            targets = "zero-shot on MVTec AD"
        elif self.kind == "crane+":
            targets = "zero-shot on the medical datasets" if self.medical else "zero-shot on other industrial datasets"
        else:
            targets = "zero-shot on other datasets"
        return f"trained on the {data} test split; {targets}"

    def reported_rows(self) -> list[ReportedRow]:
        """The paper rows that this very file produced, per the authors' test scripts (none for AdaCLIP,
        whose authors publish no table we could read, nor for an epoch their scripts do not test)."""
        if self.kind == "adaclip" or self.epoch not in self.evaluated_epochs:
            return []
        table = {"anomalyclip": ANOMALYCLIP_TABLE, "crane": CRANE_TABLE, "crane+": CRANE_PLUS_TABLE}[self.kind]
        if self.trained_on == "visa":
            names: tuple[str, ...] = ("MVTec AD",)
        elif self.kind == "anomalyclip":
            names = INDUSTRIAL + MEDICAL_ANOMALYCLIP
        elif self.kind == "crane":
            names = INDUSTRIAL + MEDICAL_CRANE
        else:
            names = MEDICAL_CRANE if self.medical else INDUSTRIAL
        return [table[name] for name in names]

    @property
    def evaluated_epochs(self) -> tuple[int, ...]:
        """The epochs of this training run that the authors' test scripts evaluate (Crane+'s epoch 1 only
        for the MVTec AD run, on the medical sets)."""
        if self.kind == "crane+" and self.trained_on == "visa":
            return (5,)
        return REFERENCE_EPOCHS.get(self.kind, ())

    @property
    def metric_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self.kind == "anomalyclip":
            return IMAGE_METRICS_ANOMALYCLIP, PIXEL_METRICS_ANOMALYCLIP
        return IMAGE_METRICS_CRANE, PIXEL_METRICS_CRANE


@dataclass
class ImportResult:
    """What `import_released_checkpoint` wrote and checked."""

    out_dir: Path
    variant: ReleasedVariant
    adapter_tensors: dict[str, torch.Tensor]
    embedding_max_difference: float | None = None
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- reading
def load_released_file(path: str | os.PathLike) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`; anything that needs more is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only errors read "... WeightsUnpickler error: <reason> ..." (the reason may follow blank lines).
        message = str(error)
        tail = message.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in message else message
        reason = next((line.strip() for line in tail.splitlines() if line.strip()), type(error).__name__)
        reason = reason.split(". ")[0]
        if reason.startswith("Unsupported global"):
            raise CheckpointImportError(
                f"{path}: refused: the file needs more than tensors and plain containers to load ({reason}); "
                "zsad loads released weights with weights_only=True and never unpickles arbitrary objects"
            ) from None
        raise CheckpointImportError(f"{path}: not a PyTorch checkpoint of tensors ({reason})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointImportError(f"{path}: not a PyTorch checkpoint ({_first_line(error)})") from None


def _flat_state(kind: str, loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The reference's state dict inside the file's container (AdaCLIP keys without `clip_model.`)."""
    if not isinstance(loaded, Mapping):
        raise CheckpointImportError(f"{path}: expected a dict of tensors, found a {type(loaded).__name__}")
    if kind == "adaclip":
        state = loaded
    else:
        if set(loaded) != {"prompt_learner"} or not isinstance(loaded["prompt_learner"], Mapping):
            keys = ", ".join(repr(k) for k in list(loaded)[:3])
            raise CheckpointImportError(
                f"{path}: expected the {SOURCES[kind].name} layout {{'prompt_learner': state dict}}; found keys {keys}"
            )
        state = loaded["prompt_learner"]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointImportError(f"{path}: entry {bad[0]!r} is not a named tensor")
    if kind == "adaclip":
        outside = [k for k in state if not k.startswith(ADACLIP_PREFIX)]
        if outside:
            raise CheckpointImportError(f"{path}: unexpected key {outside[0]!r} (AdaCLIP keys start with {ADACLIP_PREFIX!r})")
        return {k[len(ADACLIP_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def expected_layout(kind: str, text_width: int, vision_width: int, embed_dim: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released file at the released configuration, for a backbone of these widths
    (text 768, vision 1024, projection 768 for ViT-L/14@336; docs/released_weights.md)."""
    if kind == "adaclip":
        layout: dict[str, tuple[int, ...]] = {}
        for j in range(ADACLIP_DEPTH):
            layout[f"text_prompter.static_prompts.{j}"] = (ADACLIP_LENGTH, text_width)
            layout[f"visual_prompter.static_prompts.{j}"] = (ADACLIP_LENGTH, vision_width)
        for k in range(ADACLIP_TAPS):
            layout[f"patch_token_layer.head.{k}.weight"] = (embed_dim, vision_width)
            layout[f"patch_token_layer.head.{k}.bias"] = (embed_dim,)
        layout["cls_token_layer.head.0.weight"] = (embed_dim, embed_dim)
        layout["cls_token_layer.head.0.bias"] = (embed_dim,)
        for i in range(ADACLIP_LENGTH):
            layout[f"dynamic_visual_prompt_generator.head.{i}.weight"] = (vision_width, embed_dim)
            layout[f"dynamic_visual_prompt_generator.head.{i}.bias"] = (vision_width,)
            layout[f"dynamic_text_prompt_generator.head.{i}.weight"] = (text_width, embed_dim)
            layout[f"dynamic_text_prompt_generator.head.{i}.bias"] = (text_width,)
        return layout
    context_length = 77
    suffix = context_length - 1 - NUM_CONTEXT_TOKENS
    layout = {}
    for side in ("pos", "neg"):
        layout[f"ctx_{side}"] = (1, 1, NUM_CONTEXT_TOKENS, text_width)
    for side in ("pos", "neg"):
        layout[f"token_prefix_{side}"] = (1, 1, 1, text_width)
        layout[f"token_suffix_{side}"] = (1, 1, suffix, text_width)
        layout[f"tokenized_prompts_{side}"] = (1, 1, context_length)
    for i in range(NUM_DEEP_LAYERS):
        layout[f"compound_prompts_text.{i}"] = (DEEP_PROMPT_LENGTH, text_width)
    if kind == "anomalyclip":
        for i in range(NUM_DEEP_LAYERS):
            layout[f"compound_prompt_projections.{i}.weight"] = (ANOMALYCLIP_PROJECTION_WIDTH, text_width)
            layout[f"compound_prompt_projections.{i}.bias"] = (ANOMALYCLIP_PROJECTION_WIDTH,)
    return layout


def check_layout(state: Mapping[str, torch.Tensor], layout: Mapping[str, tuple[int, ...]], path: Path, kind: str) -> None:
    """Exactly the documented keys, each with its documented shape; ids integer, the rest floating point."""
    name = SOURCES[kind].name
    prefix = ADACLIP_PREFIX if kind == "adaclip" else ""
    missing = [k for k in layout if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointImportError(f"{path}: not a released {name} checkpoint: missing key {prefix + missing[0]!r}{more}")
    unexpected = [k for k in state if k not in layout]
    if unexpected:
        raise CheckpointImportError(f"{path}: not a released {name} checkpoint: unexpected key {prefix + unexpected[0]!r}")
    for key, shape in layout.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise CheckpointImportError(
                f"{path}: key {prefix + key!r} has shape {tuple(tensor.shape)}, expected {shape} "
                f"({name} at its released configuration on this backbone)"
            )
        integer = key.startswith("tokenized_prompts")
        if integer == tensor.dtype.is_floating_point or tensor.dtype.is_complex:
            kind_name = "an integer" if integer else "a floating-point"
            raise CheckpointImportError(f"{path}: key {prefix + key!r} has dtype {tensor.dtype}, expected {kind_name} tensor")


# ------------------------------------------------------------------------------------------- mapping
def object_agnostic_adapters(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AnomalyCLIP / Crane -> zsad `ObjectAgnosticPrompts` (docs/released_weights.md): the contexts
    stacked [normal = pos, anomaly = neg], the deep tokens stacked in file order (token i -> text layer
    i + 2). AnomalyCLIP's unused `compound_prompt_projections` are dropped."""
    context = torch.stack([state["ctx_pos"].reshape(NUM_CONTEXT_TOKENS, -1), state["ctx_neg"].reshape(NUM_CONTEXT_TOKENS, -1)])
    deep = torch.stack([state[f"compound_prompts_text.{i}"] for i in range(NUM_DEEP_LAYERS)])
    return {"prompt_learner.context": context.float().contiguous(), "prompt_learner.deep_tokens": deep.float().contiguous()}


def adaclip_adapters(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AdaCLIP -> zsad (docs/released_weights.md): static prompts stacked per layer, the five per-token
    generator heads concatenated along the output dimension (row block i = token i), projections as is."""
    def stack(name: str, count: int) -> torch.Tensor:
        return torch.stack([state[f"{name}.{j}"] for j in range(count)])

    def concat(name: str, part: str) -> torch.Tensor:
        return torch.cat([state[f"{name}.head.{i}.{part}"] for i in range(ADACLIP_LENGTH)])

    tensors = {
        "vision_prompts.static": stack("visual_prompter.static_prompts", ADACLIP_DEPTH),
        "vision_prompts.generator.weight": concat("dynamic_visual_prompt_generator", "weight"),
        "vision_prompts.generator.bias": concat("dynamic_visual_prompt_generator", "bias"),
        "text_prompts.static": stack("text_prompter.static_prompts", ADACLIP_DEPTH),
        "text_prompts.generator.weight": concat("dynamic_text_prompt_generator", "weight"),
        "text_prompts.generator.bias": concat("dynamic_text_prompt_generator", "bias"),
        "projections.image.weight": state["cls_token_layer.head.0.weight"],
        "projections.image.bias": state["cls_token_layer.head.0.bias"],
    }
    for k in range(ADACLIP_TAPS):
        tensors[f"projections.patch.{k}.weight"] = state[f"patch_token_layer.head.{k}.weight"]
        tensors[f"projections.patch.{k}.bias"] = state[f"patch_token_layer.head.{k}.bias"]
    return {key: value.float().contiguous() for key, value in tensors.items()}


# -------------------------------------------------------------------------------------------- checks
def check_prompt_ids(state: Mapping[str, torch.Tensor], prompt_token_ids: list[list[int]], path: Path) -> None:
    """The file's zero-padded ids equal zsad's [normal, anomaly] ids from the backbone's tokenizer, and the
    reference's pooling position (argmax of the ids) is the end-of-text position zsad pools at."""
    for side, ids in zip(("pos", "neg"), prompt_token_ids):
        row = state[f"tokenized_prompts_{side}"].reshape(-1).tolist()
        expected = list(ids) + [0] * (len(row) - len(ids))
        if row != expected:
            first = next(i for i, (a, b) in enumerate(zip(row, expected)) if a != b)
            raise CheckpointImportError(
                f"{path}: tokenized_prompts_{side} differs from this backbone's tokenization of the prompt at "
                f"position {first} (file {row[first]}, tokenizer {expected[first]}): a different template, "
                "context length or tokenizer"
            )
        if max(range(len(row)), key=row.__getitem__) != len(ids) - 1:
            raise CheckpointImportError(f"{path}: tokenized_prompts_{side}: the end-of-text token is not the largest id")


def check_embedding_buffers(
    state: Mapping[str, torch.Tensor], prompt_token_ids: list[list[int]], token_embedding: torch.Tensor, path: Path
) -> float:
    """Check the file's token-embedding buffers (docs/released_weights.md).

    Backbone-free checks refuse the file: both prefixes are equal, and suffix rows of equal token ids are
    equal. Returns the largest difference, relative to the table's largest magnitude, between the buffers
    and the backbone's token embeddings (about 0 for the backbone the file was trained with)."""
    if not torch.equal(state["token_prefix_pos"], state["token_prefix_neg"]):
        raise CheckpointImportError(f"{path}: token_prefix_pos and token_prefix_neg differ; the reference writes the same row")
    context_end = 1 + NUM_CONTEXT_TOKENS
    rows, ids = [state["token_prefix_pos"].reshape(1, -1)], [prompt_token_ids[0][0]]
    for side, sequence in zip(("pos", "neg"), prompt_token_ids):
        suffix = state[f"token_suffix_{side}"].reshape(-1, token_embedding.shape[-1])
        padded = list(sequence) + [0] * (context_end + suffix.shape[0] - len(sequence))
        rows.append(suffix)
        ids.extend(padded[context_end:])
    rows_tensor = torch.cat(rows).float()
    first_row: dict[int, int] = {}
    for index, token in enumerate(ids):
        first = first_row.setdefault(token, index)
        if not torch.equal(rows_tensor[first], rows_tensor[index]):
            raise CheckpointImportError(
                f"{path}: token-embedding buffers disagree for token id {token}: not the reference's buffers"
            )
    reference = token_embedding.detach().float()[torch.tensor(ids)]
    scale = token_embedding.detach().float().abs().max().clamp_min(1e-12)
    return float(((rows_tensor - reference).abs().max() / scale).item())


# ----------------------------------------------------------------------------------------- inference
def infer_trained_on(kind: str, path: Path) -> str | None:
    """The training set from the reference's folder names (`trained_on_<data>_<model>` for Crane;
    AnomalyCLIP's `9_12_4_multiscale_visa` was trained on MVTec AD and `9_12_4_multiscale` on VisA,
    per its train.sh). None when the path does not tell."""
    folders = [part.lower() for part in path.resolve().parts[:-1]]
    for folder in reversed(folders):
        if kind in ("crane", "crane+"):
            match = re.fullmatch(r"trained_on_(mvtec|visa)_(crane|cranep)", folder)
            if match:
                return match.group(1)
        elif kind == "anomalyclip" and folder.endswith("_multiscale_visa"):
            return "mvtec"
        elif kind == "anomalyclip" and folder.endswith("_multiscale"):
            return "visa"
    return None


def infer_epoch(path: Path) -> int | None:
    """N of the reference's `epoch_<N>.pth` file names."""
    match = re.fullmatch(r"epoch_(\d+)\.pth", path.name)
    return int(match.group(1)) if match else None


def resolve_variant(kind: str, path: Path, trained_on: str | None) -> ReleasedVariant:
    if kind not in RELEASED_METHODS:
        raise CheckpointImportError(f"unknown method {kind!r}; choose one of {', '.join(RELEASED_METHODS)}")
    choices = TRAINED_ON_CHOICES[kind]
    if trained_on is None:
        trained_on = infer_trained_on(kind, path)
        if trained_on is None:
            raise CheckpointImportError(
                f"{path}: cannot tell what the weights were trained on from the path; pass --trained-on "
                f"{'|'.join(choices)}"
            )
    trained_on = trained_on.lower()
    if trained_on not in choices:
        raise CheckpointImportError(f"--trained-on {trained_on!r}: {SOURCES[kind].name} weights are released for {', '.join(choices)}")
    return ReleasedVariant(kind, trained_on, infer_epoch(path) if kind != "adaclip" else None)


# -------------------------------------------------------------------------------------------- import
def model_class(kind: str) -> type[ZSADPreTrainedModel]:
    from .. import AdaCLIPModel, AnomalyCLIPModel, CraneModel

    return {"anomalyclip": AnomalyCLIPModel, "adaclip": AdaCLIPModel, "crane": CraneModel, "crane+": CraneModel}[kind]


def _dino_config(dino_backbone: str) -> dict | None:
    """DINOv2 architecture for Crane+; the built-in ViT-B/14-with-registers one for the default id offline."""
    from transformers import AutoConfig

    from ..models.crane.configuration_crane import DEFAULT_DINO_BACKBONE

    try:
        return AutoConfig.from_pretrained(dino_backbone).to_dict()
    except (OSError, ValueError) as error:
        if dino_backbone == DEFAULT_DINO_BACKBONE:
            return None  # CraneConfig's default architecture is this model's
        raise CheckpointImportError(f"cannot load the DINOv2 backbone {dino_backbone!r} ({_first_line(error)})") from error


def build_config(variant: ReleasedVariant, backbone: str, clip_config: dict, tokenizer, dino_backbone: str | None = None):
    """The zsad config of `variant` on the backbone with `clip_config`, prompts tokenized with `tokenizer`."""
    cls = model_class(variant.kind)
    depth = clip_config["vision_config"]["num_hidden_layers"]
    settings = variant.config_settings(depth)
    if variant.kind == "crane+":
        from ..models.crane.configuration_crane import DEFAULT_DINO_BACKBONE

        dino_id = dino_backbone or DEFAULT_DINO_BACKBONE
        settings.update(dino_backbone_name_or_path=dino_id, dino_config=_dino_config(dino_id))
    try:
        config = cls.config_class(backbone_name_or_path=backbone, clip_config=clip_config, **settings)
    except ValueError as error:
        raise CheckpointImportError(f"{variant.source.name} cannot run on the backbone {backbone!r}: {_first_line(error)}") from None
    if variant.kind == "adaclip" and len(config.feature_layers) != ADACLIP_TAPS:
        raise CheckpointImportError(f"the backbone has {depth} vision layers; AdaCLIP's {ADACLIP_TAPS} taps need at least 4")
    try:
        cls.tokenize_prompts(config, tokenizer)
    except ValueError as error:
        raise CheckpointImportError(f"cannot tokenize the {variant.source.name} prompts with the tokenizer of {backbone!r}: {_first_line(error)}") from None
    return config


def _absolute_if_local(name_or_path: str | os.PathLike) -> str:
    """A local folder as an absolute path (the checkpoint reloads it from any working directory), a Hub id as is."""
    path = Path(name_or_path).expanduser()
    return os.fspath(path.resolve()) if path.exists() else os.fspath(name_or_path)


def import_released_checkpoint(
    kind: str,
    file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    backbone: str | os.PathLike = DEFAULT_BACKBONE,
    trained_on: str | None = None,
    dino_backbone: str | None = None,
    repo_id: str | None = None,
) -> ImportResult:
    """Convert a released file into an adapter-only zsad checkpoint with its model card in `out_dir`.

    `repo_id` names the Hub repository in the card (else `zsad push` fills it in when uploading).

    Raises `CheckpointImportError` for a file that cannot be imported and `OSError` for a backbone that
    cannot be loaded; nothing is written then.
    """
    from .model_card import write_model_card

    path = Path(file)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointImportError(f"{out} already exists and is not an empty folder; choose a new OUT_DIR")
    variant = resolve_variant(kind, path, trained_on)
    state = _flat_state(kind, load_released_file(path), path)
    backbone_id = _absolute_if_local(backbone)
    clip = _load_clip(backbone_id, dtype=torch.float32)
    tokenizer = _load_tokenizer(backbone_id)
    clip_config = clip.config.to_dict()
    text_width = clip.config.text_config.hidden_size
    layout = expected_layout(kind, text_width, clip.config.vision_config.hidden_size, clip.config.projection_dim)
    check_layout(state, layout, path, kind)
    config = build_config(variant, backbone_id, clip_config, tokenizer, dino_backbone and _absolute_if_local(dino_backbone))

    result_warnings: list[str] = []
    embedding_difference = None
    if kind == "adaclip":
        adapters = adaclip_adapters(state)
    else:
        if config.text_depth < 1 + NUM_DEEP_LAYERS:
            raise CheckpointImportError(
                f"the backbone's text tower has {config.text_depth} layers; the {NUM_DEEP_LAYERS} deep prompts "
                f"enter text layers 2..{1 + NUM_DEEP_LAYERS}"
            )
        check_prompt_ids(state, config.prompt_token_ids, path)
        token_embedding = clip.text_model.embeddings.token_embedding.weight
        embedding_difference = check_embedding_buffers(state, config.prompt_token_ids, token_embedding, path)
        if embedding_difference > EMBEDDING_RTOL:
            result_warnings.append(
                f"{path}: the file's token-embedding buffers differ from the token embeddings of {backbone_id!r} "
                f"(largest difference {embedding_difference:.3g} of the table's scale): the weights were trained "
                "on another CLIP backbone, so the imported model will not reproduce the authors' results on this one"
            )
        adapters = object_agnostic_adapters(state)
    del clip

    with torch.device("meta"):
        model = model_class(kind)(config)
    unmatched = set(adapters) ^ set(model.adapter_state_dict())
    if unmatched:
        raise CheckpointImportError(f"the mapped tensors do not match the zsad model's adapters: {sorted(unmatched)}")
    model.load_state_dict(adapters, strict=False, assign=True)
    # Written next to OUT_DIR and renamed into place, so a failure never leaves a half-written checkpoint.
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{out.name}.zsad-tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save_pretrained(staging, state_dict=dict(adapters))
        write_model_card(model, staging, overwrite=True, **released_card_kwargs(variant, model, repo_id))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return ImportResult(out, variant, adapters, embedding_difference, result_warnings)


# ---------------------------------------------------------------------------------------------- cards
# Every checkpoint the authors publish, as their test scripts use it (AdaCLIP: the two auxiliary-data pairs).
RELEASED_VARIANTS = (
    ReleasedVariant("anomalyclip", "mvtec", 15),
    ReleasedVariant("anomalyclip", "visa", 15),
    ReleasedVariant("adaclip", "mvtec+colondb"),
    ReleasedVariant("adaclip", "visa+clinicdb"),
    ReleasedVariant("crane", "mvtec", 5),
    ReleasedVariant("crane", "visa", 5),
    ReleasedVariant("crane+", "mvtec", 5),
    ReleasedVariant("crane+", "mvtec", 1),
    ReleasedVariant("crane+", "visa", 5),
)


def released_variant_card(variant: ReleasedVariant, repo_id: str):
    """The model card of `variant` on the default backbone (openai/clip-vit-large-patch14-336), built on
    the meta device: no weights needed."""
    from .model_card import build_model_card

    cls = model_class(variant.kind)
    config = cls.config_class(**variant.config_settings(24))
    with torch.device("meta"):
        model = cls(config)
    return build_model_card(model, **released_card_kwargs(variant, model, repo_id))

def released_card_kwargs(variant: ReleasedVariant, model: ZSADPreTrainedModel, repo_id: str | None = None) -> dict[str, Any]:
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
