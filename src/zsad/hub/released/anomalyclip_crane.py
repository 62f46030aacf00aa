"""The released AnomalyCLIP and Crane / Crane+ file format: `{"prompt_learner": state dict}` of the
object-agnostic prompt learner (docs/released_weights.md), mapped onto zsad's `ObjectAgnosticPrompts`.

The file also carries the tokenized prompts and token-embedding buffers of the backbone it was trained
with; `check_prompt_ids` and `check_embedding_buffers` compare them with the backbone it is imported onto.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .safe_loading import CheckpointImportError
from .variants import ANOMALYCLIP_PROJECTION_WIDTH, DEEP_PROMPT_LENGTH, NUM_CONTEXT_TOKENS, NUM_DEEP_LAYERS

# Relative tolerance of the token-embedding buffers against the backbone's table (docs/released_weights.md).
EMBEDDING_RTOL = 1e-3


def flat_state(loaded: Any, path: Path, name: str) -> dict[str, torch.Tensor]:
    """The prompt learner's state dict inside the file's `{"prompt_learner": ...}` container."""
    if not isinstance(loaded, Mapping):
        raise CheckpointImportError(f"{path}: expected a dict of tensors, found a {type(loaded).__name__}")
    if set(loaded) != {"prompt_learner"} or not isinstance(loaded["prompt_learner"], Mapping):
        keys = ", ".join(repr(k) for k in list(loaded)[:3])
        raise CheckpointImportError(f"{path}: expected the {name} layout {{'prompt_learner': state dict}}; found keys {keys}")
    state = loaded["prompt_learner"]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointImportError(f"{path}: entry {bad[0]!r} is not a named tensor")
    return dict(state)


def expected_layout(kind: str, text_width: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released AnomalyCLIP (`kind="anomalyclip"`) or Crane file at the released
    configuration, for a text tower of `text_width` (768 on ViT-L/14@336)."""
    context_length = 77
    suffix = context_length - 1 - NUM_CONTEXT_TOKENS
    layout: dict[str, tuple[int, ...]] = {}
    for side in ("pos", "neg"):
        layout[f"ctx_{side}"] = (1, 1, NUM_CONTEXT_TOKENS, text_width)
    for side in ("pos", "neg"):
        layout[f"token_prefix_{side}"] = (1, 1, 1, text_width)
        layout[f"token_suffix_{side}"] = (1, 1, suffix, text_width)
        layout[f"tokenized_prompts_{side}"] = (1, 1, context_length)
    for i in range(NUM_DEEP_LAYERS):
        layout[f"compound_prompts_text.{i}"] = (DEEP_PROMPT_LENGTH, text_width)
    if kind == "anomalyclip":
        for i in range(NUM_DEEP_LAYERS):
            layout[f"compound_prompt_projections.{i}.weight"] = (ANOMALYCLIP_PROJECTION_WIDTH, text_width)
            layout[f"compound_prompt_projections.{i}.bias"] = (ANOMALYCLIP_PROJECTION_WIDTH,)
    return layout


def adapters(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AnomalyCLIP / Crane -> zsad `ObjectAgnosticPrompts` (docs/released_weights.md): the contexts
    stacked [normal = pos, anomaly = neg], the deep tokens stacked in file order (token i -> text layer
    i + 2). AnomalyCLIP's unused `compound_prompt_projections` are dropped."""
    context = torch.stack([state["ctx_pos"].reshape(NUM_CONTEXT_TOKENS, -1), state["ctx_neg"].reshape(NUM_CONTEXT_TOKENS, -1)])
    deep = torch.stack([state[f"compound_prompts_text.{i}"] for i in range(NUM_DEEP_LAYERS)])
    return {"prompt_learner.context": context.float().contiguous(), "prompt_learner.deep_tokens": deep.float().contiguous()}


def check_prompt_ids(state: Mapping[str, torch.Tensor], prompt_token_ids: list[list[int]], path: Path) -> None:
    """The file's zero-padded ids equal zsad's [normal, anomaly] ids from the backbone's tokenizer, and the
    reference's pooling position (argmax of the ids) is the end-of-text position zsad pools at."""
    for side, ids in zip(("pos", "neg"), prompt_token_ids):
        row = state[f"tokenized_prompts_{side}"].reshape(-1).tolist()
        expected = list(ids) + [0] * (len(row) - len(ids))
        if row != expected:
            first = next(i for i, (a, b) in enumerate(zip(row, expected)) if a != b)
            raise CheckpointImportError(
                f"{path}: tokenized_prompts_{side} differs from this backbone's tokenization of the prompt at "
                f"position {first} (file {row[first]}, tokenizer {expected[first]}): a different template, "
                "context length or tokenizer"
            )
        if max(range(len(row)), key=row.__getitem__) != len(ids) - 1:
            raise CheckpointImportError(f"{path}: tokenized_prompts_{side}: the end-of-text token is not the largest id")


def check_embedding_buffers(
    state: Mapping[str, torch.Tensor], prompt_token_ids: list[list[int]], token_embedding: torch.Tensor, path: Path
) -> float:
    """Check the file's token-embedding buffers (docs/released_weights.md).

    Backbone-free checks refuse the file: both prefixes are equal, and suffix rows of equal token ids are
    equal. Returns the largest difference, relative to the table's largest magnitude, between the buffers
    and the backbone's token embeddings (about 0 for the backbone the file was trained with)."""
    if not torch.equal(state["token_prefix_pos"], state["token_prefix_neg"]):
        raise CheckpointImportError(f"{path}: token_prefix_pos and token_prefix_neg differ; the reference writes the same row")
    context_end = 1 + NUM_CONTEXT_TOKENS
    rows, ids = [state["token_prefix_pos"].reshape(1, -1)], [prompt_token_ids[0][0]]
    for side, sequence in zip(("pos", "neg"), prompt_token_ids):
        suffix = state[f"token_suffix_{side}"].reshape(-1, token_embedding.shape[-1])
        padded = list(sequence) + [0] * (context_end + suffix.shape[0] - len(sequence))
        rows.append(suffix)
        ids.extend(padded[context_end:])
    rows_tensor = torch.cat(rows).float()
    first_row: dict[int, int] = {}
    for index, token in enumerate(ids):
        first = first_row.setdefault(token, index)
        if not torch.equal(rows_tensor[first], rows_tensor[index]):
            raise CheckpointImportError(
                f"{path}: token-embedding buffers disagree for token id {token}: not the reference's buffers"
            )
    reference = token_embedding.detach().float()[torch.tensor(ids)]
    scale = token_embedding.detach().float().abs().max().clamp_min(1e-12)
    return float(((rows_tensor - reference).abs().max() / scale).item())
