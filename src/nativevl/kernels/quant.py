"""The product of int8/int4 weights (torch.ops.nativevl_cpu.quant_gemv; cpu.cpp, quant_tiles.h), used by
`QuantLinear` (model/quant.py) for every product on x86-64 CPUs with AVX2 + FMA: x is put on 8 bits per block
of 32 k values (llama.cpp's Q8 activations) and multiplied with the codes in integer dot products. The loops
are the AVX2 ones at every level: an AVX-512 CPU runs them too (a wider or VNNI version waits for a
measurement on one). Where the library cannot be built or run, or a layer's groups do not fit the blocks
(`supports`), QuantLinear dequantizes instead."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nativevl.kernels import gemv
from nativevl.kernels.build import level

TILE = 24  # outputs per tile: three AVX2 registers of float32 sums
BLOCK = 32  # k values per 8-bit block of x (fewer where a layer's groups are narrower)
# The kernel takes every row count (one path, no threshold): on the 1B's 4864 x 896 matrix at 296 rows the
# float32-widening version of this kernel already matched dequantize-then-multiply (106 ms int4 against 113);
# the integer one is faster still (docs/benchmarks.md).


DTYPES = (torch.float32, torch.bfloat16)  # inputs the kernel takes


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel is built and this CPU runs it for inputs of `dtype`."""
    return dtype in DTYPES and level() > 0


def block_of(layer: torch.nn.Module) -> int:
    """x's block for a layer: the widest of 32, 16, 8 (and 4 at 8 bits) that divides its groups; 0 if none."""
    step = 4 if layer.bits == 8 else 8
    whole = layer.group == layer.in_features  # one group a row: padded to whole blocks of 32
    return next((b for b in (32, 16, 8, 4) if b >= step and (whole or layer.group % b == 0)), 0)


def supports(layer: torch.nn.Module) -> bool:
    return block_of(layer) > 0


def pack(layer: torch.nn.Module) -> tuple:
    """A QuantLinear in the kernel's layout, made once: W (tiles, steps, 4 * TILE) bytes (quant_tiles.h: per
    step 3 registers of 8 outputs x 4 bytes; int8 codes as q - 128, int4 nibbles 4 k values apart), scales s
    and offsets (128 - z) * s or -z * s (tiles, groups, TILE) float32; outputs zero padded to whole tiles and,
    for one group a row, k to whole blocks; the group and block; the bias in float32, padded (or None)."""
    n, k, bits = layer.out_features, layer.in_features, layer.bits
    block = block_of(layer)
    group = layer.group if layer.group < k else k + -k % BLOCK
    codes = F.pad(layer.codes(), (0, group * (k // layer.group) - k, 0, -n % TILE))  # (tiles * TILE, kp)
    tiles, kp = codes.shape[0] // TILE, codes.shape[1]
    if bits == 8:  # (tile, vector, lane, step, 4) -> (tile, step, vector, lane, 4)
        w = (codes ^ 128).view(tiles, 3, 8, kp // 4, 4).permute(0, 3, 1, 2, 4)
    else:  # k = 8 step + 4 half + j: half 0 in the low nibble, 1 in the high
        c = codes.view(tiles, 3, 8, kp // 8, 2, 4)
        w = (c[:, :, :, :, 0] | (c[:, :, :, :, 1] << 4)).permute(0, 3, 1, 2, 4)
    w = w.reshape(tiles, -1, 4 * TILE).contiguous()

    def by_tile(t: torch.Tensor) -> torch.Tensor:  # (n, groups) -> (tiles, groups, TILE)
        return F.pad(t, (0, 0, 0, -n % TILE)).view(tiles, TILE, -1).transpose(1, 2).contiguous()

    scales = layer.scales.float()
    offsets = ((128 if bits == 8 else 0) - layer.qzeros.float()) * scales
    bias = None if layer.bias is None else gemv.pack_bias(layer.bias, 1)  # level 1's tiles are TILE wide
    return w, by_tile(scales), by_tile(offsets), bias, group, block


def product(x: torch.Tensor, packed: tuple, n: int, bits: int) -> torch.Tensor:
    """x @ W.T + b for x (..., k) float32 or bf16, W and b packed by `pack`; the result in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    y = torch.ops.nativevl_cpu.quant_gemv(rows, *packed[:4], n, bits, *packed[4:])
    return y.view(*x.shape[:-1], n)
