"""Token generation with the KV cache: one prefill over the prompt (images spliced in), then one decode step
per new token. The two are separate functions so the decode step can later be compiled or captured.
"""

from __future__ import annotations

import torch

from nativevl.model.internvl import InternVL, default_positions
from nativevl.model.text import KVCache


def prefill(
    model: InternVL,
    cache: KVCache,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    image_flags: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the prompt through the model, fill the cache, return the last position's logits (B, vocab)."""
    out = model(
        input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        position_ids=position_ids,
        image_flags=image_flags,
        cache=cache,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def decode_one_token(
    model: InternVL,
    cache: KVCache,
    token: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position: torch.Tensor,
) -> torch.Tensor:
    """token (B, 1), position (B, 1) -> next-token logits (B, vocab)."""
    return model(token, attention_mask=attention_mask, position_ids=position, cache=cache).logits[:, -1]


@torch.inference_mode()
def generate(
    model: InternVL,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    image_flags: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    eos_token_id: int | list[int] | None = None,
) -> torch.Tensor:
    """Greedy decoding; returns the new tokens (B, <= max_new_tokens), eos-finished rows padded with eos.

    Prompts are left-padded (attention_mask 0 on the left). Positions continue from the last prompt position
    plus one per token, which also holds for fractional (V2PE) prompt positions.
    """
    b, length = input_ids.shape
    if position_ids is None:
        position_ids = default_positions(input_ids, attention_mask, 0)
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    eos = eos.to(input_ids.device)
    cache = model.new_cache(b, length + max_new_tokens)
    logits = prefill(model, cache, input_ids, pixel_values, attention_mask, position_ids, image_flags)
    position = position_ids[:, -1:]
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        if tokens and eos.numel():
            token = torch.where(done, eos[0], token)
        tokens.append(token)
        done |= torch.isin(token, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], dim=1)
        position = position + 1
        logits = decode_one_token(model, cache, token[:, None], attention_mask, position)
    return torch.stack(tokens, dim=1)
