"""The authors' released AnomalyCLIP, AdaCLIP, Crane and Crane+ checkpoints: where each comes from, how the
authors evaluate it (`ReleasedVariant`) and the configuration their test scripts use for it.

Data only: importing this module imports neither torch nor transformers (the `zsad` parser reads
`RELEASED_METHODS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .reported_results import (
    ANOMALYCLIP_TABLE,
    CRANE_PLUS_TABLE,
    CRANE_TABLE,
    IMAGE_METRICS_ANOMALYCLIP,
    IMAGE_METRICS_CRANE,
    INDUSTRIAL,
    MEDICAL_ANOMALYCLIP,
    MEDICAL_CRANE,
    PIXEL_METRICS_ANOMALYCLIP,
    PIXEL_METRICS_CRANE,
    ReportedRow,
)

# The methods whose released weights `zsad import-checkpoint` reads.
RELEASED_METHODS = ("anomalyclip", "adaclip", "crane", "crane+")

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
REFERENCE_SIZE = 518  # every reference test script's input size, whatever the backbone's native size

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
        from ...configuration_zsad import relative_layer

        if self.kind == "adaclip":
            taps = sorted({relative_layer(vision_depth, f) for f in (0.25, 0.5, 0.75, 1.0)})
            return {
                "feature_layers": taps, "prompt_depth": ADACLIP_DEPTH, "prompt_length": ADACLIP_LENGTH,
                "backbone_hidden_act": "gelu", "hybrid_semantic_fusion": True
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
