"""The few-row kernel of CPU decode (model/gemv.py, gemv.cpp): built where the CPU runs it, and its results
within float32 summation error (and, in bf16, one rounding) of the exact sums of the same values."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest
import torch

from nativevl.model import gemv


def cpu_runs(dtype: torch.dtype) -> bool:
    """Whether this CPU has the instructions the kernel needs for `dtype`, read from /proc/cpuinfo
    (independently of the kernel's own check): AVX-512 F/BW/VL, and for bf16 also AVX-512 BF16."""
    info = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not info.exists():
        return False
    lines = info.read_text().splitlines()
    flags = {f for line in lines if line.startswith("flags") for f in line.split(":")[1].split()}
    return {"avx512f", "avx512bw", "avx512vl"} | ({"avx512_bf16"} if dtype == torch.bfloat16 else set()) <= flags


def runs_here(dtype: torch.dtype) -> bool:
    """True where this CPU runs the kernel for `dtype`. Elsewhere the kernel must refuse (the test then checks
    that, instead of its results): not available to `prepack_linears`, and the operation itself, where the
    library built, stopping with a clear error rather than executing instructions the CPU lacks."""
    if cpu_runs(dtype):
        return True
    assert not gemv.available(dtype)
    if gemv.built():
        with pytest.raises(RuntimeError, match="needs a CPU with AVX-512"):
            gemv.product(torch.ones(1, 64, dtype=dtype), gemv.pack(torch.ones(48, 64, dtype=dtype)), None, 48)
    return False


@pytest.mark.parametrize("dtype", gemv.DTYPES)
def test_the_kernel_is_available_exactly_where_the_cpu_runs_it(dtype):
    assert gemv.available(dtype) == cpu_runs(dtype)
    assert not gemv.available(torch.float16)


@pytest.mark.parametrize("dtype, d", [(torch.bfloat16, 2), (torch.float32, 1)])
def test_pack_lays_out_tiles_of_48_outputs_step_by_step_zero_padded(dtype, d):
    n, k = 50, 2 * d + 1  # a tile and 2 outputs; 2 steps and one k value
    w = torch.arange(n * k, dtype=torch.float32).view(n, k).to(dtype)
    packed = gemv.pack(w)
    assert packed.shape == (2, 3, 48, d) and packed.dtype == dtype
    for t, s, j, e in [(0, 0, 0, 0), (0, 1, 47, d - 1), (1, 0, 1, 0), (1, 2, 0, 0), (0, 2, 5, 0)]:
        assert packed[t, s, j, e] == w[48 * t + j, d * s + e]  # tile t, step s: output 48t+j at k = ds+e
    assert not packed[1, :, 2:].any()  # outputs past n are zeros
    assert not packed[:, 2, :, 1:].any()  # as is k's padding to whole steps (bf16: k odd)
    assert gemv.pack_bias(torch.ones(50, dtype=torch.bfloat16)).tolist() == [1.0] * 50 + [0.0] * 46


@pytest.mark.parametrize("dtype", gemv.DTYPES)
@pytest.mark.parametrize("n, k, rows, bias", [
    (1, 32, 1, False), (5, 7, 1, True), (17, 40, 1, True), (33, 896, 2, False), (1152, 896, 1, True),
    (896, 4864, 3, False), (151, 1000, 1, True), (97, 65, 8, True), (50, 33, 9, False), (200, 896, 19, True),
])
def test_products_are_the_exact_sums_rounded_once(n, k, rows, bias, dtype):
    if not runs_here(dtype):
        return
    g = torch.Generator().manual_seed(n * k + rows)
    # x lies in a longer buffer whose next values are NaN: a read past its end (into W's zero padding) shows
    x = torch.full((rows * k + 64,), float("nan"), dtype=dtype)
    x[: rows * k] = torch.randn(rows * k, generator=g)
    x = x[: rows * k].view(rows, k)
    w = (torch.randn(n, k, generator=g) * 0.05).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    y = gemv.product(x, gemv.pack(w), None if b is None else gemv.pack_bias(b), n)
    assert y.shape == (rows, n) and y.dtype == dtype
    exact = x.double() @ w.double().T + (0 if b is None else b.double())
    # float32 sums: k multiply-adds in turn (at most) and the bias, each rounding to nearest (2^-24 of the
    # magnitudes so far); in bf16 then one rounding to nearest (2^-8 of the value)
    summed = (k + 5) * 2.0**-24 * (x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs()))
    bound = summed + (2.0**-8 * (exact.abs() + summed) if dtype == torch.bfloat16 else 0)
    assert ((y.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("dtype", gemv.DTYPES)
def test_leading_dimensions_and_special_values(dtype):
    if not runs_here(dtype):
        return
    x = torch.randn(1, 1, 64).to(dtype)
    w = torch.randn(3, 64).to(dtype)
    x[0, 0, 5] = float("inf")
    w[1, 5] = 0.0  # inf * 0: NaN, as in any product
    w[2, 5] = -1.0
    y = gemv.product(x, gemv.pack(w), None, 3)
    assert y.shape == (1, 1, 3)
    assert y[0, 0, 0].isinf() == (w[0, 5] != 0) and y[0, 0, 1].isnan() and y[0, 0, 2] == float("-inf")


@pytest.mark.parametrize("dtype", gemv.DTYPES)
def test_bad_inputs_are_refused(dtype):
    if not runs_here(dtype):
        return
    w = gemv.pack(torch.randn(20, 64).to(dtype))
    with pytest.raises(RuntimeError, match="do not match"):
        gemv.product(torch.randn(1, 96).to(dtype), w, None, 20)
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    with pytest.raises(RuntimeError, match="of x's dtype" if cpu_runs(other) else "needs a CPU with AVX-512 BF16"):
        gemv.product(torch.randn(1, 64).to(other), w, None, 20)
    with pytest.raises(RuntimeError, match="2-d bf16 or float32"):
        gemv.product(torch.randn(1, 64).to(torch.float64), w, None, 20)
    with pytest.raises(RuntimeError, match="padded"):
        gemv.product(torch.randn(1, 64).to(dtype), w, torch.zeros(20), 20)


def test_the_pip_ninja_is_found_when_the_environment_is_not_activated(monkeypatch):
    import ninja

    monkeypatch.setenv("PATH", "/nowhere")
    gemv._find_ninja()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
    assert shutil.which("ninja") is not None
