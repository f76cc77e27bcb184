"""nativevl's CPU kernel library (cpu.cpp, its loops in gemv_tiles.h and attention_tiles.h): built on first use
with torch's own extension builder and loaded as the operations torch.ops.nativevl_cpu.* (`built()`), at the
highest instruction set level this CPU runs (`level()`; NATIVEVL_GEMV caps it). Where it cannot be built or
run, `level()` is 0 and the callers (gemv.py, bf16_attention.py, packed.py) leave the work to oneDNN and SDPA."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu.cpp")
# the loops, included once per instruction set (the attention's at AVX-512 BF16 only)
HEADERS = [SOURCE.with_name(name) for name in ("gemv_tiles.h", "attention_tiles.h", "quant_tiles.h")]
# The instruction sets the kernels are compiled for (cpu.cpp): W's tiles are 24 outputs wide at level 1, 48 above
LEVELS = {1: "AVX2 + FMA", 2: "AVX-512", 3: "AVX-512 BF16"}


def level() -> int:
    """The highest level this CPU runs (0: none, or the kernel is not built). NATIVEVL_GEMV=0 turns it off;
    NATIVEVL_GEMV=1 or 2 caps it there (to try a narrower instruction set on a wider CPU)."""
    cap = os.environ.get("NATIVEVL_GEMV", "3")
    if cap not in ("0", "1", "2", "3"):
        raise ValueError(f"NATIVEVL_GEMV={cap!r}: 0 (off), 1 (AVX2), 2 (AVX-512) or 3 (AVX-512 BF16, the default)")
    return min(int(cap), _cpu_level())


@functools.cache
def _cpu_level() -> int:
    """What this CPU runs, asked once (level() is asked on every quantized product)."""
    return int(torch.ops.nativevl_cpu.gemv_level()) if built() else 0


@functools.cache
def built() -> bool:
    """Whether the library is built and loaded (the operations exist; whether this CPU runs them is `level`)."""
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
    torch.library.register_fake("nativevl_cpu::gemv")(_gemv_shape)
    torch.library.register_fake("nativevl_cpu::attention")(_attention_shape)
    torch.library.register_fake("nativevl_cpu::quant_gemv")(_quant_shape)
    return True


def _find_ninja() -> None:
    """torch's builder runs `ninja` from PATH; the pip package's copy (a dependency) sits in the environment's
    bin folder, which is not on PATH when python is run as .venv/bin/python without activating."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _gemv_shape(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, n: int, level: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], n)


def _quant_shape(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                 bias: torch.Tensor | None, n: int, bits: int, group: int, block: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], n)


def _attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                     scale: float) -> torch.Tensor:
    b, h, lq, d = q.shape
    return q.new_empty(b, lq, h, d).transpose(1, 2)
