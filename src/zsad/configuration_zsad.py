"""`ZSADConfig`: the configuration every zsad method extends (backbone, layers, dense path, scores)."""

from __future__ import annotations

import copy
import difflib
import functools
import math
import sys
import types
import typing
import warnings
from typing import Any, ClassVar, Union

from transformers import CLIPConfig, PreTrainedConfig
from transformers.activations import ACT2FN

from .clip import DEFAULT_BACKBONE
from .clip.vision import DENSE_ATTENTION_KINDS
from .errors import ZSADWarning
from .few_shot import REFERENCE_FUSIONS
from .scoring import JOINT_SCORE_POOLINGS

# Architecture of openai/clip-vit-large-patch14-336, so a default config builds offline.
VIT_L14_336_CLIP_CONFIG: dict[str, Any] = {
    "projection_dim": 768,
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "image_size": 336,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
}

POS_EMBED_INTERPOLATIONS = ("bicubic", "bilinear")
IMAGE_SCORES = ("global", "joint")
REFERENCE_IMAGE_SIZE = 518  # 37 x 37 patches of 14 px
# The default input size is at most this multiple of the backbone's native size: a small (test) backbone
# gets a size that fits it (112 px for a 28 px one), not 518 px at a 17x cost per image.
MAX_DEFAULT_UPSCALE = 4


class ConfigFieldError(ValueError):
    """A config field of the wrong type, or an unknown field: names the field, the value and what it takes."""


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` (as a Python or JSON value) fits the annotation `hint`; lists and tuples are
    interchangeable (JSON has only lists), an int is a float, a bool is neither."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple) or hint in (list, tuple):
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(item, args[0]) for item in value) if args else isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _hint_text(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def relative_layer(depth: int, fraction: float) -> int:
    """1-indexed layer at `fraction` of `depth` (rounded half up, at least 1)."""
    return max(1, min(depth, math.floor(depth * fraction + 0.5)))


@functools.cache
def _transformers_config_keys() -> frozenset[str]:
    """The keys transformers itself writes into any config.json (`architectures`, `auto_map`, `dtype`, ...)."""
    return frozenset(PreTrainedConfig().to_dict()) | {"auto_map", "architectures", "transformers_version", "_name_or_path"}


class ZSADConfig(PreTrainedConfig):
    r"""Configuration shared by all zsad models.

    Layer settings of the reference code are written for the 24-layer ViT-L/14; every layer field left as `None`
    is resolved relative to the backbone depth when the config is created (taps at
    `default_feature_fractions` of the depth, dense path over the last 19/24 of the layers), so a
    12-layer ViT-B/16 or a 4-layer test backbone needs no extra arguments. Explicit values always win.
    All layer indices are 1-indexed, as in the papers.

    Args:
        backbone_name_or_path: Hub id or local folder of the CLIP backbone (reloaded by `from_pretrained`
            when `save_backbone` is False).
        clip_config: the backbone architecture (`CLIPConfig` or dict); defaults to ViT-L/14@336.
        save_backbone: save the CLIP weights inside checkpoints (air-gapped use) instead of the id only.
        image_size: input resolution (square); defaults to the multiple of the patch size nearest to 518
            (518 for the /14 backbones of all reference code, 512 for /16), at most 4x the backbone's
            native size (a 28 px test backbone gets 112).
        feature_layers: vision layers whose patch tokens produce anomaly maps (dense-stream tokens from
            `dense_start_layer` on, plain CLIP tokens before it).
        dense_attention: dense self-correlation on the second stream (`vv`, `kk`, `qq`, `qq+kk`,
            `qq+kk+vv`), or `None` for plain CLIP tokens.
        dense_start_layer: first layer of the dense dual path.
        temperature: softmax temperature of the patch/global-to-text cosine similarities.
        gaussian_sigma: sigma (in pixels at `image_size`) of the Gaussian applied to anomaly maps; 0 disables.
        pos_embed_interpolation: `bicubic` (transformers) or `bilinear` (AnomalyCLIP/Crane reference code).
        global_post_layernorm: apply `post_layernorm` to the CLS token before the projection (CLIP does;
            AnomalyCLIP does not).
        image_score: `global` (the global embedding's anomaly probability, every reference method) or
            `joint` (HeadCLIP's joint anomaly score:
            `alpha * p_global + (1 - alpha) * pool(anomaly map)`).
        joint_score_alpha: alpha of the joint score, in [0, 1].
        joint_score_pooling: `max` of the map, or `topk_mean`: the mean of its top
            `joint_score_topk_fraction` pixels.
        backbone_hidden_act: MLP activation of both CLIP towers (a transformers activation name such as
            `gelu` or `quick_gelu`), written into `clip_config` so it holds however the backbone is built
            or loaded; None keeps the backbone's own. AdaCLIP's reference runs the OpenAI weights with
            exact `gelu`.
        image_threshold: decision threshold on `pred_scores`; when set, outputs add
            `pred_labels = pred_scores >= image_threshold` (`zsad calibrate` sets it, docs/inference.md).
        pixel_threshold: decision threshold on `anomaly_maps`; when set, outputs add
            `pred_masks = anomaly_maps >= pixel_threshold`.
        reference_fusion: with normal references set (`set_normal_references`), how the memory map and
            its maximum combine with the zero-shot map and score: `mean` (WinCLIP+), `memory_only`,
            `zero_shot_only` (docs/few_shot.md).
    """

    model_type = "zsad"
    sub_configs_defaults = {"clip_config": CLIPConfig}
    default_feature_fractions: ClassVar[tuple[float, ...]] = (0.25, 0.5, 0.75, 1.0)
    dense_fraction: ClassVar[float] = 19 / 24
    # Optimiser and schedule of the method's reference training (None: training-free).
    training_defaults: ClassVar[dict | None] = None
    # What a saved config that lacks a field (written before the field existed) meant: its old behaviour.
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    backbone_name_or_path: str | None = DEFAULT_BACKBONE
    clip_config: dict | CLIPConfig | None = None
    save_backbone: bool = False
    image_size: int | None = None
    feature_layers: list[int] | tuple[int, ...] | None = None
    dense_attention: str | None = "vv"
    dense_start_layer: int | None = None
    temperature: float = 0.07
    gaussian_sigma: float = 4.0
    pos_embed_interpolation: str = "bicubic"
    global_post_layernorm: bool = True
    image_score: str = "global"
    joint_score_alpha: float = 0.5
    joint_score_pooling: str = "max"
    joint_score_topk_fraction: float = 0.01
    backbone_hidden_act: str | None = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    reference_fusion: str = "mean"

    @classmethod
    @functools.cache
    def field_types(cls) -> dict[str, Any]:
        """`{field: annotation}` of every field zsad declares on this config class (not the ClassVars)."""
        hints: dict[str, Any] = {}
        for klass in reversed([k for k in cls.__mro__ if isinstance(k, type) and issubclass(k, ZSADConfig)]):
            namespace = vars(sys.modules[klass.__module__])  # each class's own annotations, in its own module
            for name, annotation in vars(klass).get("__annotations__", {}).items():
                hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
        return {name: hint for name, hint in sorted(hints.items()) if typing.get_origin(hint) is not ClassVar}

    @classmethod
    def check_fields(cls, values: dict[str, Any], *, unknown_ok: bool = False) -> None:
        """Raise `ConfigFieldError` for a value of the wrong type, or (unless `unknown_ok`) for a name that is
        not a field, suggesting the closest one."""
        fields = cls.field_types()
        for name, value in values.items():
            if name not in fields:
                if unknown_ok:
                    continue
                close = difflib.get_close_matches(name, fields, n=1)
                hint = f"; did you mean {close[0]}?" if close else f"; the fields are {', '.join(fields)}"
                raise ConfigFieldError(f"{name} is not a field of {cls.__name__}{hint}")
            if not _matches(value, fields[name]):
                raise ConfigFieldError(f"config field {name} must be {_hint_text(fields[name])}; got {value!r} ({type(value).__name__})")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """`PreTrainedConfig.from_dict`, with `legacy_defaults` for the fields a saved config lacks, and a
        warning (not an error: a newer zsad may have written it) for fields this version does not know."""
        unknown = sorted(set(config_dict) - set(cls.field_types()) - _transformers_config_keys())
        if unknown:
            warnings.warn(f"the saved {cls.__name__} has field(s) this zsad does not know, ignored: {', '.join(unknown)} "
                          "(written by a newer zsad?)", ZSADWarning, stacklevel=2)
        missing = {key: value for key, value in cls.legacy_defaults.items() if key not in config_dict}
        return super().from_dict({**config_dict, **missing}, **kwargs)

    def _check_field_types(self) -> None:
        self.check_fields({name: getattr(self, name, None) for name in self.field_types()})

    def __post_init__(self, **kwargs):
        self._check_field_types()
        if self.clip_config is None:
            self.clip_config = CLIPConfig(**VIT_L14_336_CLIP_CONFIG)
        super().__post_init__(**kwargs)
        if self.backbone_hidden_act is not None:
            if self.backbone_hidden_act not in ACT2FN:
                raise ValueError(f"backbone_hidden_act must be a transformers activation name; got {self.backbone_hidden_act!r}")
            self.clip_config = copy.deepcopy(self.clip_config)  # never change a caller's CLIPConfig
            self.clip_config.text_config.hidden_act = self.backbone_hidden_act
            self.clip_config.vision_config.hidden_act = self.backbone_hidden_act
        depth = self.vision_depth
        if self.image_size is None:
            patch = self.clip_config.vision_config.patch_size
            native = self.clip_config.vision_config.image_size
            self.image_size = patch * max(1, round(min(REFERENCE_IMAGE_SIZE, MAX_DEFAULT_UPSCALE * native) / patch))
        if self.feature_layers is None:
            self.feature_layers = sorted({relative_layer(depth, f) for f in self.default_feature_fractions})
        self.feature_layers = [int(layer) for layer in self.feature_layers]
        if self.dense_start_layer is None and self.dense_attention is not None:
            self.dense_start_layer = depth - relative_layer(depth, self.dense_fraction) + 1
        self._validate_zsad_fields()

    @property
    def vision_depth(self) -> int:
        return self.clip_config.vision_config.num_hidden_layers

    @property
    def text_depth(self) -> int:
        return self.clip_config.text_config.num_hidden_layers

    def _validate_zsad_fields(self) -> None:
        depth = self.vision_depth
        bad = [layer for layer in self.feature_layers if not 1 <= layer <= depth]
        if not self.feature_layers or bad:
            raise ValueError(f"feature_layers must be non-empty and within 1..{depth}; got {self.feature_layers}")
        if self.dense_attention is not None:
            if self.dense_attention not in DENSE_ATTENTION_KINDS:
                raise ValueError(
                    f"dense_attention must be one of {sorted(DENSE_ATTENTION_KINDS)} or None; "
                    f"got {self.dense_attention!r}"
                )
            if not 1 <= self.dense_start_layer <= depth:
                raise ValueError(f"dense_start_layer must be within 1..{depth}; got {self.dense_start_layer}")
        if self.pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(
                f"pos_embed_interpolation must be one of {POS_EMBED_INTERPOLATIONS}; "
                f"got {self.pos_embed_interpolation!r}"
            )
        patch = self.clip_config.vision_config.patch_size
        if self.image_size <= 0 or self.image_size % patch:
            raise ValueError(f"image_size must be a positive multiple of the patch size {patch}; got {self.image_size}")
        if self.temperature <= 0 or self.gaussian_sigma < 0:
            raise ValueError("temperature must be > 0 and gaussian_sigma >= 0")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}; got {self.image_score!r}")
        if not 0.0 <= self.joint_score_alpha <= 1.0:
            raise ValueError(f"joint_score_alpha must be within [0, 1]; got {self.joint_score_alpha}")
        if self.joint_score_pooling not in JOINT_SCORE_POOLINGS:
            raise ValueError(f"joint_score_pooling must be one of {JOINT_SCORE_POOLINGS}; got {self.joint_score_pooling!r}")
        if not 0.0 < self.joint_score_topk_fraction <= 1.0:
            raise ValueError(f"joint_score_topk_fraction must be within (0, 1]; got {self.joint_score_topk_fraction}")
        for name in ("image_threshold", "pixel_threshold"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None; got {value!r}")
        if self.reference_fusion not in REFERENCE_FUSIONS:
            raise ValueError(f"reference_fusion must be one of {REFERENCE_FUSIONS}; got {self.reference_fusion!r}")
