"""The bf16 matrix-vector kernel of CPU decode (gemv_bf16.cpp): built on first use with torch's own extension
builder, used by `prepack_linears` (model/layers.py) for the few rows of a decode step where the CPU has
AVX-512 BF16. Where it cannot be built or run, `available()` is False and oneDNN's products serve instead."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("gemv_bf16.cpp")
ROWS, COLS = 16, 32  # the kernel's block: 16 rows of W by 32 columns


@functools.cache
def available() -> bool:
    """Whether the kernel is built and this CPU runs it. NATIVEVL_GEMV=0 turns it off (oneDNN instead)."""
    if os.environ.get("NATIVEVL_GEMV", "1") == "0" or not hasattr(torch.ops, "load_library"):
        return False
    try:
        from torch.utils.cpp_extension import load

        # cached under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), rebuilt when the source changes
        load(name="nativevl_gemv_bf16", sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
             extra_ldflags=["-fopenmp"], is_python_module=False)  # -fopenmp: at::parallel_for is OpenMP in torch
    except Exception as e:  # no compiler, no ninja, another platform: decode still works, through oneDNN
        warnings.warn(f"nativevl: could not build {SOURCE.name} ({type(e).__name__}: {e}); "
                      "CPU decode uses oneDNN's products instead", stacklevel=2)
        return False
    torch.library.register_fake("nativevl_cpu::gemv_bf16")(_shape)  # its output's shape, for torch.compile
    return bool(torch.ops.nativevl_cpu.gemv_bf16_supported())


def pack(weight: torch.Tensor) -> torch.Tensor:
    """(n, k) -> the kernel's layout (ceil(n/16), ceil(k/32), 16, 32) in bf16, zero padded: each block of 16 rows
    by 32 columns contiguous, a block-row's blocks in column order."""
    n, k = weight.shape
    w = F.pad(weight.detach().to(torch.bfloat16), (0, -k % COLS, 0, -n % ROWS))
    return w.view(w.shape[0] // ROWS, ROWS, w.shape[1] // COLS, COLS).transpose(1, 2).contiguous()


def pack_bias(bias: torch.Tensor) -> torch.Tensor:
    """The bias in float32, padded to the packed weight's rows (added before the result is rounded to bf16)."""
    return F.pad(bias.detach().float(), (0, -bias.numel() % ROWS))


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    """x @ W.T + b for x (..., k) in bf16, W packed by `pack` from an (n, k) matrix."""
    rows = x.reshape(-1, x.shape[-1])
    return torch.ops.nativevl_cpu.gemv_bf16(rows, weight, bias, n).view(*x.shape[:-1], n)


def _shape(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], n)
