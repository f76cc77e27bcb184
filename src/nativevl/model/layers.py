"""Small building blocks shared by the vision and the language tower."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn


class RMSNorm(nn.Module):
    """`weight * x / rms(x)` with the statistics in float32 (InternRMSNorm and Qwen2RMSNorm agree on this)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rms_norm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm_type must be 'layer_norm' or 'rms_norm', got {kind!r}")


def activation(name: str) -> nn.Module:
    # "gelu" is the exact erf GELU in both the original and transformers; the tanh form is a different function.
    table = {"gelu": nn.GELU, "silu": nn.SiLU, "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh")}
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(table)}")
    return table[name]()


class DropPath(nn.Module):
    """Stochastic depth per sample (timm `DropPath`): drop the whole residual branch of some samples."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep if keep > 0 else x * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


def prepack_linears(module: nn.Module) -> int:
    """CPU inference: give each float32 or bfloat16 nn.Linear a float32 copy of its weight laid out in oneDNN's
    blocked format (what inductor does to weights when it freezes a graph) and multiply with that copy where it
    is faster than torch's default kernel (measured on a 2-core AVX2 CPU, the InternVL3-1B shape):

    - float32, up to PACKED_MAX_ROWS rows: a decode step 1.6x faster at batch 1 and 1.8x at batch 8;
    - bfloat16 on a CPU without native bf16 products (no AVX-512 BF16/AMX), from BF16_PACKED_MIN_ROWS rows:
      torch's bf16 product there costs time in proportion to the rows (batch 8 took 2.1x float32-packed's
      time, a prefill about 6x), so the input is widened to float32, multiplied, and the result rounded back.
      The products of bf16 values are exact in float32 and both kernels accumulate in float32: only the
      summation order differs. At 1-2 rows the bf16 kernel, reading half the bytes, stays.

    The copies cost memory (float32: as much again as the packed weights; bfloat16: twice as much again) and are
    not updated if the weights change: pack a model after loading, moving and casting it. With gradients enabled
    the layers use their own weights, so training a packed model stays correct. Returns the number of layers
    packed."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this torch build has no oneDNN (mkldnn) CPU kernels to pack weights for")
    widen_bf16 = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    count = 0
    for layer in module.modules():
        if not isinstance(layer, nn.Linear) or layer.weight.device.type != "cpu":
            continue
        if layer.weight.dtype == torch.float32:
            rows = (1, PACKED_MAX_ROWS)
        elif layer.weight.dtype == torch.bfloat16 and widen_bf16:
            rows = (BF16_PACKED_MIN_ROWS, None)
        else:
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach().float(), 1)
        bias = None if layer.bias is None else layer.bias.detach().float()
        # an instance attribute shadows Linear.forward
        layer.forward = partial(_packed_linear, layer, packed, bias, rows)
        count += 1
    return count


# Above this many rows (a prefill, a ViT tile) the float32 packed product is no faster than MKL's and at 512
# rows up to 1.5x slower (the 1B shape's matrices; a 1-tile prompt's first token took 7.1 s packed, 6.1 s not).
PACKED_MAX_ROWS = 256
# From this many rows a bf16 layer is faster widened to float32 and packed (24 of the 1B shape's matrices:
# 2 rows 15 ms bf16 vs 24 ms widened; 4 rows 30 vs 26 ms; 8 rows 59 vs 28 ms).
BF16_PACKED_MIN_ROWS = 4


def _packed_linear(layer: nn.Linear, packed: torch.Tensor, bias: torch.Tensor | None,
                   rows: tuple[int, int | None], x: torch.Tensor) -> torch.Tensor:
    n = x.numel() // x.shape[-1]
    low, high = rows
    if torch.is_grad_enabled() or x.dtype != layer.weight.dtype or n < low or (high is not None and n > high):
        return nn.functional.linear(x, layer.weight, layer.bias)
    out = torch.ops.mkldnn._linear_pointwise(x.float().contiguous(), packed, bias, "none", [], "")
    return out.to(x.dtype)
