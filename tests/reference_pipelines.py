"""Independent end-to-end references of every zsad method, from METHODS.md and transformers' modules alone.

Nothing here imports zsad: a zsad model is read only as a container of *data* (its `clip` / `dino`
transformers modules, its config values, its state-dict tensors and stored token ids). Everything else
is written out again from METHODS.md: the vision loop with per-head attention and the dense dual path
(§2.1, §5.1), position-embedding interpolation (§1), visual prompts (§3.2), the causal text loop with
context vectors and deep tokens (§2.3, §3.2, §5.2), upsampling (own interpolation matrices), the Gaussian
filter (scipy), softmax maps and scores (§2.4, §3.3, §5.3), K-means and HSF (§3.3, §11.7), D-Attn
(§5.1), DA-CLIP's router, domain prompt bank, LoRA experts and auxiliary losses (§6.2) and the losses
(§2.5, §3.4, §5.4). WinCLIP is not in METHODS.md: its reference follows the paper
(Jeong et al., CVPR 2023, §4.1-4.3) as docs/models/winclip.md summarises it, with windows cropped from
the token grid one by one; the normal-reference memory (WinCLIP+ §4.3) as docs/few_shot.md describes it.
All arithmetic runs in float64 on copies of the modules.

Adding a method: write `def my_method(model, pixels, *, categories=None, masks=None, labels=None,
training=False) -> Expected` from the building blocks below and register it in `REFERENCES` under the
config's `model_type`; tests/test_reference_pipelines.py then requires and runs it. References that
also take `normal_images=` (k normal images) add the memory map as `set_normal_references` does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

Tensor = torch.Tensor
DTYPE = torch.float64

# METHODS.md §1 (OpenAI CLIP normalisation) and the ImageNet statistics DINOv2 expects (§5.1).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Expected:
    """What a reference computes for a batch: `(B, H, W)` maps, `(B,)` scores, `(B, 2)` image logits, loss."""

    anomaly_maps: Tensor
    pred_scores: Tensor
    image_logits: Tensor
    loss: Tensor | None = None


# ---------------------------------------------------------------------------------------------- basics
def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64, eval-mode deep copy (the model under test keeps its own float32 weights)."""
    return copy.deepcopy(module).to(DTYPE).eval()


def normalize(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = x @ weight.to(DTYPE).t()
    return out if bias is None else out + bias.to(DTYPE)


def dense_kinds(setting: str | None) -> list[str]:
    """`"qq+kk+vv"` -> `["q", "k", "v"]` (each self-correlation `XX^T`), `None` -> `[]`."""
    if not setting:
        return []
    return [part[0] for part in setting.split("+")]


# ------------------------------------------------------------------------------------- interpolation
def _keys_cubic(distance: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (the one of PyTorch's bicubic mode)."""
    d = abs(distance)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.0


def resize_matrix(n_in: int, n_out: int, mode: str, align_corners: bool = False) -> Tensor:
    """`(n_out, n_in)` matrix of 1-D resampling (`nearest`, `bilinear` or `bicubic`; border clamped)."""
    matrix = torch.zeros(n_out, n_in, dtype=DTYPE)
    for i in range(n_out):
        if mode == "nearest":
            matrix[i, min(math.floor(i * n_in / n_out), n_in - 1)] = 1.0
            continue
        if align_corners:
            x = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            x = (i + 0.5) * n_in / n_out - 0.5
        if mode == "bilinear":
            x = max(x, 0.0)
            x0 = min(math.floor(x), n_in - 1)
            x1 = min(x0 + 1, n_in - 1)
            t = x - x0
            matrix[i, x0] += 1 - t
            matrix[i, x1] += t
        elif mode == "bicubic":
            x0 = math.floor(x)
            t = x - x0
            for offset in (-1, 0, 1, 2):
                matrix[i, min(max(x0 + offset, 0), n_in - 1)] += _keys_cubic(offset - t)
        else:
            raise ValueError(mode)
    return matrix


def resize_grid(grid: Tensor, size: tuple[int, int], mode: str, align_corners: bool = False) -> Tensor:
    """`(..., h, w)` -> `(..., H, W)` with separable resampling matrices."""
    rows = resize_matrix(grid.shape[-2], size[0], mode, align_corners)
    cols = resize_matrix(grid.shape[-1], size[1], mode, align_corners)
    return torch.einsum("rh,...hw,cw->...rc", rows, grid.to(DTYPE), cols)


def upsample(scores: Tensor, grid: tuple[int, int], size: tuple[int, int], mode: str = "bilinear",
             align_corners: bool = False) -> Tensor:
    """`(B, N, C)` per-patch values (row-major grid) -> `(B, C, H, W)`."""
    batch, _, channels = scores.shape
    return resize_grid(scores.transpose(1, 2).reshape(batch, channels, *grid), size, mode, align_corners)


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """scipy's `gaussian_filter(sigma, mode="reflect", truncate=4)` on every `(H, W)` map (§1)."""
    if sigma <= 0:
        return maps
    smoothed = [gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0) for m in maps.detach().cpu().numpy()]
    return torch.from_numpy(np.stack(smoothed))


# -------------------------------------------------------------------------------------------- vision
@dataclass
class VisionOutput:
    global_embeds: Tensor  # (B, P)
    patch_tokens: list[Tensor]  # per feature layer (B, N, P) projected, or (B, N, W) raw
    grid: tuple[int, int]
    guided_tokens: Tensor | None = None  # Crane+ D-Attn output, projected like the patches


def _position_table(embeddings, grid: tuple[int, int], mode: str) -> Tensor:
    table = embeddings.position_embedding.weight
    side = math.isqrt(table.shape[0] - 1)
    patches = table[1:].reshape(side, side, -1).permute(2, 0, 1)
    resized = resize_grid(patches, grid, mode).permute(1, 2, 0).reshape(grid[0] * grid[1], -1)
    return torch.cat([table[:1], resized])


def _attention_heads(q: Tensor, k: Tensor, v: Tensor, heads: int, kinds: Sequence[str], causal: bool = False,
                     weights: Tensor | None = None, dense_weights: Tensor | None = None):
    """Per head: standard softmax(QK^T/sqrt d)V and, when `kinds`, sum_x softmax(XX^T/sqrt d) V; head h's
    outputs times `weights[:, h]` / `dense_weights[:, h]` (`(B, H)`, HeadCLIP §4.2) when given."""
    width = q.shape[-1]
    d = width // heads
    standard, dense = [], []
    length = q.shape[-2]
    mask = torch.ones(length, length, dtype=torch.bool).triu(1) if causal else None
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        qh, kh, vh = q[..., part], k[..., part], v[..., part]
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        scale = 1.0 if weights is None else weights[:, h, None, None].to(DTYPE)
        standard.append(softmax(scores) @ vh * scale)
        if kinds:
            projected = {"q": qh, "k": kh, "v": vh}
            correlation = sum(softmax(projected[x] @ projected[x].transpose(-1, -2) / math.sqrt(d)) for x in kinds)
            dense_scale = 1.0 if dense_weights is None else dense_weights[:, h, None, None].to(DTYPE)
            dense.append(correlation @ vh * dense_scale)
    return torch.cat(standard, dim=-1), (torch.cat(dense, dim=-1) if kinds else None)


def vision_tower(
    clip,
    pixels: Tensor,
    *,
    feature_layers: Sequence[int],
    dense_attention: str | None = None,
    dense_start_layer: int | None = None,
    interpolation: str = "bicubic",
    global_post_layernorm: bool = True,
    project_patches: bool = True,
    visual_prompts: Mapping[int, Tensor] | None = None,
    guided_attention: tuple[int, Tensor, str] | None = None,
    head_weights: Mapping[int, Tensor] | None = None,
    dense_head_weights: Mapping[int, Tensor] | None = None,
    dense_adapters: Mapping[int, Callable[[Tensor], Tensor]] | None = None,
    window: int | None = None,
) -> VisionOutput:
    """The CLIP vision tower by hand (float64 `clip`).

    Dense dual path (§2.1): from `dense_start_layer` on, z_s = h_{s-1} + D(LN1(h_{s-1})) and
    z_l = z_{l-1} + D(LN1(h_{l-1})), D = W_O(sum_x softmax(XX^T/sqrt d) V) + b, no MLP; taps read z once
    it exists. `visual_prompts[l]` `(B, n, W)`: the tokens after the 1 + N image tokens become these before
    layer l (appended the first time, replaced later; §3.2). `guided_attention = (layer, A, source)`:
    W_O(A V) + b with V from LN1 of that layer's input (`layer_input`) or of the stream after its
    attention residual (`post_attention`, §11.1), patch tokens only. `dense_adapters[l]` maps the dense
    stream's `(B, N, W)` patch tokens to new ones right after layer l's dense update (DA-CLIP's DAKA, §6.2.3).
    `window = k`: the tower runs on every k x k block of the patch grid instead (WinCLIP §4.2,
    `window_sequences`): B * W outputs, image-major.
    """
    vision = clip.vision_model
    embeddings = vision.embeddings
    patches = embeddings.patch_embedding(pixels.to(DTYPE))
    batch, width, rows, cols = patches.shape
    tokens = torch.cat([embeddings.class_embedding.expand(batch, 1, width), patches.flatten(2).transpose(1, 2)], dim=1)
    hidden = vision.pre_layrnorm(tokens + _position_table(embeddings, (rows, cols), interpolation))
    if window is not None:
        hidden = window_sequences(hidden, (rows, cols), window)
    num_tokens = 1 + rows * cols
    kinds = dense_kinds(dense_attention)
    dense, taps, guided = None, {}, None
    for index, layer in enumerate(vision.encoder.layers, start=1):
        if visual_prompts and index in visual_prompts:
            hidden = torch.cat([hidden[:, :num_tokens], visual_prompts[index].to(DTYPE)], dim=1)
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        q, k, v = attention.q_proj(normed), attention.k_proj(normed), attention.v_proj(normed)
        active = bool(kinds) and index >= dense_start_layer
        standard, dense_heads = _attention_heads(
            q, k, v, attention.num_heads, kinds if active else (),
            weights=(head_weights or {}).get(index), dense_weights=(dense_head_weights or {}).get(index),
        )
        attended = hidden + attention.out_proj(standard)
        if guided_attention is not None and guided_attention[0] == index:
            _, weights, source = guided_attention
            stream = hidden if source == "layer_input" else attended
            values = attention.v_proj(layer.layer_norm1(stream[:, 1:num_tokens]))
            guided = attention.out_proj(weights.to(DTYPE) @ values)
        if active:
            dense = (hidden if dense is None else dense) + attention.out_proj(dense_heads)
            if dense_adapters and index in dense_adapters:
                adapted = dense_adapters[index](dense[:, 1:num_tokens])
                dense = torch.cat([dense[:, :1], adapted, dense[:, num_tokens:]], dim=1)
        hidden = attended + layer.mlp(layer.layer_norm2(attended))
        if index in feature_layers:
            taps[index] = (dense if dense is not None else hidden)[:, 1:num_tokens]

    def readout(x: Tensor) -> Tensor:
        return clip.visual_projection(vision.post_layernorm(x)) if project_patches else x

    cls = hidden[:, 0]
    if global_post_layernorm:
        cls = vision.post_layernorm(cls)
    return VisionOutput(
        global_embeds=clip.visual_projection(cls),
        patch_tokens=[readout(taps[layer]) for layer in feature_layers],
        grid=(rows, cols),
        guided_tokens=readout(guided) if guided is not None else None,
    )


def vision_from_config(clip, pixels: Tensor, config, **overrides) -> VisionOutput:
    """`vision_tower` with the config's vision settings (data), overridable."""
    settings = dict(
        feature_layers=list(config.feature_layers),
        dense_attention=config.dense_attention,
        dense_start_layer=config.dense_start_layer,
        interpolation=config.pos_embed_interpolation,
        global_post_layernorm=config.global_post_layernorm,
    )
    settings.update(overrides)
    return vision_tower(clip, pixels, **settings)


# ---------------------------------------------------------------------------------------------- text
def text_tower(clip, embeds: Tensor, eos: Sequence[int] | Tensor, deep_prompts: Mapping[int, Tensor] | None = None,
               offset: int = 1) -> Tensor:
    """Projected text embeddings `(P, D)` of token embeddings `(P, L, W)`, pooled at `eos`.

    Before text layer l in `deep_prompts`, positions offset .. offset + n - 1 are overwritten by its tokens
    (`(n, W)` for all sequences or `(P, n, W)`).
    """
    text = clip.text_model
    length = embeds.shape[1]
    hidden = embeds.to(DTYPE) + text.embeddings.position_embedding.weight[:length]
    for index, layer in enumerate(text.encoder.layers, start=1):
        if deep_prompts and index in deep_prompts:
            tokens = deep_prompts[index].to(DTYPE)
            hidden = hidden.clone()
            hidden[:, offset : offset + tokens.shape[-2]] = tokens
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        q, k, v = attention.q_proj(normed), attention.k_proj(normed), attention.v_proj(normed)
        attended, _ = _attention_heads(q, k, v, attention.num_heads, (), causal=True)
        hidden = hidden + attention.out_proj(attended)
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    hidden = text.final_layer_norm(hidden)
    pooled = hidden[torch.arange(hidden.shape[0]), torch.as_tensor(eos)]
    return clip.text_projection(pooled)


def token_embeddings(clip, token_ids: Sequence[Sequence[int]]) -> tuple[Tensor, list[int]]:
    """Padded `(P, L, W)` embeddings of variable-length id lists and each one's end-of-text position."""
    length = max(map(len, token_ids))
    ids = torch.tensor([list(t) + [0] * (length - len(t)) for t in token_ids])
    return clip.text_model.embeddings.token_embedding.weight[ids], [len(t) - 1 for t in token_ids]


def mean_state_embedding(features: Tensor) -> Tensor:
    """normalise(mean(normalise(sentences))) (§2.3)."""
    return normalize(normalize(features).mean(dim=0))


def ensemble_text(clip, config) -> Tensor:
    """The hand-crafted prompt ensemble (§2.3, WinCLIP §4.1): `(2, D)` [t_n, t_a] from the stored token ids;
    `ensemble="raw_mean"` (anomalib's WinCLIP) averages the raw sentence embeddings, then normalises."""
    def state(sentences: Tensor) -> Tensor:
        return normalize(sentences.mean(dim=0)) if config.ensemble == "raw_mean" else mean_state_embedding(sentences)

    return torch.stack([
        state(text_tower(clip, *token_embeddings(clip, ids)))
        for ids in (config.normal_token_ids, config.anomaly_token_ids)
    ])


def object_agnostic_text(clip, state: Mapping[str, Tensor], config, image_embeds: Tensor | None = None,
                         deep_tokens: Tensor | None = None) -> Tensor:
    """AnomalyCLIP's two prompts (§2.3): context slots 1..n replaced by the learned vectors, deep tokens
    (the state's, or `deep_tokens (layers, m, W)`) overwriting positions 1..m before
    `config.deep_prompt_layers`; `(2, D)` normalised. With
    `image_embeds (B, P)`, Crane's conditioning (§5.2): the normalised embedding is inserted after the
    context vectors of both prompts of each image (end of text one further): `(B, 2, D)`."""
    context = state["prompt_learner.context"].to(DTYPE)
    deep = (state["prompt_learner.deep_tokens"] if deep_tokens is None else deep_tokens).to(DTYPE)
    n = context.shape[1]
    embeds, eos = token_embeddings(clip, config.prompt_token_ids)
    embeds = embeds.clone()
    embeds[:, 1 : 1 + n] = context
    deep_prompts = {layer: deep[i] for i, layer in enumerate(config.deep_prompt_layers)}
    if image_embeds is None:
        return normalize(text_tower(clip, embeds, eos, deep_prompts))
    per_image = []
    for g in normalize(image_embeds.to(DTYPE)):
        token = g.expand(2, 1, -1)
        conditioned = torch.cat([embeds[:, : 1 + n], token, embeds[:, 1 + n :]], dim=1)
        per_image.append(normalize(text_tower(clip, conditioned, [e + 1 for e in eos], deep_prompts)))
    return torch.stack(per_image)


# ------------------------------------------------------------------------------------ maps and losses
def cosine_logits(features: Tensor, text: Tensor, scale: float) -> Tensor:
    """`(B, N, 2)` scale * <f/|f|, t_c>; `text` is `(2, D)` or per image `(B, 2, D)`."""
    text = text.to(DTYPE)
    return scale * (normalize(features) @ text.transpose(-1, -2))


def probability_map(probabilities: Sequence[Tensor]) -> Tensor:
    """Mean over maps of (S_a + 1 - S_n) / 2 for `(B, 2, H, W)` probabilities (§2.4)."""
    return torch.stack([(p[:, 1] + 1 - p[:, 0]) / 2 for p in probabilities]).mean(dim=0)


def focal(probabilities: Tensor, target: Tensor, gamma: float = 2.0, eps: float = 1e-5) -> Tensor:
    """Focal loss on `(B, C, H, W)` probabilities, label clamp and smoothing 1e-5, mean over pixels (§2.5)."""
    classes = probabilities.shape[1]
    one_hot = torch.stack([(target == c).to(DTYPE) for c in range(classes)], dim=1).clamp(eps / (classes - 1), 1 - eps)
    p_t = (one_hot * probabilities).sum(dim=1) + eps
    return (-((1 - p_t) ** gamma) * torch.log(p_t)).mean()


def dice(prediction: Tensor, target: Tensor) -> Tensor:
    """1 - (2 sum(p m) + 1) / (sum(p) + sum(m) + 1) per image, batch mean (§2.5)."""
    p, m = prediction.flatten(1), target.flatten(1).to(DTYPE)
    return (1 - (2 * (p * m).sum(1) + 1) / (p.sum(1) + m.sum(1) + 1)).mean()


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    log_probabilities = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -log_probabilities[torch.arange(len(labels)), labels.long()].mean()


def _size(pixels: Tensor) -> tuple[int, int]:
    return tuple(pixels.shape[-2:])


# ------------------------------------------------------------------ windows and normal references (WinCLIP)
def window_corners(grid: tuple[int, int], size: int) -> list[tuple[int, int]]:
    """Top-left patch (row, col) of every `size x size` block of the patch grid at stride 1, row-major."""
    rows, cols = grid
    return [(top, left) for top in range(rows - size + 1) for left in range(cols - size + 1)]


def window_coverage(grid: tuple[int, int], size: int) -> Tensor:
    """`(N, W)` boolean: patch n (row-major) lies in window w (`window_corners` order)."""
    cols = grid[1]
    corners = window_corners(grid, size)
    coverage = torch.zeros(grid[0] * cols, len(corners), dtype=torch.bool)
    for w, (top, left) in enumerate(corners):
        for row in range(top, top + size):
            for col in range(left, left + size):
                coverage[row * cols + col, w] = True
    return coverage


def window_sequences(hidden: Tensor, grid: tuple[int, int], size: int) -> Tensor:
    """`(B, 1 + N, W)` embedded tokens (position embeddings added) -> `(B * windows, 1 + size^2, W)`: per
    window, the class token and the window's block cropped from the 2-D token grid. Running the tower
    on these equals restricting every token's attention to the class token and the window (§4.2)."""
    cls, patches = hidden[:, :1], hidden[:, 1:].unflatten(1, grid)
    crops = [
        torch.cat([cls, patches[:, top : top + size, left : left + size].flatten(1, 2)], dim=1)
        for top, left in window_corners(grid, size)
    ]
    return torch.stack(crops, dim=1).flatten(0, 1)


def window_embeddings(clip, pixels: Tensor, config, size: int) -> Tensor:
    """`(B, W, P)` window embeddings: the projected class token of each window's pass (WinCLIP §4.2)."""
    embeds = vision_from_config(clip, pixels, config, feature_layers=[], window=size).global_embeds
    return embeds.unflatten(0, (len(pixels), -1))


def harmonic_to_patches(window_scores: Tensor, coverage: Tensor) -> Tensor:
    """`(B, W)` -> `(B, N)`: per patch, the harmonic mean of the scores of the windows covering it (§4.2)."""
    cover = coverage.to(DTYPE)
    return cover.sum(dim=1) / (window_scores.reciprocal() @ cover.t())


def association(queries: Tensor, references: Tensor) -> Tensor:
    """WinCLIP Eq. 4: `(B, n)` scores 1/2 (1 - max_r cos(f, r)) of `(B, n, P)` test features against all
    rows r of the reference images' `(k, n', P)` features of the same group."""
    memory = normalize(references.flatten(0, 1))
    return (1 - (normalize(queries) @ memory.t()).amax(dim=-1)) / 2


def fuse_memory(expected: Expected, patch_scores: Tensor, grid: tuple[int, int], size: tuple[int, int],
                config) -> Expected:
    """The memory map M (patch scores upsampled bilinearly, blurred like the zero-shot map Z) fused by
    `config.reference_fusion` (docs/few_shot.md): `mean` gives (Z + M) / 2 and (p + max M) / 2,
    `memory_only` M and max M."""
    fusion = config.reference_fusion
    assert fusion in ("mean", "memory_only"), fusion
    memory = gaussian_smooth(upsample(patch_scores[..., None], grid, size)[:, 0], config.gaussian_sigma)
    # WinCLIP's `memory_image_score="grid"` (anomalib's) takes the peak on the patch grid, before upsampling.
    peak = (patch_scores if getattr(config, "memory_image_score", "map") == "grid" else memory.flatten(1)).amax(dim=1)
    if fusion == "memory_only":
        return Expected(memory, peak, expected.image_logits, expected.loss)
    return Expected((expected.anomaly_maps + memory) / 2, (expected.pred_scores + peak) / 2, expected.image_logits,
                    expected.loss)


# --------------------------------------------------------------------------------------------- methods
def _global_text_pipeline(model, pixels, text, vision, masks, labels, local_weight: float | None) -> Expected:
    """§2.4 (AnomalyCLIP, ZeroShotCLIP; text `(2, D)`, or per image `(B, 2, D)` for DA-CLIP): softmax patch
    probabilities, bilinear, mean of (S_a + 1 - S_n)/2, Gaussian; score = global text probability.
    Loss (§2.5): CE + lambda * sum_layers(focal + dice_a + dice_n)."""
    cfg = model.config
    scale = 1.0 / cfg.temperature
    image_logits = cosine_logits(vision.global_embeds[:, None], text, scale)[:, 0]
    probabilities = [
        upsample(softmax(cosine_logits(p, text, scale)), vision.grid, _size(pixels)) for p in vision.patch_tokens
    ]
    maps = gaussian_smooth(probability_map(probabilities), cfg.gaussian_sigma)
    loss = None
    if local_weight is not None and labels is not None:
        loss = cross_entropy(image_logits, labels)
        if masks is not None:
            local = sum(focal(p, masks) + dice(p[:, 1], masks) + dice(p[:, 0], 1 - masks) for p in probabilities)
            loss = loss + local_weight * local
    return Expected(maps, softmax(image_logits)[:, 1], image_logits, loss)


def zero_shot_clip(model, pixels, *, categories=None, masks=None, labels=None, training=False) -> Expected:
    """ZeroShotCLIP (§2.3 ensemble on the §2.1 dense features, §2.4 maps and score)."""
    cfg, clip = model.config, float64_copy(model.clip)
    with torch.no_grad():
        return _global_text_pipeline(model, pixels, ensemble_text(clip, cfg), vision_from_config(clip, pixels, cfg),
                                     masks, labels, None)


def anomalyclip(model, pixels, *, categories=None, masks=None, labels=None, training=False,
                normal_images=None) -> Expected:
    """AnomalyCLIP (§2): learned object-agnostic prompts, V-V dual path, §2.4 maps, §2.5 loss. With
    `normal_images`, the memory of their dense features (every feature layer a group, groups averaged)."""
    cfg, clip = model.config, float64_copy(model.clip)
    state = model.state_dict()
    with torch.no_grad():
        text = object_agnostic_text(clip, state, cfg)
        vision = vision_from_config(clip, pixels, cfg)
        expected = _global_text_pipeline(model, pixels, text, vision, masks, labels, cfg.local_loss_weight)
        if normal_images is None:
            return expected
        references = vision_from_config(clip, normal_images, cfg).patch_tokens
        scores = [association(q, r) for q, r in zip(vision.patch_tokens, references)]
        return fuse_memory(expected, torch.stack(scores).mean(dim=0), vision.grid, _size(pixels), cfg)


def headclip(model, pixels, *, categories=None, masks=None, labels=None, training=False) -> Expected:
    """HeadCLIP (§4.2, our design): AnomalyCLIP with head h of layer l scaled by w_{l,h} (standard and dense
    tables, rows in that order), w = 1 + delta or 1 + G(e0 / |e0|) from the prompt-free pass; joint score
    alpha * p_global + (1 - alpha) * pool(map)."""
    cfg, clip = model.config, float64_copy(model.clip)
    state = {k: v.to(DTYPE) for k, v in model.state_dict().items()}
    heads = cfg.clip_config.vision_config.num_attention_heads
    with torch.no_grad():
        if cfg.head_weight_mode == "static":
            weights = (1 + state["head_weights.delta"]).unsqueeze(0).expand(pixels.shape[0], -1, -1)
        else:
            e0 = vision_from_config(clip, pixels, cfg, feature_layers=[], dense_attention=None).global_embeds
            delta = linear(normalize(e0), state["head_weights.generator.weight"], state["head_weights.generator.bias"])
            weights = 1 + delta.view(pixels.shape[0], -1, heads)
        standard_layers = list(cfg.head_weight_layers)
        table = dict(zip(standard_layers, weights.unbind(1)[: len(standard_layers)]))
        dense_table = dict(zip(cfg.dense_head_weight_layers, weights.unbind(1)[len(standard_layers):]))
        text = object_agnostic_text(clip, state, cfg)
        vision = vision_from_config(clip, pixels, cfg, head_weights=table, dense_head_weights=dense_table)
        expected = _global_text_pipeline(model, pixels, text, vision, masks, labels, cfg.local_loss_weight)
    return with_image_score(expected, cfg)


def with_image_score(expected: Expected, cfg) -> Expected:
    """`cfg.image_score`: `global` keeps the global probability; `joint` (HeadCLIP §4.2, DA-CLIP §6.2.4)
    makes it alpha * p_global + (1 - alpha) * pool(map), pool = max or the mean of the top fraction."""
    if cfg.image_score == "joint":
        flat = expected.anomaly_maps.flatten(1)
        if cfg.joint_score_pooling == "max":
            pooled = flat.max(dim=1).values
        else:
            pooled = flat.sort(dim=1, descending=True).values[:, : max(1, round(cfg.joint_score_topk_fraction * flat.shape[1]))].mean(1)
        expected.pred_scores = cfg.joint_score_alpha * expected.pred_scores + (1 - cfg.joint_score_alpha) * pooled
    return expected


def farthest_point_kmeans(points: np.ndarray, clusters: int, iterations: int) -> np.ndarray:
    """K-means (§3.3, deterministic as §11.7): centers seeded at the first point, then repeatedly at the
    point farthest from all centers; Lloyd iterations; an emptied cluster keeps its center. Labels `(M,)`."""
    def distances(centers: np.ndarray) -> np.ndarray:
        return ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)

    centers = [points[0]]
    nearest = distances(np.stack(centers))[:, 0]
    for _ in range(clusters - 1):
        centers.append(points[int(np.argmax(nearest))])
        nearest = np.minimum(nearest, distances(centers[-1][None])[:, 0])
    centers = np.stack(centers)
    for _ in range(iterations):
        labels = distances(centers).argmin(1)
        for c in range(clusters):
            if (labels == c).any():
                centers[c] = points[labels == c].mean(0)
    return distances(centers).argmin(1)


def hsf_embedding(patch_features: list[Tensor], anomaly_probability: Tensor, global_feature: Tensor, cfg) -> Tensor:
    """AdaCLIP's HSF for one image (§3.3): top K*5 patches by anomaly probability, K-means on their
    concatenated layer features, centroid = mean of member tokens over members and layers, c = normalised
    mean of the centroids, image = normalise(w c + (1 - w) g')."""
    num_patches = anomaly_probability.shape[0]
    selected = min(cfg.hsf_num_clusters * cfg.hsf_patches_per_cluster, num_patches)
    clusters = min(cfg.hsf_num_clusters, selected)
    top = np.argsort(-anomaly_probability.numpy(), kind="stable")[:selected]
    tokens = torch.stack([layer[top] for layer in patch_features], dim=1)  # (M, layers, D)
    labels = farthest_point_kmeans(tokens.flatten(1).numpy(), clusters, cfg.hsf_kmeans_iterations)
    centroids = [tokens[torch.from_numpy(labels == c)].mean(dim=(0, 1)) for c in np.unique(labels)]
    c = normalize(torch.stack(centroids).mean(dim=0))
    return normalize(cfg.hsf_weight * c + (1 - cfg.hsf_weight) * global_feature)


ADACLIP_NORMAL_SENTENCES = 7 * 4  # §3.2: 7 normal states x 4 templates, then 5 x 4 anomaly sentences


def adaclip(model, pixels, *, categories=None, masks=None, labels=None, training=False) -> Expected:
    """AdaCLIP (§3): prompt-free pass -> e; hybrid prompts S + D(e) in both towers; learned projections;
    class-aware ensemble; maps from the softmax of the layer-mean logits (align_corners=True); HSF score."""
    cfg, clip = model.config, float64_copy(model.clip)
    state = {k: v.to(DTYPE) for k, v in model.state_dict().items() if not k.startswith("clip.")}
    batch, size = pixels.shape[0], _size(pixels)
    names = cfg.class_names
    if categories is None:
        categories = [names[0]] * batch
    elif isinstance(categories, str):
        categories = [categories] * batch
    depth, length = cfg.prompt_depth, cfg.prompt_length

    def hybrid(prefix: str, e: Tensor) -> Tensor:  # (B, J, L, W) = S + D(e)
        static = state[f"{prefix}.static"]
        dynamic = linear(e, state[f"{prefix}.generator.weight"], state[f"{prefix}.generator.bias"])
        return static + dynamic.view(batch, 1, length, static.shape[-1])

    with torch.no_grad():
        e = vision_tower(clip, pixels, feature_layers=(), interpolation=cfg.pos_embed_interpolation,
                         global_post_layernorm=cfg.global_post_layernorm).global_embeds
        vision_prompts = hybrid("vision_prompts", e)
        vision = vision_tower(
            clip, pixels, feature_layers=list(cfg.feature_layers), interpolation=cfg.pos_embed_interpolation,
            global_post_layernorm=cfg.global_post_layernorm, project_patches=False,
            visual_prompts={j: vision_prompts[:, j - 1] for j in range(1, depth + 1)},
        )
        text_prompts = hybrid("text_prompts", e)
        text = []
        for b, category in enumerate(categories):
            ids = cfg.prompt_token_ids[names.index(category)]
            deep = {j: text_prompts[b, j - 1] for j in range(2, depth + 1)}
            sentences = text_tower(clip, *token_embeddings(clip, ids), deep)
            text.append(torch.stack([
                mean_state_embedding(sentences[:ADACLIP_NORMAL_SENTENCES]),
                mean_state_embedding(sentences[ADACLIP_NORMAL_SENTENCES:]),
            ]))
        text = torch.stack(text)  # (B, 2, D)
    patches = [
        normalize(linear(tokens, state[f"projections.patch.{i}.weight"], state[f"projections.patch.{i}.bias"]))
        for i, tokens in enumerate(vision.patch_tokens)
    ]
    global_feature = normalize(linear(vision.global_embeds, state["projections.image.weight"], state["projections.image.bias"]))
    scale = 1.0 / cfg.temperature
    layer_logits = [cosine_logits(p, text, scale) for p in patches]
    mean_logits = torch.stack(layer_logits).mean(dim=0)
    if cfg.hybrid_semantic_fusion:
        anomaly = softmax(mean_logits)[..., 1]
        image_features = torch.stack([
            hsf_embedding([p[b] for p in patches], anomaly[b], global_feature[b], cfg) for b in range(batch)
        ])
    else:
        image_features = global_feature
    image_logits = cosine_logits(image_features[:, None], text, scale)[:, 0]
    probabilities = softmax(upsample(mean_logits, vision.grid, size, align_corners=True), dim=1)
    maps = gaussian_smooth(probability_map([probabilities]), cfg.gaussian_sigma)
    loss = None
    if labels is not None:
        loss = focal(softmax(image_logits)[:, :, None, None], labels[:, None, None])
        if masks is not None:
            for logits in layer_logits:
                p = softmax(upsample(logits, vision.grid, size, align_corners=True), dim=1)
                loss = loss + focal(p, masks) + dice(p[:, 1], masks) + dice(p[:, 0], 1 - masks)
    return Expected(maps, softmax(image_logits)[:, 1], image_logits, loss)


def dino_attention(dino, pixels: Tensor, mean_scale: float, sharpness: float) -> Tensor:
    """Crane+'s D-Attn weights (§5.1): DINOv2 patch cosine similarities S of the ImageNet-renormalised
    image, S' = (S - mean_scale * mean(S)) * sharpness with the mean per image, negative entries masked
    (each row keeps its maximum, as documented by zsad), row softmax. `(B, N, N)`."""
    channels = []
    for c in range(3):
        raw = pixels[:, c].to(DTYPE) * CLIP_STD[c] + CLIP_MEAN[c]
        channels.append((raw - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    hidden = dino(pixel_values=torch.stack(channels, dim=1)).last_hidden_state
    prefix = 1 + getattr(dino.config, "num_register_tokens", 0)
    features = normalize(hidden[:, prefix:])
    similarity = features @ features.transpose(1, 2)
    scores = (similarity - mean_scale * similarity.mean(dim=(1, 2), keepdim=True)) * sharpness
    keep = (scores >= 0) | (scores == scores.amax(dim=-1, keepdim=True))
    return softmax(scores.masked_fill(~keep, float("-inf")))


def crane(model, pixels, *, categories=None, masks=None, labels=None, training=False) -> Expected:
    """Crane / Crane+ (§5): E-Attn dual path (+ D-Attn at the last layer), image-conditioned prompts when
    `prompt_conditioning` asks for it in this mode, score-based pooling, soft-mean maps, §5.4 loss."""
    cfg, clip = model.config, float64_copy(model.clip)
    state = model.state_dict()
    size = _size(pixels)
    with torch.no_grad():
        guided = None
        if cfg.dino_attention:
            weights = dino_attention(float64_copy(model.dino), pixels, cfg.dino_mean_scale, cfg.dino_sharpness)
            guided = (cfg.vision_depth, weights, getattr(cfg, "guided_value_source", "layer_input"))
        vision = vision_from_config(clip, pixels, cfg, guided_attention=guided)
        conditioned = cfg.prompt_conditioning == "always" or (cfg.prompt_conditioning == "train" and training)
        text = object_agnostic_text(clip, state, cfg, vision.global_embeds if conditioned else None)
    maps_features = [normalize(f) for f in vision.patch_tokens]
    if vision.guided_tokens is not None:
        maps_features.append(normalize(vision.guided_tokens))
    scale = 1.0 / cfg.temperature
    patch_logits = [cosine_logits(f, text, scale) for f in maps_features]
    mean_logits = torch.stack(patch_logits).mean(dim=0)
    weights = softmax(mean_logits)[..., 1:]
    pooled = normalize((weights * torch.stack(maps_features).mean(dim=0)).sum(dim=1))
    fused = normalize(cfg.fusion_weight * pooled + (1 - cfg.fusion_weight) * normalize(vision.global_embeds))
    image_logits = cosine_logits(fused[:, None], text, scale)[:, 0]
    if cfg.soft_mean:
        probabilities = [upsample(softmax(logits), vision.grid, size) for logits in patch_logits]
    else:  # §11.2: each map's logits upsampled, averaged, then the softmax
        upsampled = torch.stack([upsample(logits, vision.grid, size) for logits in patch_logits])
        probabilities = [softmax(upsampled.mean(dim=0), dim=1)]
    maps = gaussian_smooth(probability_map(probabilities), cfg.gaussian_sigma)
    loss = None
    if labels is not None:
        loss = cfg.image_loss_weight * cross_entropy(image_logits * cfg.temperature / cfg.image_loss_temperature, labels)
        if masks is not None:
            for logits in patch_logits:
                p = upsample(softmax(logits), vision.grid, size, mode=cfg.loss_upsample_mode)
                loss = loss + cfg.local_loss_weight * (focal(p, masks) + dice((1 - p[:, 0] + p[:, 1]) / 2, masks))
    return Expected(maps, softmax(image_logits)[:, 1], image_logits, loss)


def keep_top_k(probabilities: Tensor, k: int) -> Tensor:
    """The `k` largest entries of each row renormalised to sum to 1, the others 0 (§6.2.2, §6.2.3)."""
    kth = probabilities.sort(dim=-1, descending=True).values[..., k - 1 : k]
    kept = torch.where(probabilities >= kth, probabilities, torch.zeros_like(probabilities))
    return kept / kept.sum(dim=-1, keepdim=True)


def mix_domains(bank: Tensor, weights: Tensor) -> Tensor:
    """sum_e r_e P_e (§6.2.2): `(E, ...)` bank (a single shared set stands for every domain) and `(B, E)`
    weights -> `(B, ...)`."""
    bank = bank.to(DTYPE).expand(weights.shape[1], *bank.shape[1:])
    return sum(weights[:, e].view(-1, *[1] * (bank.dim() - 1)) * bank[e] for e in range(weights.shape[1]))


def lora_mixture(tokens: Tensor, gates: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float, mix: float) -> Tensor:
    """DAKA's residual (§6.2.3), one expert at a time: x + beta * sum_e g_e (alpha / r) B_e A_e x for
    `(B, N, W)` tokens, `(B, N, E)` gates, `(E, r, W)` A and `(E, W, r)` B."""
    update = sum(gates[..., e, None] * (tokens @ lora_a[e].t() @ lora_b[e].t()) for e in range(lora_a.shape[0]))
    return tokens + mix * scaling * update


def squared_variation(probabilities: Tensor) -> Tensor:
    """Load balance (§6.2.5): importance I_e = the probabilities `(..., E)` summed over all other axes;
    var(I) / mean(I)^2, population variance."""
    importance = probabilities.reshape(-1, probabilities.shape[-1]).sum(dim=0)
    mean = importance.mean()
    return ((importance - mean) ** 2).mean() / mean**2


def equiangular_mse(vectors: Tensor) -> Tensor:
    """Expert diversity (§6.2.5, MoECLIP's equiangular target): mean over ordered pairs i != j of
    (cos(v_i, v_j) + 1 / (E - 1))^2 for the `(E, d)` rows; 0 for a single row."""
    count = vectors.shape[0]
    if count < 2:
        return torch.zeros((), dtype=DTYPE)
    unit = normalize(vectors.to(DTYPE))
    pairs = [(unit[i] @ unit[j] + 1 / (count - 1)) ** 2 for i in range(count) for j in range(count) if i != j]
    return torch.stack(pairs).mean()


def daclip(model, pixels, *, categories=None, masks=None, labels=None, training=False) -> Expected:
    """DA-CLIP (§6.2, our design; the choices §6.2 leaves open as docs/models/daclip.md makes them).

    Router (§6.2.2) on the prompt-free e0: r = top-k renormalised softmax_e(cos(W_r e0/|e0|, k_e) / tau)
    (§6.2.2 writes the dot product (W_r e0) . k_e; zsad reads it as this cosine). Pathway 1: the combined
    bank sum_e r_e P_e gives each image's deep text tokens and visual prompts. Pathway 2 (§6.2.3): after
    each DAKA layer's dense update, the patch tokens x get beta * sum_e g_e (alpha / r) B_e A_e x with
    g = top-k renormalised softmax(Linear([x ; s])), s = mean of the combined visual prompts (r when there
    are none), x and s each divided by their root-mean-square with `gate_condition_norm`; with image
    routing g = r for every token. Read-out (§6.2.4): the final dense stream through
    LN_post and W_proj; with `project_daka_layers`, also the DAKA-adapted patch tokens of each DAKA layer
    that is not a feature layer through its own learned Linear(W -> P), each one more map. Maps, score and
    loss as AnomalyCLIP (§2.4, §2.5) over all maps, plus weighted load balance (image router + mean over
    the token gates) and diversity (§6.2.5).
    """
    cfg, clip = model.config, float64_copy(model.clip)
    state = {k: v.to(DTYPE) for k, v in model.state_dict().items() if not k.startswith("clip.")}
    with torch.no_grad():
        e0 = vision_from_config(clip, pixels, cfg, feature_layers=[], dense_attention=None).global_embeds
        query = normalize(linear(normalize(e0), state["router.projection.weight"], state["router.projection.bias"]))
        router_softmax = softmax(query @ normalize(state["domain_prompts.keys"]).t() / cfg.router_temperature)
        router = keep_top_k(router_softmax, cfg.top_k_experts)
        visual_prompts, condition = {}, router
        if cfg.visual_prompt_layers:
            visual = mix_domains(state["domain_prompts.visual_tokens"], router)  # (B, layers, n, W)
            visual_prompts = {layer: visual[:, i] for i, layer in enumerate(cfg.visual_prompt_layers)}
            condition = visual.mean(dim=(1, 2))
        gate_softmax = []

        def expert_layer(i: int) -> Callable[[Tensor], Tensor]:
            prefix = f"daka.experts.{i}."

            def adapt(tokens: Tensor) -> Tensor:
                if cfg.daka_routing == "image":
                    gates = router[:, None].expand(-1, tokens.shape[1], -1)
                else:
                    token_part, condition_part = tokens, condition
                    if cfg.gate_condition_norm:  # each half scaled to unit root-mean-square
                        token_part = tokens / (tokens.square().mean(-1, keepdim=True) + 1e-6).sqrt()
                        condition_part = condition / (condition.square().mean(-1, keepdim=True) + 1e-6).sqrt()
                    inputs = torch.cat([token_part, condition_part[:, None].expand(-1, tokens.shape[1], -1)], dim=-1)
                    gate_softmax.append(softmax(linear(inputs, state[prefix + "gate.weight"], state[prefix + "gate.bias"])))
                    gates = keep_top_k(gate_softmax[-1], cfg.token_top_k)
                return lora_mixture(tokens, gates, state[prefix + "lora_A"], state[prefix + "lora_B"],
                                    cfg.lora_alpha / cfg.lora_rank, cfg.daka_mix)

            return adapt

        adapters = {layer: expert_layer(i) for i, layer in enumerate(cfg.daka_layers)}
        projected = [layer for layer in cfg.daka_layers if layer not in cfg.feature_layers] if cfg.project_daka_layers else []
        vision = vision_from_config(clip, pixels, cfg, feature_layers=projected + list(cfg.feature_layers),
                                    project_patches=False, visual_prompts=visual_prompts, dense_adapters=adapters)
        learned = [linear(tokens, state[f"daka_projections.patch.{i}.weight"], state[f"daka_projections.patch.{i}.bias"])
                   for i, tokens in enumerate(vision.patch_tokens[: len(projected)])]
        final = [clip.visual_projection(clip.vision_model.post_layernorm(tokens))
                 for tokens in vision.patch_tokens[len(projected):]]
        vision.patch_tokens = learned + final
        deep = mix_domains(state["domain_prompts.text_tokens"], router)  # (B, layers, m, W)
        text = torch.stack([object_agnostic_text(clip, state, cfg, deep_tokens=tokens) for tokens in deep])
        expected = _global_text_pipeline(model, pixels, text, vision, masks, labels, cfg.local_loss_weight)
    if expected.loss is not None:
        load_balance = squared_variation(router_softmax)
        if gate_softmax:
            load_balance = load_balance + torch.stack([squared_variation(p) for p in gate_softmax]).mean()
        prompt_sets = [state[f"domain_prompts.{name}"].flatten(1) for name in ("text_tokens", "visual_tokens")
                       if f"domain_prompts.{name}" in state]
        diversity = equiangular_mse(torch.cat(prompt_sets, dim=1))
        expected.loss = expected.loss + cfg.load_balance_weight * load_balance + cfg.diversity_weight * diversity
    return with_image_score(expected, cfg)


def winclip(model, pixels, *, categories=None, masks=None, labels=None, training=False,
            normal_images=None) -> Expected:
    """WinCLIP (Jeong et al., CVPR 2023; docs/models/winclip.md): the prompt ensemble (§4.1); image score
    softmax(cos(g, [t_n, t_a]) / T)[a] of plain CLIP; per window size, every window scored like the image
    and taken to patches by the harmonic mean (§4.2); per patch, the harmonic mean of the image score and
    the scales; bilinear, blur. With `normal_images`, WinCLIP+ (§4.3): their final-layer patch tokens
    (LN_post, W_proj with `memory_projection`) and window embeddings of every size as memory groups, window
    groups taken to patches harmonically, the groups averaged, fused with the zero-shot map and score."""
    cfg, clip = model.config, float64_copy(model.clip)
    size, scale = _size(pixels), 1.0 / cfg.temperature
    with torch.no_grad():
        text = ensemble_text(clip, cfg)
        vision = vision_from_config(clip, pixels, cfg)
        coverage = [window_coverage(vision.grid, k) for k in cfg.window_sizes]
        windows = [window_embeddings(clip, pixels, cfg, k) for k in cfg.window_sizes]
        image_logits = cosine_logits(vision.global_embeds, text, scale)
        image_score = softmax(image_logits)[:, 1]
        scales = [image_score[:, None].expand(-1, len(coverage[0]))]
        for w, c in zip(windows, coverage):
            scales.append(harmonic_to_patches(softmax(cosine_logits(w, text, scale))[..., 1], c))
        combined = len(scales) / sum(s.reciprocal() for s in scales)
        maps = gaussian_smooth(upsample(combined[..., None], vision.grid, size)[:, 0], cfg.gaussian_sigma)
        expected = Expected(maps, image_score, image_logits)
        if normal_images is None:
            return expected
        # The patch memory: final-layer tokens after LN_post, through W_proj only with `memory_projection`.
        def memory_tokens(images: Tensor) -> list[Tensor]:
            raw = vision_from_config(clip, images, cfg, project_patches=False).patch_tokens
            post = [clip.vision_model.post_layernorm(tokens) for tokens in raw]
            return [clip.visual_projection(tokens) for tokens in post] if cfg.memory_projection else post

        scores = [association(q, r) for q, r in zip(memory_tokens(pixels), memory_tokens(normal_images))]
        for w, k, c in zip(windows, cfg.window_sizes, coverage):
            scores.append(harmonic_to_patches(association(w, window_embeddings(clip, normal_images, cfg, k)), c))
        return fuse_memory(expected, torch.stack(scores).mean(dim=0), vision.grid, size, cfg)


Reference = Callable[..., Expected]

# One reference per registered method, by config `model_type`.
REFERENCES: dict[str, Reference] = {
    "zsad_clip": zero_shot_clip,
    "zsad_anomalyclip": anomalyclip,
    "zsad_adaclip": adaclip,
    "zsad_crane": crane,
    "zsad_headclip": headclip,
    "zsad_daclip": daclip,
    "zsad_winclip": winclip,
}
