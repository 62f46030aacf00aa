"""Configuration of the training-free CLIP baseline `ZeroShotCLIP`."""

from __future__ import annotations

from typing import ClassVar

from ...configuration_zsad import ZSADConfig

# The hand-crafted prompt ensemble of the reference code (WinCLIP's): state phrasings inside templates.
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


def ensemble_sentences(states: tuple[str, ...], object_name: str) -> list[str]:
    """Every template filled with every state of `object_name` (state-major order)."""
    return [template.format(state.format(object_name)) for state in states for template in TEMPLATES]


class ZeroShotCLIPConfig(ZSADConfig):
    r"""Training-free CLIP on V-V dense features with the prompt ensemble (7 normal / 5 abnormal states x 35
    templates). `object_name` fills the `{}` slot ("object", or a category name such as "metal plate").
    `normal_token_ids` / `anomaly_token_ids` are filled by `from_backbone` from the backbone's tokenizer.
    """

    model_type = "zsad_clip"
    default_feature_fractions: ClassVar[tuple[float, ...]] = (1.0,)

    dense_attention: str | None = "vv"
    global_post_layernorm: bool = False
    pos_embed_interpolation: str = "bilinear"
    object_name: str = "object"
    normal_token_ids: list[list[int]] | None = None
    anomaly_token_ids: list[list[int]] | None = None
