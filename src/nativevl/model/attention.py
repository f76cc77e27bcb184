"""Causal attention for the language model, one function with its backends:

- dense: `scaled_dot_product_attention` with the causal flag, or a boolean mask (padding, KV cache offsets);
  for a bf16 prompt on a CPU with AVX-512 BF16, after `prepack_linears`, nativevl's kernel
  (nativevl/kernels/bf16_attention.py);
- packed (`cu_seqlens`, one row holding several samples): no token attends across samples. On CUDA in half
  precision through torch's variable-length flash kernel; elsewhere one causal SDPA call per sample, which
  is exact (and on CPU faster than one call with a block-diagonal mask).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from nativevl import kernels


@dataclass
class AttentionInputs:
    """What every layer needs to attend: rotary tables and either a mask, the causal flag, or segments."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None  # bool (B, 1, Lq, Lk), True = may attend
    is_causal: bool = False
    cu_seqlens: torch.Tensor | None = None  # (n + 1,) int32 sample boundaries of a packed row
    segments: list[tuple[int, int]] | None = None  # the same boundaries as Python ints
    max_seqlen: int = 0


@cache
def _varlen_options() -> frozenset[str] | None:
    """The keyword arguments of this torch's `varlen_attn` (2.11 has no `enable_gqa`, 2.13 has), or None where
    it is missing or cannot be made causal through `window_size` (then each sample gets its own SDPA call)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    options = frozenset(inspect.signature(varlen_attn).parameters)
    return options if "window_size" in options else None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: AttentionInputs, dropout: float = 0.0,
           kernel: bool = False) -> torch.Tensor:
    """q (B, H, Lq, D), k/v (B, Hkv, Lk, D) -> (B, H, Lq, D). `kernel`: a bf16 prompt on CPU may use nativevl's
    attention kernel (nativevl/kernels/bf16_attention.py; `prepack_linears` turns it on where the CPU has
    AVX-512 BF16)."""
    gqa = k.shape[1] != q.shape[1]
    if kernel and a.segments is None and dropout == 0.0 and kernels.attention_takes(q, k, v, a.mask):
        return kernels.attention(q, k, v, a.mask, a.is_causal)
    if gqa and q.shape[2] == 1 and not a.is_causal and a.segments is None and q.device.type == "cpu":
        # Decoding (one query per row): a key/value head's group of query heads can be rows of one head, as
        # nothing orders them causally. torch's CPU kernels run this 1.4-12x faster than with enable_gqa (bf16,
        # 40-300 keys, batch 1-8; the same sums). The mask (B, 1, 1, Lk) broadcasts over the rows alike.
        b, heads, _, dim = q.shape
        grouped = q.reshape(b, k.shape[1], heads // k.shape[1], dim)
        out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=a.mask, dropout_p=dropout)
        return out.reshape(b, heads, 1, dim)
    if a.segments is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=a.mask, is_causal=a.is_causal,
                                              dropout_p=dropout, enable_gqa=gqa)
    varlen = _varlen_options() if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else None
    if varlen is not None and dropout == 0.0:
        from torch.nn.attention.varlen import varlen_attn

        options: dict[str, object] = {"window_size": (-1, 0)}  # causal
        if gqa and "enable_gqa" in varlen:
            options["enable_gqa"] = True
        elif gqa:  # an older torch: each key/value head repeated for its group of query heads
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        cu = a.cu_seqlens.to(device=q.device, dtype=torch.int32)
        out = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu,
                          a.max_seqlen, a.max_seqlen, **options)
        return out.transpose(0, 1)[None]
    return torch.cat([
        F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, dropout_p=dropout,
                                       enable_gqa=gqa)
        for s, e in a.segments
    ], dim=2)
