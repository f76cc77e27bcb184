"""The few-row product kernel of CPU decode (torch.ops.nativevl_cpu.gemv; cpu.cpp, gemv_tiles.h), used by
`PackedLinear` (packed.py) for the rows of a decode step (up to KERNEL_MAX_ROWS[level] there), in float32 and
bf16, on x86-64 CPUs with AVX2 + FMA or AVX-512 (bf16's pairs by VDPBF16PS where the CPU has AVX-512 BF16).
Where it cannot be built or run, `available(dtype)` is False and oneDNN's products serve instead."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nativevl.kernels.build import level

DTYPES = (torch.bfloat16, torch.float32)


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel is built and this CPU runs it for `dtype`."""
    return dtype in DTYPES and level() > 0


def tile(level: int) -> int:
    """W's outputs per tile at `level`: three registers' lanes of float32 sums."""
    return 24 if level == 1 else 48


def depth(dtype: torch.dtype) -> int:
    """k values per output and step: 2 in bf16 (the pair VDPBF16PS multiplies), 1 in float32."""
    return 2 if dtype == torch.bfloat16 else 1


def pack(weight: torch.Tensor, level: int) -> torch.Tensor:
    """(n, k) -> the kernel's layout at `level`, (ceil(n/t), ceil(k/d), t, d) with t = tile(level) and
    d = depth(dtype), zero padded: tile i holds outputs t*i .. t*i+t-1, and for each step s their weights at
    k = s*d .. s*d+d-1 side by side."""
    n, k = weight.shape
    d, t = depth(weight.dtype), tile(level)
    w = F.pad(weight.detach(), (0, -k % d, 0, -n % t))
    return w.view(w.shape[0] // t, t, w.shape[1] // d, d).transpose(1, 2).contiguous()


def pack_bias(bias: torch.Tensor, level: int) -> torch.Tensor:
    """The bias in float32, padded to the packed weight's outputs (added before the result is rounded)."""
    return F.pad(bias.detach().float(), (0, -bias.numel() % tile(level)))


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n: int, level: int) -> torch.Tensor:
    """x @ W.T + b for x (..., k), W packed by `pack` at `level` from an (n, k) matrix of x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    return torch.ops.nativevl_cpu.gemv(rows, weight, bias, n, level).view(*x.shape[:-1], n)
