"""The physical limits every other figure is compared to, measured in the same run:

- read bandwidth: a sum over a tensor far larger than the caches (each byte read once);
- matmul FLOP/s: one large product per dtype (the prefill ceiling);
- the kernel floor of a decode step: the language model's matrix products alone, on the model's own weights,
  for a batch of B single-token rows (no attention, norms, rotary or Python around them); on a CPU also the
  packed floor, the same products as `prepack_linears` makes them (oneDNN-packed, q/k/v and gate/up as one;
  a decode step's rows through nativevl's few-row kernel where the CPU has AVX2 or AVX-512).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import measure


def read_bandwidth(device: str, repeats: int, gib: float = 1.0) -> float:
    """GB/s of one pass over `gib` GiB of float32."""
    nbytes = int(gib * 2**30)
    run = read_runner(nbytes, device)
    return nbytes / measure(lambda: run(1), repeats, device=device).median / 1e9


def read_runner(nbytes: int, device: str) -> Callable[[int], None]:
    """`run(n)`: n passes of a sum over `nbytes` of float32, timed like an engine's `generate(n)`, so its per-step
    time is what reading a step's weight bytes takes at the bandwidth of that moment (this shared machine's
    drifts by up to 2x within a run: timed in turns with the engines, the bound drifts with them)."""
    x = torch.ones(nbytes // 4, device=device)

    @torch.inference_mode()
    def run(n: int) -> None:
        for _ in range(n):
            x.sum()

    return run


def matmul_flops(dtype: torch.dtype, device: str, repeats: int, n: int | None = None) -> float:
    """FLOP/s of an n x n x n product in nn.Linear's layout (x @ W.T: on CPUs without bf16 units torch's bf16
    kernels are 10-100x slower for other layouts, and the models only use this one). n: 2048 on a CPU; 8192 on
    a GPU, where a 2048³ product (50 µs on an H100) measured 250-380 TFLOP/s of the ~800 it can reach, and
    ten products per timing so the clocks have ramped up."""
    gpu = torch.device(device).type == "cuda"
    n = n or (8192 if gpu else 2048)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    count = 10 if gpu else 1
    t = measure(lambda: [F.linear(a, b) for _ in range(count)], repeats, warmup=3 if gpu else 1, device=device)
    return 2 * n**3 * count / t.median


def decode_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every matrix a decode step reads: each decoder layer's projections and the output head (an embedding
    lookup reads one row, so the input embedding does not count)."""
    lm = model.language_model
    return [m.weight for m in lm.model.layers.modules() if isinstance(m, torch.nn.Linear)] + [lm.lm_head.weight]


def weight_bytes(weights: list[torch.Tensor]) -> int:
    return sum(w.numel() * w.element_size() for w in weights)


def floor_runner(weights: list[torch.Tensor], batch: int) -> Callable[[int], None]:
    """`run(n)`: n decode steps' matrix products alone, F.linear of a (batch, in) input with each weight in turn
    (timed like an engine's `generate(n)`, so its per-step time is the kernel floor)."""
    device = str(weights[0].device)
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype, device=device) for w in weights}

    @torch.inference_mode()
    def run(n: int) -> None:
        for _ in range(n):
            for w in weights:
                F.linear(inputs[w.shape[1]], w)

    return run


def packed_floor_runner(products: list, batch: int) -> Callable[[int], None] | None:  # list[PackedLinear]
    """`run(n)`: n decode steps' products as `--prepack` makes them (`products`: the `PackedLinear`s that
    `prepack_linears` made, in forward order: each decoder layer's q/k/v, o, gate/up and down, then the output
    head), or None where they do not take `batch` rows (nothing packed, or bf16 widened only from 4 rows)."""
    if not products:
        return None
    x = {p.in_features: torch.randn(batch, p.in_features, dtype=p.dtype) for p in products}
    with torch.inference_mode():
        if not all(p.takes(x[p.in_features]) for p in products):
            return None

    @torch.inference_mode()
    def run(n: int) -> None:
        for _ in range(n):
            for p in products:
                p(x[p.in_features])

    return run
