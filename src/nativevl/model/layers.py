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
    """Float32 inference on CPU: give each nn.Linear a copy of its weight laid out in oneDNN's blocked format
    (what inductor does to weights when it freezes a graph) and multiply with that copy. On a 2-core AVX2 CPU a
    decode step of the InternVL3-1B shape ran 1.4x faster at batch 1 and 2x at batch 8 (docs/benchmarks.md).

    The copies double the memory of the packed weights and are not updated if the weights change: pack a model
    after loading, moving and casting it. With gradients enabled the layers use their own weights, so training
    a packed model stays correct. Returns the number of layers packed."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this torch build has no oneDNN (mkldnn) CPU kernels to pack weights for")
    count = 0
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32:
            packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), 1)
            layer.forward = partial(_packed_linear, layer, packed)  # an instance attribute shadows Linear.forward
            count += 1
    return count


def _packed_linear(layer: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.dtype != torch.float32:
        return nn.functional.linear(x, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, layer.bias, "none", [], "")
