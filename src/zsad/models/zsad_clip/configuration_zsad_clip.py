"""Configuration of the training-free CLIP baseline `ZeroShotCLIP`."""

from __future__ import annotations

from typing import ClassVar

from ...configuration_zsad import ZSADConfig

# The hand-crafted prompt ensemble of AnomalyCLIP's baseline code: state phrasings inside 35 CLIP templates.
NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALY_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)


# anomalib's WinCLIP ensemble (`src/anomalib/models/image/winclip/prompting.py`): 7 normal and 4 anomalous
# states (no "broken") in 21 templates, 4 of them anomaly-specific; "a jpeg corrupted photo of the {}." is
# listed twice there, and so here, since the ensemble is a mean over the list.
ANOMALIB_ANOMALY_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
ANOMALIB_TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
# prompt_set -> (normal states, anomalous states, templates).
PROMPT_SETS = {
    "anomalyclip": (NORMAL_STATES, ANOMALY_STATES, TEMPLATES),
    "anomalib": (NORMAL_STATES, ANOMALIB_ANOMALY_STATES, ANOMALIB_TEMPLATES),
}
ENSEMBLES = ("normalized_mean", "raw_mean")


def ensemble_sentences(states: tuple[str, ...], object_name: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Every template filled with every state of `object_name` (state-major order)."""
    return [template.format(state.format(object_name)) for state in states for template in templates]


def prompt_name(category: str) -> str:
    """A dataset category as the prompts name it: `metal_nut` -> `metal nut`."""
    return category.replace("_", " ").strip()


class ZeroShotCLIPConfig(ZSADConfig):
    r"""Training-free CLIP on V-V dense features with a prompt ensemble. `object_name` fills the `{}` slot
    ("object", or a category name such as "metal plate"); `normal_token_ids` / `anomaly_token_ids` are
    filled by `from_backbone` from the backbone's tokenizer.

    Args (besides `ZSADConfig`'s):
        prompt_set: `anomalyclip` (7 normal / 5 anomalous states x 35 CLIP templates, AnomalyCLIP's
            baseline code; ZeroShotCLIP's default) or `anomalib` (7 / 4 states x 21 templates; WinCLIP's).
        ensemble: `normalized_mean` (each sentence embedding normalised, averaged, normalised again:
            AnomalyCLIP's code) or `raw_mean` (the raw sentence embeddings averaged, normalised only in
            the cosine: anomalib's WinCLIP).
        class_names: categories whose own prompts `set_class_names` made (`forward(categories=...)` uses
            them; `object_name` serves images without a category).
    """

    model_type = "zsad_clip"
    default_feature_fractions: ClassVar[tuple[float, ...]] = (1.0,)

    dense_attention: str | None = "vv"
    global_post_layernorm: bool = False
    pos_embed_interpolation: str = "bilinear"
    object_name: str = "object"
    normal_token_ids: list[list[int]] | None = None
    anomaly_token_ids: list[list[int]] | None = None
    prompt_set: str = "anomalyclip"
    ensemble: str = "normalized_mean"
    class_names: list[str] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.prompt_set not in PROMPT_SETS:
            raise ValueError(f"prompt_set must be one of {sorted(PROMPT_SETS)}; got {self.prompt_set!r}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}; got {self.ensemble!r}")
