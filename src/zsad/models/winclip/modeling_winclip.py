"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation",
CVPR 2023; docs/models/winclip.md). Training-free.

- Text (§4.1): the compositional prompt ensemble (state words x templates), shared with `ZeroShotCLIP`.
- Image score (§4.1): softmax over [normal, anomaly] of the full image's CLIP embedding vs. the text.
- Map (§4.2): window embeddings at every window size (attention restricted to the window's patches and
  the class token, `zsad.clip.windows`) scored like the image; window scores go to patches by the
  harmonic mean over the windows covering them; the scales and the full-image score (as a constant
  map) are combined by their harmonic mean, as anomalib's WinClip does.
- WinCLIP+ (§4.3): `set_normal_references(images)` keeps the final-layer patch tokens (after
  `post_layernorm`, without the visual projection, as anomalib; `memory_projection=True` projects them)
  and the window embeddings of the normal images; each test patch / window scores 1/2 (1 - max cos)
  against them, windows are aggregated harmonically, the groups averaged; map and score are fused with
  the zero-shot ones (`config.reference_fusion`), the memory's image score being the maximum of its patch
  grid (`memory_image_score="grid"`, anomalib's) or of the upsampled map (`"map"`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...clip.vision import VisionFeatures, project_tokens
from ...clip.windows import harmonic_aggregation, window_embeddings, window_patch_indices
from ...scoring import similarity_logits, upsample_patch_scores
from ..zsad_clip.modeling_zsad_clip import WINCLIP_CITATION, ZeroShotCLIPModel
from .configuration_winclip import WinCLIPConfig


class WinCLIPModel(ZeroShotCLIPModel):
    config_class = WinCLIPConfig
    card_info = {
        "name": "WinCLIP",
        "tag": "training-free",
        "summary": "training-free CLIP with the compositional prompt ensemble, multi-scale window embeddings "
        "aggregated by harmonic mean, and the full-image zero-shot score; WinCLIP+ with normal reference images.",
        "paper": "[WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation](https://arxiv.org/abs/2303.14814), CVPR 2023",
        "citation": WINCLIP_CITATION,
        "training_data": "none (training-free; WinCLIP+ uses k normal reference images of the target class)",
    }

    def image_features(self, pixel_values: torch.Tensor, categories: Sequence[str] | None = None) -> VisionFeatures:
        """The full-image pass (global embedding; final-layer patch tokens after `post_layernorm`, projected
        with `memory_projection`) and, in `extras["window_embeds"]`, the window embeddings of every window
        size (§4.2)."""
        with torch.no_grad():
            features = self.encode_image(pixel_values, project_patches=False)
            if self.config.memory_projection:
                features.patch_embeds = tuple(project_tokens(self.clip, tokens) for tokens in features.patch_embeds)
            else:
                features.patch_embeds = tuple(self.clip.vision_model.post_layernorm(tokens) for tokens in features.patch_embeds)
            windows, _ = window_embeddings(
                self.clip,
                pixel_values,
                self.config.window_sizes,
                pos_embed_interpolation=self.config.pos_embed_interpolation,
                global_post_layernorm=self.config.global_post_layernorm,
            )
        features.extras["window_embeds"] = windows
        return features

    def _to_patches(self, window_scores: list[torch.Tensor], grid_size: tuple[int, int]) -> list[torch.Tensor]:
        """Per window size, `(B, W)` window scores -> `(B, N)` patch scores by the harmonic mean."""
        num_patches = grid_size[0] * grid_size[1]
        return [
            harmonic_aggregation(scores, window_patch_indices(grid_size, size, scores.device), num_patches)
            for scores, size in zip(window_scores, self.config.window_sizes)
        ]

    def patch_logits(self, features: VisionFeatures, text: torch.Tensor) -> list[torch.Tensor]:
        """Per scale, `(B, N, 2)` log-probabilities `[log(1 - s), log s]` of the patch anomaly score s: the
        full image's score at every patch, then each window size's harmonically aggregated scores."""
        temperature = self.config.temperature
        num_patches = features.grid_size[0] * features.grid_size[1]
        image = similarity_logits(features.global_embeds, text, temperature).softmax(dim=-1)[:, 1]
        windows = [similarity_logits(w, text, temperature).softmax(dim=-1)[..., 1] for w in features.extras["window_embeds"]]
        scales = [image[:, None].expand(-1, num_patches), *self._to_patches(windows, features.grid_size)]
        return [torch.stack([1.0 - s, s], dim=-1).log() for s in scales]

    def map_probabilities(self, patch_logits, grid_size, size) -> list[torch.Tensor]:
        """One `(B, 2, H, W)` map: the harmonic mean of the scales' anomaly scores, bilinearly upsampled."""
        scores = torch.stack([logits.softmax(dim=-1)[..., 1] for logits in patch_logits])
        combined = len(patch_logits) / scores.reciprocal().sum(dim=0)
        return [upsample_patch_scores(torch.stack([1.0 - combined, combined], dim=-1), grid_size, size)]

    def reference_features(self, features: VisionFeatures) -> list[torch.Tensor]:
        """WinCLIP+ memory (§4.3): the final-layer patch embeddings, then the windows of every size."""
        return [*features.patch_embeds, *features.extras["window_embeds"]]

    def memory_image_scores(self, patch_scores: torch.Tensor, memory_map: torch.Tensor) -> torch.Tensor:
        """The memory's maximum on the patch grid (`memory_image_score="grid"`, anomalib's) or on the map."""
        if self.config.memory_image_score == "grid":
            return patch_scores.amax(dim=1)
        return super().memory_image_scores(patch_scores, memory_map)

    def memory_patch_scores(self, scores: list[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
        """Mean of the patch scores and the harmonically aggregated window scores (§4.3)."""
        layers = len(self.config.feature_layers)
        return torch.stack([*scores[:layers], *self._to_patches(scores[layers:], grid_size)]).mean(dim=0)
