"""HeadCLIP configuration (METHODS.md §4.2)."""

from __future__ import annotations

from typing import ClassVar

from ..anomalyclip.configuration_anomalyclip import AnomalyCLIPConfig

HEAD_WEIGHT_STREAMS = ("both", "dense")
HEAD_WEIGHT_MODES = ("static", "dynamic")


class HeadCLIPConfig(AnomalyCLIPConfig):
    r"""HeadCLIP: AnomalyCLIP (every `AnomalyCLIPConfig` field keeps its meaning and default) plus learnable
    head weights in the vision tower and the joint anomaly score.

    Args (besides `AnomalyCLIPConfig`'s):
        head_weight_streams: `both`: one weight table for the standard q-k attention of every layer and
            one for the dense (V-V) attention of the dense layers; `dense`: the dense table only.
        head_weight_mode: `static` (`w = 1 + delta`, delta learned, initialised to 0) or `dynamic`
            (`w = 1 + G(e0)`, G a zero-initialised Linear from the normalised prompt-free global embedding
            e0 of each image, computed by one extra no-grad pass).
        image_score: `joint` by default (HeadCLIP's JAS: `joint_score_alpha * p_global + (1 - alpha) *
            pool(anomaly map)`); `global` gives AnomalyCLIP's score.
    """

    model_type = "zsad_headclip"
    # METHODS.md §4.2 / §7: AnomalyCLIP's training (Adam lr 1e-3, betas (0.5, 0.999), batch 8, 15 epochs,
    # seed 111); the head weights use the prompts' learning rate.
    training_defaults: ClassVar[dict | None] = {
        "optimizer": "adam", "learning_rate": 1e-3, "betas": (0.5, 0.999), "weight_decay": 0.0,
        "batch_size": 8, "num_epochs": 15, "seed": 111,
    }

    image_score: str = "joint"
    head_weight_streams: str = "both"
    head_weight_mode: str = "static"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.head_weight_streams not in HEAD_WEIGHT_STREAMS:
            raise ValueError(f"head_weight_streams must be one of {HEAD_WEIGHT_STREAMS}; got {self.head_weight_streams!r}")
        if self.head_weight_mode not in HEAD_WEIGHT_MODES:
            raise ValueError(f"head_weight_mode must be one of {HEAD_WEIGHT_MODES}; got {self.head_weight_mode!r}")
        if self.dense_attention is None:
            raise ValueError("HeadCLIP weights the heads of the dense stream: dense_attention cannot be None")

    @property
    def head_weight_layers(self) -> list[int]:
        """1-indexed layers of the standard (q-k) weight table (every layer with `both`, none with `dense`)."""
        return list(range(1, self.vision_depth + 1)) if self.head_weight_streams == "both" else []

    @property
    def dense_head_weight_layers(self) -> list[int]:
        """1-indexed layers of the dense-stream weight table: `dense_start_layer` to the last layer."""
        return list(range(self.dense_start_layer, self.vision_depth + 1))
