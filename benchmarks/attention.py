"""One attention layer of a bf16 prompt on the CPU, at the preset's shapes: torch's SDPA (what transformers and
plain nativevl run; its CPU flash kernel) against nativevl's attention kernel (`--prepack` on a CPU with
AVX-512 BF16; nativevl/kernels/bf16_attention.py, attention_tiles.h), on the same random bf16 q, k, v, timed
in turns.

Shapes: the ViT's full attention over one tile's tokens (1 and 13 tiles at once) and the language model's causal
attention with grouped key/value heads over the time-to-first-token prompts (1 and 13 tiles)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import Timing, fmt, measure_turns, show, table
from benchmarks.ttft import TEXT
from nativevl import kernels
from nativevl.config import preset


def shapes(preset_name: str, tile_counts: list[int]) -> list[tuple[str, int, int, int, int, int, bool]]:
    """(what, batch, heads, kv heads, length, head_dim, causal) per row of the table."""
    cfg = preset(preset_name)
    v, t = cfg.vision, cfg.text
    tokens = v.num_patches + 1  # the class token
    rows = [(f"ViT, {n} tile{'s' * (n > 1)}", n, v.num_attention_heads, v.num_attention_heads, tokens,
             v.hidden_size // v.num_attention_heads, False) for n in tile_counts]
    rows += [(f"LLM prompt, {n} tile{'s' * (n > 1)}", 1, t.num_attention_heads, t.num_key_value_heads,
              n * cfg.num_image_token + TEXT, t.head_dim, True) for n in tile_counts]
    return rows


def flops(b: int, h: int, length: int, d: int, causal: bool) -> float:
    """Q K^T and P V: 4 L^2 d per head, half of it under a causal mask."""
    return 4 * b * h * length**2 * d / (2 if causal else 1)


def timed(b: int, h: int, hkv: int, length: int, d: int, causal: bool, repeats: int, g: torch.Generator
          ) -> dict[str, Timing]:
    """SDPA and the kernel on the same random q, k, v, laid out as the models hand them over: (B, L, H, D)
    projections viewed as (B, H, L, D)."""
    q = torch.randn(b, length, h, d, generator=g).bfloat16().transpose(1, 2)
    k, v = (torch.randn(b, length, hkv, d, generator=g).bfloat16().transpose(1, 2) for _ in range(2))
    return measure_turns({
        "SDPA": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=h != hkv),
        "nativevl kernel": lambda: kernels.attention(q, k, v, None, causal),
    }, repeats)


def run(preset_name: str, tile_counts: list[int], repeats: int, bf16_flops: float) -> str:
    if not kernels.attention_available():
        return ("nativevl's attention kernel needs a CPU with AVX-512 BF16 (and the kernel built); "
                "this one runs SDPA only, so there is nothing to compare")
    rows = []
    g = torch.Generator().manual_seed(0)
    for what, b, h, hkv, length, d, causal in shapes(preset_name, tile_counts):
        timings = timed(b, h, hkv, length, d, causal, repeats, g)
        work = flops(b, h, length, d, causal)
        base = timings["SDPA"].median
        for name, t in timings.items():
            rate = work / t.median
            rows.append([what, f"{b}x{h}/{hkv}x{length}x{d}", name, show(t, 1e3), f"{base / t.median:.2f}x",
                         fmt(rate / 1e9), f"{100 * rate / bf16_flops:.0f}%"])
    return table(["layer", "batch x heads/kv x tokens x head_dim", "engine", "ms", "vs SDPA", "GFLOP/s",
                  "of bf16 matmul"], rows)
