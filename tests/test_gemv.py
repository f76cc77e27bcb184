"""The few-row kernel of CPU decode (nativevl/kernels: gemv.py, cpu.cpp): built where the CPU runs it, at each
instruction set level this CPU has (AVX2, AVX-512, AVX-512 BF16), its results within float32 summation error (and,
in bf16, one rounding) of the exact sums of the same values; levels the CPU lacks are refused."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest
import torch

from nativevl import kernels


def cpu_level() -> int:
    """The kernel's level this CPU can run, read from /proc/cpuinfo (independently of the kernel's own check):
    3 with AVX-512 F/BW/VL and AVX-512 BF16, 2 without BF16, 1 with AVX2 and FMA only, else 0."""
    info = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not info.exists():
        return 0
    lines = info.read_text().splitlines()
    flags = {f for line in lines if line.startswith("flags") for f in line.split(":")[1].split()}
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return 3 if "avx512_bf16" in flags else 2
    return 1 if {"avx2", "fma"} <= flags else 0


CASES = [(dtype, level) for dtype in kernels.DTYPES for level in kernels.LEVELS]


def runs_here(level: int) -> bool:
    """True where this CPU runs `level`. Elsewhere the operation must refuse it (the test then checks that,
    instead of its results): it stops with a clear error rather than executing instructions the CPU lacks."""
    if level <= cpu_level():
        return True
    if kernels.built():
        w = kernels.pack(torch.ones(48, 64), level)
        with pytest.raises(RuntimeError, match=f"level {level} needs a CPU with"):
            kernels.product(torch.ones(1, 64), w, None, 48, level)
    return False


def test_the_kernel_runs_exactly_the_levels_the_cpu_has(monkeypatch):
    assert kernels.level() == cpu_level()
    assert kernels.available(torch.float32) == kernels.available(torch.bfloat16) == (cpu_level() > 0)
    assert not kernels.available(torch.float16)
    monkeypatch.setenv("NATIVEVL_GEMV", "1")  # a cap, to run a narrower set on a wider CPU
    assert kernels.level() == min(1, cpu_level())
    monkeypatch.setenv("NATIVEVL_GEMV", "0")
    assert kernels.level() == 0 and not kernels.available(torch.float32)
    monkeypatch.setenv("NATIVEVL_GEMV", "yes")
    with pytest.raises(ValueError, match="NATIVEVL_GEMV='yes': 0 \\(off\\)"):
        kernels.level()


@pytest.mark.parametrize("level", kernels.LEVELS)
@pytest.mark.parametrize("dtype, d", [(torch.bfloat16, 2), (torch.float32, 1)])
def test_pack_lays_out_tiles_of_outputs_step_by_step_zero_padded(dtype, d, level):
    t = kernels.tile(level)
    assert t == (24 if level == 1 else 48)
    n, k = t + 2, 2 * d + 1  # a tile and 2 outputs; 2 steps and one k value
    w = torch.arange(n * k, dtype=torch.float32).view(n, k).to(dtype)
    packed = kernels.pack(w, level)
    assert packed.shape == (2, 3, t, d) and packed.dtype == dtype
    for i, s, j, e in [(0, 0, 0, 0), (0, 1, t - 1, d - 1), (1, 0, 1, 0), (1, 2, 0, 0), (0, 2, 5, 0)]:
        assert packed[i, s, j, e] == w[t * i + j, d * s + e]  # tile i, step s: output ti+j at k = ds+e
    assert not packed[1, :, 2:].any()  # outputs past n are zeros
    assert not packed[:, 2, :, 1:].any()  # as is k's padding to whole steps (bf16: k odd)
    assert kernels.pack_bias(torch.ones(n, dtype=torch.bfloat16), level).tolist() == [1.0] * n + [0.0] * (t - 2)


@pytest.mark.parametrize("dtype, level", CASES)
@pytest.mark.parametrize("n, k, rows, bias", [
    (1, 32, 1, False), (5, 7, 1, True), (17, 40, 1, True), (33, 896, 2, False), (1152, 896, 1, True),
    (896, 4864, 3, False), (151, 1000, 1, True), (97, 65, 8, True), (50, 33, 9, False), (200, 896, 19, True),
])
def test_products_are_the_exact_sums_rounded_once(n, k, rows, bias, dtype, level):
    if not runs_here(level):
        return
    g = torch.Generator().manual_seed(n * k + rows)
    # x lies in a longer buffer whose next values are NaN: a read past its end (into W's zero padding) shows
    x = torch.full((rows * k + 64,), float("nan"), dtype=dtype)
    x[: rows * k] = torch.randn(rows * k, generator=g)
    x = x[: rows * k].view(rows, k)
    w = (torch.randn(n, k, generator=g) * 0.05).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    y = kernels.product(x, kernels.pack(w, level), None if b is None else kernels.pack_bias(b, level), n, level)
    assert y.shape == (rows, n) and y.dtype == dtype
    exact = x.double() @ w.double().T + (0 if b is None else b.double())
    # float32 sums: k multiply-adds in turn (at most) and the bias, each rounding to nearest (2^-24 of the
    # magnitudes so far); in bf16 then one rounding to nearest (2^-8 of the value)
    summed = (k + 5) * 2.0**-24 * (x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs()))
    bound = summed + (2.0**-8 * (exact.abs() + summed) if dtype == torch.bfloat16 else 0)
    assert ((y.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("level", kernels.LEVELS)
def test_bf16_rounds_to_nearest_even_as_torch_does(level):
    """Sums that land between two bf16 values, at the halfway point and beside it, and NaN: the kernel's
    rounding against torch's own cast of the same float32 sums (exact here: one product per output)."""
    if not runs_here(level):
        return
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    halfway = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-16, 3.0e38, float("nan")]
    n = len(halfway)
    # y_i = 1 * w_i + b_i with w_i = 1 and the float32 bias carrying the part below bf16's precision
    w = torch.ones(n, 2, dtype=torch.bfloat16)
    bias = torch.tensor(halfway, dtype=torch.float32) - 1.0
    bias[-1] = float("nan")
    x = torch.stack([one, torch.tensor(0.0, dtype=torch.bfloat16)])[None]
    y = kernels.product(x, kernels.pack(w, level), torch.nn.functional.pad(bias, (0, kernels.tile(level) - n)), n,
                        level)
    expected = (torch.ones(n) + bias).to(torch.bfloat16)
    assert torch.equal(y[0, :-1], expected[:-1]) and y[0, -1].isnan()


@pytest.mark.parametrize("dtype, level", CASES)
def test_leading_dimensions_and_special_values(dtype, level):
    if not runs_here(level):
        return
    x = torch.randn(1, 1, 64).to(dtype)
    w = torch.randn(3, 64).to(dtype)
    x[0, 0, 5] = float("inf")
    w[1, 5] = 0.0  # inf * 0: NaN, as in any product
    w[2, 5] = -1.0
    y = kernels.product(x, kernels.pack(w, level), None, 3, level)
    assert y.shape == (1, 1, 3)
    assert y[0, 0, 0].isinf() == (w[0, 5] != 0) and y[0, 0, 1].isnan() and y[0, 0, 2] == float("-inf")


@pytest.mark.parametrize("dtype, level", CASES)
def test_bad_inputs_are_refused(dtype, level):
    if not runs_here(level):
        return
    w = kernels.pack(torch.randn(20, 64).to(dtype), level)
    with pytest.raises(RuntimeError, match="do not match"):
        kernels.product(torch.randn(1, 96).to(dtype), w, None, 20, level)
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    with pytest.raises(RuntimeError, match="of x's dtype"):
        kernels.product(torch.randn(1, 64).to(other), w, None, 20, level)
    with pytest.raises(RuntimeError, match="2-d bf16 or float32"):
        kernels.product(torch.randn(1, 64).to(torch.float64), w, None, 20, level)
    with pytest.raises(RuntimeError, match="padded"):
        kernels.product(torch.randn(1, 64).to(dtype), w, torch.zeros(20), 20, level)
    other = 2 if level == 1 else 1  # tiles of the other width
    if other <= cpu_level():
        with pytest.raises(RuntimeError, match=f"packed by gemv.pack for level {other}"):
            kernels.product(torch.randn(1, 64).to(dtype), w, None, 20, other)
    with pytest.raises(RuntimeError, match="level 4: 1"):
        kernels.product(torch.randn(1, 64).to(dtype), w, None, 20, 4)


def test_the_pip_ninja_is_found_when_the_environment_is_not_activated(monkeypatch):
    import ninja

    monkeypatch.setenv("PATH", "/nowhere")
    kernels.build._find_ninja()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
    assert shutil.which("ninja") is not None


def test_the_package_ships_every_file_the_builder_reads():
    """A wheel holds what `pyproject.toml` lists as package data: the kernel's source and each header it
    includes (a stale name once left the source out, and the kernel quietly off)."""
    import fnmatch
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = listed["nativevl.kernels"]
    included = re.findall(r'#include "([^"]+)"', kernels.SOURCE.read_text())
    assert set(included) == {h.name for h in kernels.HEADERS}  # the builder's hash covers every header
    for name in [kernels.SOURCE.name, *included]:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} is not in the package data"
