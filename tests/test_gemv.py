"""The one-row bf16 kernel of CPU decode (model/gemv.py, gemv_bf16.cpp): built where the CPU runs it, and its
results within one bf16 rounding (plus float32 summation error) of the exact sums of the same bf16 values."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from nativevl.model import gemv


def cpu_has_avx512_bf16() -> bool:
    """Read from /proc/cpuinfo, independently of the kernel's own check."""
    info = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not info.exists():
        return False
    flags = {f for line in info.read_text().splitlines() if line.startswith("flags") for f in line.split(":")[1].split()}
    return {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= flags


needs_kernel = pytest.mark.skipif(not cpu_has_avx512_bf16(), reason="the kernel needs a CPU with AVX-512 BF16")


def test_the_kernel_is_available_exactly_where_the_cpu_runs_it():
    assert gemv.available() == cpu_has_avx512_bf16()


def test_pack_lays_out_blocks_of_16_rows_by_32_columns_zero_padded():
    w = torch.arange(20 * 40, dtype=torch.float32).view(20, 40).to(torch.bfloat16)
    packed = gemv.pack(w)
    assert packed.shape == (2, 2, 16, 32) and packed.dtype == torch.bfloat16
    assert torch.equal(packed[0, 0], w[:16, :32]) and torch.equal(packed[0, 1, :, :8], w[:16, 32:])
    assert torch.equal(packed[1, 0, :4], w[16:, :32]) and torch.equal(packed[1, 1, :4, :8], w[16:, 32:])
    assert not packed[1, :, 4:].any() and not packed[:, 1, :, 8:].any()  # the padding is zeros
    assert gemv.pack_bias(torch.ones(20, dtype=torch.bfloat16)).tolist() == [1.0] * 20 + [0.0] * 12


@needs_kernel
@pytest.mark.parametrize("n, k, rows, bias", [
    (1, 32, 1, False), (5, 7, 1, True), (17, 40, 1, True), (33, 896, 2, False), (1152, 896, 1, True),
    (896, 4864, 3, False), (151, 1000, 1, True),
])
def test_products_are_the_exact_sums_rounded_once(n, k, rows, bias):
    g = torch.Generator().manual_seed(n * k + rows)
    # x lies in a longer buffer whose next values are NaN: a read past its end (into W's zero padding) shows
    x = torch.full((rows * k + 64,), float("nan"), dtype=torch.bfloat16)
    x[: rows * k] = torch.randn(rows * k, generator=g)
    x = x[: rows * k].view(rows, k)
    w = (torch.randn(n, k, generator=g) * 0.05).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    y = gemv.product(x, gemv.pack(w), None if b is None else gemv.pack_bias(b), n)
    assert y.shape == (rows, n) and y.dtype == torch.bfloat16
    exact = x.double() @ w.double().T + (0 if b is None else b.double())
    # float32 sums of k exact products (error at most k * 2^-24 of the sum of magnitudes), then one rounding
    # to nearest bf16 (at most half an ulp: 2^-8 of the value)
    summed = k * 2.0**-24 * (x.double().abs() @ w.double().abs().T)
    bound = 2.0**-8 * (exact.abs() + summed) + summed
    assert ((y.double() - exact).abs() <= bound).all()


@needs_kernel
def test_leading_dimensions_and_special_values():
    x = torch.randn(1, 1, 64).to(torch.bfloat16)
    w = torch.randn(3, 64).to(torch.bfloat16)
    x[0, 0, 5] = float("inf")
    w[1, 5] = 0.0  # inf * 0: NaN, as in any product
    w[2, 5] = -1.0
    y = gemv.product(x, gemv.pack(w), None, 3)
    assert y.shape == (1, 1, 3)
    assert y[0, 0, 0].isinf() == (w[0, 5] != 0) and y[0, 0, 1].isnan() and y[0, 0, 2] == float("-inf")


@needs_kernel
def test_bad_inputs_are_refused():
    w = gemv.pack(torch.randn(20, 64).to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="do not match"):
        gemv.product(torch.randn(1, 96).to(torch.bfloat16), w, None, 20)
    with pytest.raises(RuntimeError, match="2-d bf16"):
        gemv.product(torch.randn(1, 64), w, None, 20)
    with pytest.raises(RuntimeError, match="padded"):
        gemv.product(torch.randn(1, 64).to(torch.bfloat16), w, torch.zeros(20), 20)
