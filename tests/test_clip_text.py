"""The prompted text encoder against `CLIPTextModel` and against a naive deep-prompt loop."""

import pytest
import torch
from transformers.masking_utils import create_causal_mask

from zsad.clip.text import TokenizedPrompts, encode_text, eos_positions
from zsad.testing import tiny_clip_model, tiny_tokenizer


@pytest.fixture(scope="module")
def clip():
    """Random biases and LayerNorms: a swapped LayerNorm or a dropped bias changes the result."""
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def input_ids():
    tokenizer = tiny_tokenizer()
    batch = tokenizer(["a photo of a damaged object.", "flawless metal plate", "x"], padding="max_length", max_length=40)
    return torch.tensor(batch["input_ids"])


def test_encode_text_equals_clip_text_model(clip, input_ids):
    with torch.no_grad():
        reference = clip.get_text_features(input_ids).pooler_output
        ours = encode_text(clip, input_ids)
        unprojected = encode_text(clip, input_ids, project=False)
        reference_pooled = clip.text_model(input_ids).pooler_output
    assert (ours - reference).abs().max() < 1e-5
    assert (unprojected - reference_pooled).abs().max() < 1e-5


def test_eos_positions_legacy_rule():
    ids = torch.tensor([[5, 9, 7, 0, 0], [5, 3, 9, 9, 0]])
    assert eos_positions(ids, 9).tolist() == [1, 2]  # first occurrence
    assert eos_positions(ids, 2).tolist() == [1, 2]  # legacy: highest id


def test_deep_prompts_and_context_equal_naive_loop(clip, input_ids):
    torch.manual_seed(1)
    width = clip.config.text_config.hidden_size
    context = torch.randn(3, width)
    deep = {2: torch.randn(2, width)}
    token_embeds = clip.text_model.embeddings.token_embedding(input_ids).clone()
    token_embeds[:, 1:4] = context
    with torch.no_grad():
        ours = encode_text(clip, input_ids, inputs_embeds=token_embeds, deep_prompts=deep)
        # naive: HF layers with an explicit causal mask, overwrite positions 1..2 before layer 2
        text = clip.text_model
        hidden = text.embeddings(inputs_embeds=token_embeds)
        mask = create_causal_mask(text.config, hidden, None, None)  # config, embeds, attention mask, cache (renamed in 5.x: positional)
        for index, layer in enumerate(text.encoder.layers, start=1):
            if index in deep:
                hidden = hidden.clone()
                hidden[:, 1:3] = deep[index]
            hidden = layer(hidden, mask, is_causal=True)
        hidden = text.final_layer_norm(hidden)
        pooled = hidden[torch.arange(len(input_ids)), eos_positions(input_ids, text.eos_token_id)]
        reference = clip.text_projection(pooled)
    assert (ours - reference).abs().max() < 1e-5


def test_tokenized_prompts_buffers():
    prompts = TokenizedPrompts([[5, 6, 7], [5, 8]], context_length=6)
    assert prompts.input_ids.tolist() == [[5, 6, 7, 0, 0, 0], [5, 8, 0, 0, 0, 0]]
    assert prompts.eos_positions.tolist() == [2, 1]
    assert prompts.state_dict() == {}  # rebuilt from the config, never saved twice
    with pytest.raises(ValueError, match="at most 2"):
        TokenizedPrompts([[1, 2, 3]], context_length=2)
