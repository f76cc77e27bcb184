"""V2PE position ids (spec §10): text tokens advance the position by 1, visual tokens by a fraction delta.

After `<img>` at position p, an image's N `<IMG_CONTEXT>` tokens (all its tiles) sit at p + delta, …, p + N delta;
the next token (`</img>`) continues at ceil(p + N delta) + 1. delta = 1 gives ordinary integer positions, which
is what the released checkpoints were run with; training samples delta per image from {1, 1/2, …, 1/256}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# The paper's per-image choices: strides 1, 2, 4, …, 256 tokens of position for 256 tokens of image.
V2PE_DELTAS = tuple(2.0**-k for k in range(9))
# How a sample's deltas are chosen: "off" (integer positions), "fixed" (one delta for every image), "random".
V2PE_MODES = ("off", "fixed", "random")


def v2pe_positions_row(ids: Sequence[int], img_context_id: int, deltas: float | Sequence[float]) -> list[float]:
    """Positions for one sequence; `deltas` is one delta for every image, or one per image in order."""
    positions: list[float] = []
    current = -1.0
    image = 0
    i, n = 0, len(ids)
    while i < n:
        if ids[i] != img_context_id:
            current += 1.0
            positions.append(current)
            i += 1
            continue
        end = i
        while end < n and ids[end] == img_context_id:
            end += 1
        if isinstance(deltas, (int, float)):
            delta = float(deltas)
        else:
            if image >= len(deltas):
                raise ValueError(f"{len(deltas)} deltas given for more images than that")
            delta = float(deltas[image])
        positions.extend(current + delta * k for k in range(1, end - i + 1))
        # round away float noise (e.g. 0.1 * 10) before ceil, so an integral end stays integral
        current = float(math.ceil(round(current + delta * (end - i), 9)))
        image += 1
        i = end
    return positions


def v2pe_positions(
    input_ids: torch.Tensor,
    img_context_id: int,
    delta: float | Sequence[float],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, L) float32 positions counted over real tokens (left padding gets position 1, as integer positions)."""
    out = torch.ones(input_ids.shape, dtype=torch.float64)
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row], dtype=torch.bool)
        ids = input_ids[row][keep].tolist()
        out[row, keep.cpu()] = torch.tensor(v2pe_positions_row(ids, img_context_id, delta), dtype=torch.float64)
    return out.to(torch.float32).to(input_ids.device)
