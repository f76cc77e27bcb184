"""The few-row product of int8/int4 weights (torch.ops.nativevl_cpu.quant_gemv; cpu.cpp, quant_tiles.h), used by
`QuantLinear` (model/quant.py) for every product on x86-64 CPUs with AVX2 + FMA. The loops are the
AVX2 ones at every level: an AVX-512 CPU runs them too (a wider version waits for a measurement on one).
Where the library cannot be built or run, `available` is False and QuantLinear dequantizes instead."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nativevl.kernels import gemv
from nativevl.kernels.build import level

TILE = 24  # outputs per tile: three AVX2 registers of float32 sums
# The kernel takes every row count: on the 1B shape's largest matrix (4864 x 896, bf16 input, this 2-core AVX2
# CPU, timed in turns) it ran int4 at 1 row in 0.57 ms (bf16 oneDNN 1.07), and at 296 rows in 106 ms, where
# dequantizing the weight and multiplying took 354 ms in bf16 (no native bf16 here) and 113 ms widened to
# float32; int8 at 296 rows 131 ms against 92 widened. One path, no threshold.


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel is built and this CPU runs it for inputs of `dtype`."""
    return dtype in (torch.float32, torch.bfloat16) and level() > 0


def pack(layer: torch.nn.Module) -> tuple:
    """A QuantLinear in the kernel's layout, made once: W (tiles, steps, TILE) bytes (at 4 bits `qweight`'s
    bytes as they are: two k values each), scales and offsets -z*s (tiles, groups, TILE) float32, outputs zero
    padded to whole tiles; the steps per group; the bias in float32, padded likewise (or None)."""
    n = layer.out_features

    def tiles(t: torch.Tensor) -> torch.Tensor:  # (n, c) -> (tiles, c, TILE)
        return F.pad(t, (0, 0, 0, -n % TILE)).view(-1, TILE, t.shape[1]).transpose(1, 2).contiguous()

    scales = layer.scales.float()
    bias = None if layer.bias is None else gemv.pack_bias(layer.bias, 1)  # level 1's tiles are TILE wide
    depth = 1 if layer.bits == 8 else 2
    return tiles(layer.qweight), tiles(scales), tiles(-layer.qzeros.float() * scales), layer.group // depth, bias


def product(x: torch.Tensor, packed: tuple, n: int, bits: int) -> torch.Tensor:
    """x @ W.T + b for x (..., k) float32 or bf16, W and b packed by `pack`; the result in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    y = torch.ops.nativevl_cpu.quant_gemv(rows, *packed[:3], packed[4], n, bits, packed[3])
    return y.view(*x.shape[:-1], n)
