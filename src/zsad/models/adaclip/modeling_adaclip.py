"""AdaCLIP (Cao et al., ECCV 2024): hybrid learnable prompts for zero-shot anomaly detection.

- A prompt-free pass of the frozen image encoder gives the global embedding e; static + dynamic prompts
  (J = 4 layers, L = 5 tokens, dynamic part generated from e) enter both encoders (§3.2).
- Dense features: raw residual-stream tokens of layers 6/12/18/24 (no dense attention), one learned
  Linear per layer; global: a learned Linear on CLIP's pooled embedding of the prompted pass (§3.1).
- Text: the class-aware ensemble (7 normal / 5 abnormal states x 4 templates) through the prompted text
  encoder, once per image because the prompts depend on the image (so any batch size works).
- Map: softmax of the layer-mean logits (x100), bilinear (align_corners=True), Gaussian sigma 4; image
  score: hybrid semantic fusion of the top-patch K-means centroid with the global embedding (§3.3).
- Loss: focal(image) + sum over layers of focal + dice_a + dice_n (§3.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...adapters.hybrid_prompts import HybridPrompts
from ...adapters.projections import FeatureProjections
from ...clip.text import TokenizedPrompts, encode_text
from ...losses import focal_loss, segmentation_loss
from ...clip.vision import VisionFeatures
from ...modeling_base import ZSADPreTrainedModel
from ...modeling_checkpoints import load_tokenizer
from ...scoring import similarity_logits, upsample_patch_scores
from ..zsad_clip.configuration_zsad_clip import ANOMALY_STATES, NORMAL_STATES
from .configuration_adaclip import ADACLIP_TEMPLATES, AdaCLIPConfig

ADACLIP_CITATION = """@inproceedings{cao2024adaclip,
  title     = {AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection},
  author    = {Cao, Yunkang and Zhang, Jiangning and Frittoli, Luca and Cheng, Yuqi and Shen, Weiming and Boracchi, Giacomo},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}"""


def prompt_ensemble(class_name: str) -> tuple[list[str], list[str]]:
    """The 28 normal and 20 anomaly sentences of `class_name`: 7 / 5 states x 4 templates, state-major (§3.2).

    Hyphens in the name become spaces ("metal-nut" -> "metal nut"), as in the reference.
    """
    name = class_name.replace("-", " ")
    return tuple(
        [template.format(state.format(name)) for state in states for template in ADACLIP_TEMPLATES]
        for states in (NORMAL_STATES, ANOMALY_STATES)
    )


NUM_NORMAL_SENTENCES = len(NORMAL_STATES) * len(ADACLIP_TEMPLATES)
SENTENCES_PER_CLASS = NUM_NORMAL_SENTENCES + len(ANOMALY_STATES) * len(ADACLIP_TEMPLATES)


def _squared_distances(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    # Pairwise differences rather than the matmul expansion: exact and independent of the batch. ONNX
    # has no cdist, so an export writes the same differences out (B x M x K x D floats in the graph).
    if torch.compiler.is_exporting():
        return (points.unsqueeze(2) - centers.unsqueeze(1)).square().sum(dim=-1)
    return torch.cdist(points, centers, compute_mode="donot_use_mm_for_euclid_dist").square()


def kmeans(points: torch.Tensor, num_clusters: int, iterations: int) -> torch.Tensor:
    """Batched, deterministic K-means on the device: `(B, M, D)` points -> `(B, M)` cluster labels.

    Farthest-point initialisation from the first point (AdaCLIP's HSF passes the patches sorted by
    anomaly score, so the most anomalous patch seeds the first cluster), then a fixed number of Lloyd
    iterations; a cluster that loses all its points keeps its previous center. No host synchronisation.
    """
    if not 1 <= num_clusters <= points.shape[1]:
        raise ValueError(f"num_clusters must be within 1..{points.shape[1]} (the number of points); got {num_clusters}")
    centers = points[:, :1]
    nearest = _squared_distances(points, centers)[..., 0]
    for _ in range(num_clusters - 1):
        farthest = nearest.argmax(dim=1)
        new_center = points.gather(1, farthest[:, None, None].expand(-1, 1, points.shape[-1]))
        centers = torch.cat([centers, new_center], dim=1)
        nearest = torch.minimum(nearest, _squared_distances(points, new_center)[..., 0])
    for _ in range(iterations):
        members = F.one_hot(_squared_distances(points, centers).argmin(dim=2), num_clusters).to(points.dtype)
        counts = members.sum(dim=1).unsqueeze(-1)
        sums = members.transpose(1, 2) @ points
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    return _squared_distances(points, centers).argmin(dim=2)


def hybrid_semantic_fusion(
    patch_features: list[torch.Tensor],
    anomaly_probabilities: torch.Tensor,
    global_features: torch.Tensor,
    *,
    num_clusters: int,
    patches_per_cluster: int,
    weight: float,
    iterations: int,
) -> torch.Tensor:
    """AdaCLIP's HSF as implemented in the reference code: `(B, D)` image embeddings.

    The `num_clusters * patches_per_cluster` most anomalous patches (capped by the number of patches)
    are clustered on their concatenated per-layer features; each cluster's centroid is the mean of its
    member tokens over members and layers; the mean of the non-empty clusters' centroids, normalised,
    is `c`, and the result is `normalise(weight * c + (1 - weight) * g')`.

    Args:
        patch_features: per layer, `(B, N, D)` L2-normalised projected patch features.
        anomaly_probabilities: `(B, N)` patch anomaly probabilities (from the layer-mean logits).
        global_features: `(B, D)` L2-normalised projected global embedding g'.
    """
    num_patches = anomaly_probabilities.shape[1]
    num_selected = min(num_clusters * patches_per_cluster, num_patches)
    num_clusters = min(num_clusters, num_selected)
    top = anomaly_probabilities.topk(num_selected, dim=1).indices  # sorted: most anomalous first
    layers = torch.stack(patch_features, dim=2)  # (B, N, layers, D)
    selected = layers.gather(1, top[:, :, None, None].expand(-1, -1, *layers.shape[2:]))
    labels = kmeans(selected.detach().flatten(2).float(), num_clusters, iterations)
    members = F.one_hot(labels, num_clusters).to(selected.dtype)  # (B, M, K)
    counts = members.sum(dim=1)
    centroids = (members.transpose(1, 2) @ selected.mean(dim=2)) / counts.clamp_min(1).unsqueeze(-1)
    present = (counts > 0).to(centroids.dtype)
    centroid = (centroids * present.unsqueeze(-1)).sum(dim=1) / present.sum(dim=1, keepdim=True)
    fused = weight * F.normalize(centroid, dim=-1) + (1.0 - weight) * global_features
    return F.normalize(fused, dim=-1)


class AdaCLIPModel(ZSADPreTrainedModel):
    config_class = AdaCLIPConfig
    card_info = {
        "name": "AdaCLIP",
        "tag": "adaclip",
        "summary": "hybrid static + dynamic learnable prompts in both CLIP encoders, learned projections of "
        "multi-layer patch tokens, a class-aware prompt ensemble and hybrid semantic fusion for the image score.",
        "paper": "[AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection]"
        "(https://arxiv.org/abs/2407.15795), ECCV 2024",
        "citation": ADACLIP_CITATION,
        "training_data": "the test split of MVTec AD + ColonDB (-> VisA and others) or VisA + ClinicDB "
        "(-> MVTec AD, ColonDB)",
    }

    class_aware = True
    trains_through_vision = True  # visual prompts: gradients pass through the frozen tower

    def __init__(self, config: AdaCLIPConfig):
        super().__init__(config)
        vision_width = config.clip_config.vision_config.hidden_size
        text_config = config.clip_config.text_config
        embed_dim = config.clip_config.projection_dim
        depth, length = config.prompt_depth, config.prompt_length
        self.vision_prompts = HybridPrompts(depth, length, vision_width, embed_dim)
        # The static text tokens of layer 1 are never read (text prompts start at layer 2), as in the
        # reference; they are kept so the parameter layout and count match it.
        self.text_prompts = HybridPrompts(depth, length, text_config.hidden_size, embed_dim)
        self.projections = FeatureProjections(len(config.feature_layers), vision_width, embed_dim)
        token_ids = None
        if config.prompt_token_ids is not None:
            token_ids = [sentence for sentences in config.prompt_token_ids for sentence in sentences]
        self.prompt_tokens = TokenizedPrompts(token_ids, text_config.max_position_embeddings)
        self.post_init()

    @classmethod
    def tokenize_prompts(cls, config: AdaCLIPConfig, tokenizer) -> None:
        length = config.clip_config.text_config.max_position_embeddings
        config.prompt_token_ids = []
        for class_name in config.class_names:
            normal, anomaly = prompt_ensemble(class_name)
            ids = [list(t) for t in tokenizer(normal + anomaly, truncation=True, max_length=length)["input_ids"]]
            if config.prompt_depth > 1 and min(map(len, ids)) <= config.prompt_length + 1:
                raise ValueError(
                    f"the text prompts overwrite positions 1..{config.prompt_length}, which would reach the "
                    f"end-of-text token of a sentence for {class_name!r} that this tokenizer makes too short"
                )
            config.prompt_token_ids.append(ids)

    def set_class_names(self, class_names: Sequence[str], tokenizer=None) -> None:
        """Tokenize the class-aware prompt ensemble for `class_names` (AdaCLIP needs the category, §3.2).

        `tokenizer` defaults to the backbone's, loaded from `config.backbone_name_or_path`.
        """
        if tokenizer is None:
            tokenizer = load_tokenizer(self.config.backbone_name_or_path)
        config = type(self.config).from_dict({**self.config.to_dict(), "class_names": list(class_names)})
        self.tokenize_prompts(config, tokenizer)
        self.config.class_names, self.config.prompt_token_ids = config.class_names, config.prompt_token_ids
        token_ids = [sentence for sentences in config.prompt_token_ids for sentence in sentences]
        context_length = self.prompt_tokens.input_ids.shape[1]
        self.prompt_tokens = TokenizedPrompts(token_ids, context_length).to(self.prompt_tokens.input_ids.device)

    def constant_text_features(self, class_name: str | None = None) -> None:
        """None: the dynamic prompts come from each image's embedding (§3.2)."""
        return None

    def class_indices(self, categories: str | Sequence[str] | None, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B,)` index into `config.class_names` of every image's category (one name for all images, or one
        each). One class for the whole batch gives a tensor of the batch's (possibly symbolic) size, so the
        ONNX export keeps a dynamic batch axis."""
        names, batch_size = self.config.class_names, pixel_values.shape[0]
        if categories is None:
            if len(names) > 1:
                raise ValueError(f"this AdaCLIP model has prompts for {names}: pass categories=[...] (one per image)")
            categories = names[0]
        if isinstance(categories, str):
            categories = [categories]
        elif len(categories) != batch_size:
            raise ValueError(f"categories must name one class per image ({batch_size}); got {len(categories)}")
        unknown = sorted(set(categories) - set(names))
        if unknown:
            raise ValueError(
                f"no prompts for the categories {unknown}; this model knows {names} "
                "(add them with model.set_class_names([...]))"
            )
        indices = torch.tensor([names.index(category) for category in categories], device=pixel_values.device)
        return indices.expand(batch_size) if len(categories) == 1 else indices

    def encode_prompt_ensemble(self, text_prompts: torch.Tensor, class_indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """`(B, 2, D)` normalised [normal, anomaly] text embeddings, one pair per image.

        Every sentence of image b's class (`class_indices[b]`) runs with b's prompt tokens `(B, J, L, W)`
        overwriting positions 1..L before text layers 2..J; per state group the normalised sentence
        embeddings are averaged and re-normalised.
        """
        if not self.prompt_tokens.is_tokenized:
            raise ValueError(
                "this AdaCLIP model has no prompt token ids: build it with AdaCLIPModel.from_backbone(...) "
                "or load a checkpoint with from_pretrained(...)"
            )
        tokens, batch = self.prompt_tokens, text_prompts.shape[0]
        class_indices = torch.as_tensor(class_indices, device=tokens.input_ids.device)
        input_ids = tokens.input_ids[:, : tokens.max_length].view(-1, SENTENCES_PER_CLASS, tokens.max_length)
        eos_positions = tokens.eos_positions.view(-1, SENTENCES_PER_CLASS)
        deep_prompts = {
            layer: text_prompts[:, layer - 1].repeat_interleave(SENTENCES_PER_CLASS, dim=0)
            for layer in range(2, text_prompts.shape[1] + 1)
        }
        sentences = encode_text(
            self.clip,
            input_ids[class_indices].flatten(0, 1),
            deep_prompts=deep_prompts,
            pooling_positions=eos_positions[class_indices].flatten(),
        )
        sentences = F.normalize(sentences, dim=-1).view(batch, SENTENCES_PER_CLASS, -1)
        normal, anomaly = sentences[:, :NUM_NORMAL_SENTENCES], sentences[:, NUM_NORMAL_SENTENCES:]
        return F.normalize(torch.stack([normal.mean(dim=1), anomaly.mean(dim=1)], dim=1), dim=-1)

    # ------------------------------------------------------------------ pipeline steps
    def image_features(self, pixel_values: torch.Tensor, categories: Sequence[str] | None = None) -> VisionFeatures:
        """The prompt-free pass conditions the hybrid prompts (§3.2); the prompted pass's raw tokens of the
        feature layers and its pooled global embedding go through the learned projections (§3.1).

        `extras` carries the prompt-free embedding and each image's class index for the text step.
        """
        class_indices = self.class_indices(categories, pixel_values)
        image_embeds = self.prompt_free_embeds(pixel_values)
        vision_prompts = self.vision_prompts(image_embeds)
        features = self.encode_image(
            pixel_values,
            visual_prompts={layer: vision_prompts[:, layer - 1] for layer in range(1, self.config.prompt_depth + 1)},
            project_patches=False,
        )
        features.patch_embeds = tuple(
            F.normalize(projection(tokens), dim=-1) for projection, tokens in zip(self.projections.patch, features.patch_embeds)
        )
        features.global_embeds = F.normalize(self.projections.image(features.global_embeds), dim=-1)
        features.extras.update(prompt_free_embeds=image_embeds, class_indices=class_indices)
        return features

    def prompt_text_features(self, features: VisionFeatures, categories: Sequence[str] | None = None) -> torch.Tensor:
        """`(B, 2, D)`: each image's class ensemble through its own prompted text encoder (§3.2)."""
        text_prompts = self.text_prompts(features.extras["prompt_free_embeds"])
        return self.encode_prompt_ensemble(text_prompts, features.extras["class_indices"])

    def image_logits(self, features: VisionFeatures, text: torch.Tensor, patch_logits: list[torch.Tensor]) -> torch.Tensor:
        """Hybrid semantic fusion of the top-patch K-means centroid with the global embedding (§3.3), or
        the projected global embedding alone when `hybrid_semantic_fusion` is off."""
        cfg = self.config
        image_features = features.global_embeds
        if cfg.hybrid_semantic_fusion:
            image_features = hybrid_semantic_fusion(
                list(features.patch_embeds),
                torch.stack(patch_logits).mean(dim=0).softmax(dim=-1)[..., 1],
                image_features,
                num_clusters=cfg.hsf_num_clusters,
                patches_per_cluster=cfg.hsf_patches_per_cluster,
                weight=cfg.hsf_weight,
                iterations=cfg.hsf_kmeans_iterations,
            )
        return similarity_logits(image_features, text, cfg.temperature)

    def map_probabilities(self, patch_logits, grid_size, size) -> list[torch.Tensor]:
        """Softmax of the layer-mean logits after bilinear upsampling with `align_corners=True` (§3.3)."""
        mean_logits = torch.stack(patch_logits).mean(dim=0)
        return [upsample_patch_scores(mean_logits, grid_size, size, align_corners=True).softmax(dim=1)]

    def loss_probabilities(self, patch_logits, grid_size, size, map_probabilities) -> list[torch.Tensor]:
        """Training maps: softmax per layer, no averaging (§3.3)."""
        return [upsample_patch_scores(logits, grid_size, size, align_corners=True).softmax(dim=1) for logits in patch_logits]

    def compute_loss(self, image_logits, pixel_probabilities, labels, masks) -> torch.Tensor:
        """Focal(image probabilities) + sum over layers of focal + dice_a + dice_n."""
        loss = focal_loss(image_logits.softmax(dim=-1)[:, :, None, None], labels[:, None, None])
        if masks is not None:
            loss = loss + sum(segmentation_loss(p, masks) for p in pixel_probabilities)
        return loss
