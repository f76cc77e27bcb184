"""nativevl's CPU kernels, a room below the model (it imports torch and the standard library only):

- build.py: the C++ library (cpu.cpp, gemv_tiles.h, attention_tiles.h), built on first use and loaded as
  torch.ops.nativevl_cpu.*; `built()`, `level()` (the instruction set level this CPU runs; NATIVEVL_GEMV=0
  turns the kernels off, 1 or 2 caps the level);
- gemv.py: the few-row product of CPU decode (`pack`, `pack_bias`, `product`, `available`);
- bf16_attention.py: bf16 attention for CPU prompts on AVX-512 BF16 (`attention`, `attention_takes`,
  `attention_available`);
- packed.py: `PackedLinear`, the products of nn.Linear layers on oneDNN-packed copies and the few-row kernel,
  with the row counts that choose between them (PACKED_MAX_ROWS, BF16_PACKED_MIN_ROWS, KERNEL_MAX_ROWS).

The model turns them on with one switch, `prepack_linears` (nativevl/model/layers.py)."""

from nativevl.kernels.bf16_attention import attention, attention_available, attention_takes
from nativevl.kernels.build import HEADERS, LEVELS, SOURCE, built, level
from nativevl.kernels.gemv import DTYPES, available, depth, pack, pack_bias, product, tile
from nativevl.kernels.packed import (
    BF16_PACKED_MIN_ROWS,
    KERNEL_MAX_ROWS,
    PACKED_MAX_ROWS,
    PackedLinear,
    cpu_multiplies_bf16,
    linear_forward,
    packable,
    packed_product,
)

__all__ = [
    "BF16_PACKED_MIN_ROWS", "DTYPES", "HEADERS", "KERNEL_MAX_ROWS", "LEVELS", "PACKED_MAX_ROWS", "SOURCE",
    "PackedLinear", "attention", "attention_available", "attention_takes", "available", "built",
    "cpu_multiplies_bf16", "depth", "level", "linear_forward", "pack", "pack_bias", "packable", "packed_product",
    "product", "tile",
]
