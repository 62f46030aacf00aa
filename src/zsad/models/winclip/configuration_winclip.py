"""Configuration of WinCLIP / WinCLIP+ (Jeong et al., CVPR 2023; docs/models/winclip.md)."""

from __future__ import annotations

from typing import ClassVar

from ..zsad_clip.configuration_zsad_clip import ZeroShotCLIPConfig


class WinCLIPConfig(ZeroShotCLIPConfig):
    r"""Training-free WinCLIP: plain CLIP (no dense attention), the compositional prompt ensemble of
    `ZeroShotCLIPConfig` (`object_name` fills the class slot: "object", or the class name), window
    embeddings at `window_sizes` (in patches, stride 1), the full-image zero-shot score. With normal
    references set it is WinCLIP+ (the memory holds the final-layer patch and the window embeddings).

    Args (besides `ZeroShotCLIPConfig`'s):
        window_sizes: side lengths of the sliding windows in patches (the paper: 2 and 3, the small and
            mid scales of a 15 x 15 grid).
        image_size: defaults to the backbone's native resolution (224 for ViT-B/16, 240 for the paper's
            ViT-B/16+), so that windows cover the same share of the image as in the paper.
    Defaults otherwise follow anomalib's WinClip: temperature 0.07, no Gaussian smoothing.
    """

    model_type = "zsad_winclip"
    default_feature_fractions: ClassVar[tuple[float, ...]] = (1.0,)

    dense_attention: str | None = None
    global_post_layernorm: bool = True
    pos_embed_interpolation: str = "bicubic"
    gaussian_sigma: float = 0.0
    window_sizes: list[int] | tuple[int, ...] = (2, 3)

    def __post_init__(self, **kwargs):
        native_size = self.image_size is None
        super().__post_init__(**kwargs)
        if native_size:
            self.image_size = self.clip_config.vision_config.image_size
        self.window_sizes = [int(size) for size in self.window_sizes]
        if not self.window_sizes or min(self.window_sizes) < 1:
            raise ValueError(f"window_sizes must be a non-empty list of positive sizes; got {self.window_sizes}")
        self._validate_zsad_fields()
