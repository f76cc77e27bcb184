"""bf16 attention for CPU prompts (torch.ops.nativevl_cpu.attention; cpu.cpp, attention_tiles.h, on the
few-row product's loops; AVX-512 BF16 only), which `prepack_linears` switches on for the model's attention
layers where `attention_available()`: torch's CPU flash kernel ran the 1B's ViT attention (1,025 tokens,
16 heads) at 105-120 GFLOP/s, a quarter of the bf16 matmul rate."""

from __future__ import annotations

import torch

from nativevl.kernels.build import SOURCE, built, level


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T scale) v for bf16 q (B, H, Lq, D), k/v (B, Hkv, Lk, D) -> (B, H, Lq, D) (a transposed view of
    (B, Lq, H, D)), on the kernel's VDPBF16PS products (where `attention_available()`). `causal` aligns the last
    query with the last key (a prompt after a KV cache), `mask` bool (B or 1, 1, Lq or 1, Lk), True: may attend.
    Rows that may attend nothing get zeros. As in SDPA, an inf or NaN in V reaches every row of its block, even
    those that may not attend it (a weight of 0 times inf is NaN)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if not (torch.compiler.is_compiling() or built()):  # (compiled code runs after prepack_linears built it)
        raise RuntimeError(f"nativevl: {SOURCE.name} is not built here; use scaled_dot_product_attention")
    return torch.ops.nativevl_cpu.attention(q, k, v, mask, causal, scale)


def attention_available() -> bool:
    """Whether `attention` runs on this CPU: the library built, AVX-512 BF16 (level 3), NATIVEVL_GEMV not lower."""
    return level() >= 3


def attention_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """Whether `attention` computes what SDPA would here: bf16 on CPU, an even head_dim, more than one query
    (a decode step's single query stays on SDPA), a boolean mask or none, no gradient wanted (the kernel has
    no backward)."""
    return (q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.shape[-1] % 2 == 0 and q.shape[-2] > 1
            and (mask is None or mask.dtype == torch.bool)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))))
