"""The few-row product of int8/int4 weights (torch.ops.nativevl_cpu.quant_gemv; cpu.cpp, quant_tiles.h), used by
`QuantLinear` (model/quant.py) for the rows of a decode step on x86-64 CPUs with AVX2 + FMA. The loops are the
AVX2 ones at every level: an AVX-512 CPU runs them too (a wider version waits for a measurement on one).
Where the library cannot be built or run, `available` is False and QuantLinear dequantizes instead."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nativevl.kernels.build import level

TILE = 24  # outputs per tile: three AVX2 registers of float32 sums
# Up to this many rows the kernel reads the codes; above, a dequantized product (oneDNN's) is faster. On the
# 1B shape's matrices on this 2-core AVX2 CPU (docs/benchmarks.md): the kernel's time grows with the rows
# while a dequantize-then-multiply costs about one bf16 read of W plus the product.
MAX_ROWS = 16


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel is built and this CPU runs it for inputs of `dtype`."""
    return dtype in (torch.float32, torch.bfloat16) and level() > 0


def pack(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A QuantLinear's codes, scales and zeros in the kernel's layout: W (tiles, steps, TILE) bytes (at 4 bits
    `qweight`'s bytes as they are: two k values each), scales and offsets -z*s (tiles, groups, TILE) float32,
    outputs zero padded to whole tiles; and the steps per group."""
    n = layer.out_features
    codes = layer.qweight  # (n, steps): one byte per output and step at either width
    w = F.pad(codes, (0, 0, 0, -n % TILE)).view(-1, TILE, codes.shape[1]).transpose(1, 2).contiguous()
    scales = layer.scales.float()
    offsets = -layer.qzeros.float() * scales

    def tiles(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 0, 0, -n % TILE)).view(-1, TILE, t.shape[1]).transpose(1, 2).contiguous()

    depth = 1 if layer.bits == 8 else 2
    return w, tiles(scales), tiles(offsets), layer.group // depth


def product(x: torch.Tensor, packed: tuple, bias: torch.Tensor | None, n: int, bits: int) -> torch.Tensor:
    """x @ W.T + b for x (..., k) float32 or bf16, W packed by `pack`; the result in x's dtype."""
    w, scales, offsets, group_steps = packed
    rows = x.reshape(-1, x.shape[-1])
    b = None if bias is None else F.pad(bias.float(), (0, -n % TILE))
    y = torch.ops.nativevl_cpu.quant_gemv(rows, w, scales, offsets, b, n, bits, group_steps)
    return y.view(*x.shape[:-1], n)
