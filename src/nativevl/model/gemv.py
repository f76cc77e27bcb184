"""The few-row product kernel of CPU decode (gemv.cpp, gemv_tiles.h): built on first use with torch's own
extension builder, used by `prepack_linears` (model/layers.py) for the rows of a decode step (up to
KERNEL_MAX_ROWS[level] there), in float32 and bf16, on x86-64 CPUs with AVX2 + FMA or AVX-512 (bf16's pairs
by VDPBF16PS where the CPU has AVX-512 BF16). Where it cannot be built or run, `available(dtype)` is False
and oneDNN's products serve instead.

The same library holds bf16 attention for prompts on those loops (`attention`, attention_tiles.h; AVX-512
BF16 only), which `prepack_linears` switches on for the attention layers where `attention_available()`."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("gemv.cpp")
# the loops, included once per instruction set (the attention's at AVX-512 BF16 only)
HEADERS = [SOURCE.with_name(name) for name in ("gemv_tiles.h", "attention_tiles.h")]
DTYPES = (torch.bfloat16, torch.float32)
# The instruction sets the kernel is compiled for (gemv.cpp): W's tiles are 24 outputs wide at level 1, 48 above
LEVELS = {1: "AVX2 + FMA", 2: "AVX-512", 3: "AVX-512 BF16"}


def level() -> int:
    """The highest level this CPU runs (0: none, or the kernel is not built). NATIVEVL_GEMV=0 turns it off;
    NATIVEVL_GEMV=1 or 2 caps it there (to try a narrower instruction set on a wider CPU)."""
    cap = os.environ.get("NATIVEVL_GEMV", "3")
    if cap not in ("0", "1", "2", "3"):
        raise ValueError(f"NATIVEVL_GEMV={cap!r}: 0 (off), 1 (AVX2), 2 (AVX-512) or 3 (AVX-512 BF16, the default)")
    if not built():
        return 0
    return min(int(cap), int(torch.ops.nativevl_cpu.gemv_level()))


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel is built and this CPU runs it for `dtype`."""
    return dtype in DTYPES and level() > 0


@functools.cache
def built() -> bool:
    """Whether the library is built and loaded (the operations exist; whether this CPU runs them is `available`)."""
    if os.environ.get("NATIVEVL_GEMV", "3") == "0":
        return False
    try:
        from torch.utils.cpp_extension import load

        _find_ninja()
        # cached under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), rebuilt when the source changes
        # (torch hashes the sources and flags, not included headers: the header's hash goes in as a flag);
        # -fopenmp because at::parallel_for is OpenMP in torch's CPU builds (without it the loop runs serially)
        header = hashlib.sha256(b"".join(h.read_bytes() for h in HEADERS)).hexdigest()[:16]
        load(name="nativevl_gemv", sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp", f"-DTILES_H={header}"],
             extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as e:  # noqa: BLE001 (no compiler, no ninja, another platform: decode still works, via oneDNN)
        warnings.warn(f"nativevl: could not build {SOURCE.name} ({type(e).__name__}: {e}); "
                      "CPU decode uses oneDNN's products and attention SDPA instead", stacklevel=3)
        return False
    # the outputs' shapes, for torch.compile
    torch.library.register_fake("nativevl_cpu::gemv")(_shape)
    torch.library.register_fake("nativevl_cpu::attention")(_attention_shape)
    return True


def _find_ninja() -> None:
    """torch's builder runs `ninja` from PATH; the pip package's copy (a dependency) sits in the environment's
    bin folder, which is not on PATH when python is run as .venv/bin/python without activating."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


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


def _shape(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, n: int, level: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], n)


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


def _attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                     scale: float) -> torch.Tensor:
    b, h, lq, d = q.shape
    return q.new_empty(b, lq, h, d).transpose(1, 2)
