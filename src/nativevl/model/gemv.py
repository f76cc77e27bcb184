"""The few-row product kernel of CPU decode (gemv.cpp): built on first use with torch's own extension builder,
used by `prepack_linears` (model/layers.py) for the rows of a decode step (up to KERNEL_MAX_ROWS there), in
bf16 where the CPU has AVX-512 BF16 and in float32 where it has AVX-512. Where it cannot be built or run,
`available(dtype)` is False and oneDNN's products serve instead."""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("gemv.cpp")
TILE = 48  # W's outputs per tile: three 16-lane registers of float32 sums
DTYPES = (torch.bfloat16, torch.float32)


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel is built and this CPU runs it for `dtype`. NATIVEVL_GEMV=0 turns it off."""
    return dtype in DTYPES and built() and bool(torch.ops.nativevl_cpu.gemv_supported(dtype == torch.bfloat16))


@functools.cache
def built() -> bool:
    """Whether the library is built and loaded (the operations exist; whether this CPU runs them is `available`)."""
    if os.environ.get("NATIVEVL_GEMV", "1") == "0":
        return False
    try:
        from torch.utils.cpp_extension import load

        _find_ninja()
        # cached under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), rebuilt when the source changes;
        # -fopenmp because at::parallel_for is OpenMP in torch's CPU builds (without it the loop runs serially)
        load(name="nativevl_gemv", sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
             extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as e:  # noqa: BLE001 (no compiler, no ninja, another platform: decode still works, via oneDNN)
        warnings.warn(f"nativevl: could not build {SOURCE.name} ({type(e).__name__}: {e}); "
                      "CPU decode uses oneDNN's products instead", stacklevel=3)
        return False
    torch.library.register_fake("nativevl_cpu::gemv")(_shape)  # its output's shape, for torch.compile
    return True


def _find_ninja() -> None:
    """torch's builder runs `ninja` from PATH; the pip package's copy (a dependency) sits in the environment's
    bin folder, which is not on PATH when python is run as .venv/bin/python without activating."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def depth(dtype: torch.dtype) -> int:
    """k values per output and step: 2 in bf16 (the pair VDPBF16PS multiplies), 1 in float32."""
    return 2 if dtype == torch.bfloat16 else 1


def pack(weight: torch.Tensor) -> torch.Tensor:
    """(n, k) -> the kernel's layout (ceil(n/48), ceil(k/d), 48, d), d = depth(dtype), zero padded: tile t holds
    outputs 48t..48t+47, and for each step s their weights at k = s*d .. s*d+d-1 side by side."""
    n, k = weight.shape
    d = depth(weight.dtype)
    w = F.pad(weight.detach(), (0, -k % d, 0, -n % TILE))
    return w.view(w.shape[0] // TILE, TILE, w.shape[1] // d, d).transpose(1, 2).contiguous()


def pack_bias(bias: torch.Tensor) -> torch.Tensor:
    """The bias in float32, padded to the packed weight's outputs (added before the result is rounded)."""
    return F.pad(bias.detach().float(), (0, -bias.numel() % TILE))


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    """x @ W.T + b for x (..., k), W packed by `pack` from an (n, k) matrix of x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    return torch.ops.nativevl_cpu.gemv(rows, weight, bias, n).view(*x.shape[:-1], n)


def _shape(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], n)
