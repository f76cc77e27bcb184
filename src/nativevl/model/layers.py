"""Small building blocks shared by the vision and the language tower, and `prepack_linears`, the model's switch
onto nativevl's CPU kernels (nativevl/kernels)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from nativevl import kernels
from nativevl.model.quant import QuantGroup


class RMSNorm(nn.Module):
    """`weight * x / rms(x)` with the statistics in float32 (InternRMSNorm and Qwen2RMSNorm agree on this)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's rms_norm computes in float32 for half-precision inputs and rounds once: bit-identical to
        # `(x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)`, in one operation instead of seven
        return self.weight * nn.functional.rms_norm(x, (x.shape[-1],), eps=self.eps)


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


def prepack_linears(module: nn.Module, native_bf16: bool | None = None, decodes: bool = True) -> int:
    """CPU inference: the model's one switch onto nativevl's CPU kernels (nativevl/kernels). Each nn.Linear
    multiplies with copies of its weights laid out in oneDNN's blocked format (what inductor does to weights
    when it freezes a graph) where that is faster than torch's default kernel, with one copy for the layers a
    module lists in `PACKED_TOGETHER` (q/k/v, gate/up: layers that read the same input), so a decode step makes
    one product where it made three; products of up to KERNEL_MAX_ROWS[level] rows (a decode step, a short
    prompt) run on nativevl's own few-row kernel instead, on one more copy in its layout. Which rows go where,
    and the measurements behind it: `PackedLinear` (nativevl/kernels/packed.py). `decodes=False` skips the
    kernel's copy for modules that never see few rows (the vision tower and the projector).

    Where the CPU has AVX-512 BF16 it also turns on nativevl's bf16 attention kernel for prompts in the
    module's attention layers (`kernel_attention`; nativevl/kernels/bf16_attention.py, attention_tiles.h):
    torch's CPU flash kernel ran the 1B's ViT attention (1,025 tokens, 16 heads) at 105-120 GFLOP/s, a quarter
    of the bf16 matmul rate.

    `native_bf16`: whether this CPU multiplies bf16 natively (default: ask oneDNN). The copies cost memory (as
    much again as the weights; twice as much for widened bf16 or with the kernel's copy) and are not updated
    if the weights change: pack a model after loading, moving and casting it. With gradients enabled the
    layers use their own weights, so training a packed model stays correct. Returns the number of nn.Linear
    layers packed."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this torch build has no oneDNN (mkldnn) CPU kernels to pack weights for")
    if native_bf16 is None:
        native_bf16 = kernels.cpu_multiplies_bf16()
    attention = kernels.attention_available()
    for m in module.modules():
        if hasattr(m, "kernel_attention"):
            m.kernel_attention = attention
    count = 0
    for owner, layers in packed_groups(module):
        if len(layers) > 1 and QuantGroup.fits(layers):  # quantized q/k/v or gate/up: one kernel product
            group = QuantGroup(layers)
            if group.fused is not None:
                owner.packed = group
                count += len(layers)
            continue
        if len(layers) > 1 and kernels.packable(layers):
            owner.packed = kernels.PackedLinear(layers, native_bf16, decodes)
            count += len(layers)
            continue
        for layer in layers:  # alone, or a group whose layers cannot share one copy
            if kernels.packable([layer]):
                packed = kernels.PackedLinear([layer], native_bf16, decodes)
                layer.forward = partial(kernels.linear_forward, packed, layer)  # shadows Linear.forward
                count += 1
    return count


def packed_groups(module: nn.Module) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """The products `prepack_linears` makes, in forward order: (a module, the layers it lists in
    `PACKED_TOGETHER`) for each such module, and (layer, [layer]) for every other nn.Linear."""
    groups: list[tuple[nn.Module, list[nn.Linear]]] = []
    grouped: set[nn.Module] = set()
    for m in module.modules():  # a module comes before its children
        layers = [getattr(m, name) for name in getattr(m, "PACKED_TOGETHER", ())]
        if layers:
            groups.append((m, layers))
            grouped.update(layers)
        elif isinstance(m, nn.Linear) and m not in grouped:
            groups.append((m, [m]))
    return groups
