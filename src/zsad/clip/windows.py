"""Window embeddings of the CLIP vision tower (WinCLIP, Jeong et al., CVPR 2023, §4.2).

A window is a `k x k` block of patch tokens. Its embedding is the projected class token of the tower
run with attention restricted to the class token and the window's patch tokens, from the first layer
on. Tokens outside the window are then neither attended to nor able to influence the window's tokens,
so the restricted attention over the full `1 + N` sequence equals plain attention over the gathered
`1 + k^2` tokens (position embeddings added before the gather): that is what `window_embeddings`
computes, for every window of every image in batched chunks per window size, at `O(k^2)` tokens per
window instead of `O(N)` for a masked full sequence. The tests compare it with the masked definition.
Window scores go back to patches by the harmonic mean over the windows covering each patch (§4.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPModel

from .vision import TowerHooks, _layer_step, embed_patches

CHUNK_TOKENS = 1024  # tokens per chunk of windows in `window_embeddings` on the CPU


def window_patch_indices(grid_size: tuple[int, int], window_size: int, device=None) -> torch.Tensor:
    """`(W, k^2)` row-major patch indices of every `k x k` window at stride 1 (row-major window order)."""
    rows, cols = grid_size
    if not 1 <= window_size <= min(rows, cols):
        raise ValueError(f"window size {window_size} must be within 1..{min(rows, cols)} for a {rows}x{cols} patch grid")
    grid = torch.arange(rows * cols, device=device).view(rows, cols)
    windows = grid.unfold(0, window_size, 1).unfold(1, window_size, 1)  # (rows-k+1, cols-k+1, k, k)
    return windows.reshape(-1, window_size * window_size)


def window_embeddings(
    clip: CLIPModel,
    pixel_values: torch.Tensor,
    window_sizes: Sequence[int],
    *,
    pos_embed_interpolation: str = "bicubic",
    global_post_layernorm: bool = True,
) -> tuple[tuple[torch.Tensor, ...], tuple[int, int]]:
    """Per window size, `(B, W, P)` projected window embeddings (windows in `window_patch_indices`
    order), and the patch grid size.

    On the CPU (eager) the windows go through the tower in chunks of about `CHUNK_TOKENS` tokens, each
    chunk through every layer, so activations stay cache-sized buffers that the allocator reuses (all
    900 3 x 3 windows of a 512 px image at once allocate fresh 110 MB MLP activations at every layer).
    On other devices, and under torch.compile / export (a graph that does not depend on the batch
    size), all windows of a size go at once.
    """
    vision = clip.vision_model
    tokens, grid_size = embed_patches(vision.embeddings, pixel_values, pos_embed_interpolation)
    tokens = vision.pre_layrnorm(tokens)
    batch, length, width = tokens.shape
    tokens = tokens.reshape(batch * length, width)
    image_offsets = torch.arange(batch, device=tokens.device).view(batch, 1, 1) * length
    chunked = tokens.device.type == "cpu" and not torch.compiler.is_compiling()
    no_hooks = TowerHooks()
    embeddings = []
    for size in window_sizes:
        patches = window_patch_indices(grid_size, size, tokens.device) + 1  # token 0 is the class token
        sequence = torch.cat([patches.new_zeros(patches.shape[0], 1), patches], dim=1)  # (W, 1 + k^2)
        rows = (image_offsets + sequence).flatten(0, 1)  # (B * W, 1 + k^2) indices into the flat tokens
        chunks = rows.split(max(1, CHUNK_TOKENS // rows.shape[1])) if chunked else (rows,)
        cls_tokens = []
        for chunk in chunks:
            hidden = tokens[chunk]  # (windows in the chunk, 1 + k^2, width)
            for index, layer in enumerate(vision.encoder.layers, start=1):
                hidden, _, _ = _layer_step(layer, index, hidden, None, hidden.shape[1], None, no_hooks)
            cls_tokens.append(hidden[:, 0])
        cls_token = torch.cat(cls_tokens)
        if global_post_layernorm:
            cls_token = vision.post_layernorm(cls_token)
        embeddings.append(clip.visual_projection(cls_token).view(batch, sequence.shape[0], -1))
    return tuple(embeddings), grid_size


def harmonic_aggregation(window_scores: torch.Tensor, indices: torch.Tensor, num_patches: int) -> torch.Tensor:
    """`(B, W)` window scores -> `(B, N)`: per patch, the harmonic mean of the scores of the windows that
    cover it (WinCLIP §4.2); a zero score gives zero."""
    batch, _ = window_scores.shape
    inverse = window_scores.float().reciprocal().repeat_interleave(indices.shape[1], dim=1)
    flat = indices.flatten()
    sums = inverse.new_zeros(batch, num_patches).index_add_(1, flat, inverse)
    counts = inverse.new_zeros(num_patches).index_add_(0, flat, torch.ones_like(flat, dtype=inverse.dtype))
    return counts / sums
