"""Weight-only quantization: per-output-channel int8 and group-wise int4 linear layers (`QuantLinear`), and the
switch that puts them in a model (`quantize`).

One format for every bit width: each output's k values fall in groups of `group_size` (int8's default, one
group per output: per-channel); a group has a float scale s and an integer zero point z, and a weight is
stored as an unsigned code q with w = (q - z) * s. Asymmetric groups take z and s from the group's min and
max (AutoAWQ's rule, so a released AWQ checkpoint is this format after unpacking); symmetric ones fix z at
the middle code (8 or 128) and s = max|w| / (2^(bits-1) - 1), so that 0 stays exactly 0.

Storage, in the state dict and in checkpoints (docs/quantization.md): `qweight` uint8 (out, in) at 8 bits,
(out, in/2) at 4 bits with input 2j in the low nibble and 2j+1 in the high one; `scales` (out, groups) in the
model's float dtype; `qzeros` uint8 (out, groups). Products: on an x86-64 CPU with AVX2 the codes are read
directly by nativevl's kernel in integer products with x put on 8 bits per block of 32 (kernels/quant.py;
packed on first use); elsewhere (CUDA, other CPUs) the weight
is dequantized in the input's dtype and multiplied as nn.Linear does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from nativevl.kernels import quant as kernel

# The parts of an InternVL model `quantize` may convert, by their module names.
PARTS = ("language_model", "mlp1", "vision_model")
# The output head: converted by `head` (to per-channel int8) or kept in the model's dtype, never by `parts`; the
# embeddings are never converted (a lookup reads one row a token).
HEAD = "language_model.lm_head"
HEAD_CONFIG = dict(bits=8, group_size=0, symmetric=True)


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: `bits` 8 or 4; `group_size` k values per scale (0: one group per output channel);
    `symmetric`; `parts` of the model to convert (default the language model's decoder layers); `head` 8 puts
    the output head on per-channel int8 too (llama.cpp's Q4_0 and Q8_0 files keep it at Q8_0), 0 keeps it in
    the model's dtype (AutoAWQ's choice). The head is a quarter to a half of a small model's decode bytes."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    parts: tuple[str, ...] = ("language_model",)
    head: int = 0

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantization bits must be 8 or 4, got {self.bits}")
        if self.group_size < 0 or (self.group_size and self.group_size % 2):
            raise ValueError(f"quantization group_size must be 0 (per channel) or a positive even number, "
                             f"got {self.group_size}")
        if self.head not in (0, 8):
            raise ValueError(f"quantization head must be 0 (kept in float) or 8 bits, got {self.head}")
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ValueError(f"quantization parts must be some of {', '.join(PARTS)}, got {', '.join(self.parts)}")

    @classmethod
    def named(cls, name: str) -> QuantConfig:
        """`int8`: per-channel, symmetric; `int4`: groups of 128, asymmetric (AWQ's format); both with the head
        on int8 (docs/quantization.md has the figures behind the choice)."""
        presets = {"int8": cls(bits=8, group_size=0, symmetric=True, head=8),
                   "int4": cls(bits=4, group_size=128, head=8)}
        if name not in presets:
            raise ValueError(f"quantize must be one of {', '.join(presets)}, got {name!r}")
        return presets[name]

    def to_dict(self) -> dict:
        return {**asdict(self), "parts": list(self.parts)}


def group_of(in_features: int, group_size: int) -> int:
    """The k values per group for a layer of `in_features` inputs: 0, or a group wider than the row, is the
    whole row."""
    return min(group_size or in_features, in_features)


def quantize_weight(weight: torch.Tensor, bits: int, group: int, symmetric: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float -> codes uint8 (out, in) in [0, 2^bits), scales float32 (out, groups), zeros uint8."""
    out_features, in_features = weight.shape
    if in_features % group:
        fits = max(g for g in range(2, group + 1, 2) if in_features % g == 0) if in_features % 2 == 0 else 0
        raise ValueError(f"group size {group} does not divide the layer's {in_features} inputs"
                         + (f" (the largest group that does: {fits})" if fits else ""))
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    top = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scales = w.abs().amax(-1) / (half - 1)
        zeros = torch.full_like(scales, half)
    else:  # AutoAWQ's pseudo_quantize_tensor: the group's [min, max] onto [0, top]
        low, high = w.amin(-1), w.amax(-1)
        scales = (high - low).clamp(min=1e-5) / top
        zeros = (-torch.round(low / scales)).clamp(0, top)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)  # an all-zero group
    codes = (torch.round(w / scales[..., None]) + zeros[..., None]).clamp(0, top)
    return codes.reshape(out_features, in_features).to(torch.uint8), scales, zeros.to(torch.uint8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (out, in) in [0, 16) -> (out, in/2): input 2j in the low nibble, 2j+1 in the high."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


class _FrozenProduct(torch.autograd.Function):
    """x W^T for a frozen quantized W with a gradient for x only (QLoRA): W is dequantized for the product and
    again in the backward, never kept for it, so training holds the packed codes and not a float copy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:  # noqa: ANN001 - autograd's ctx
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad @ ctx.layer.dequantize(grad.dtype), None


class QuantLinear(nn.Module):
    """nn.Linear with weight-only int8 or int4 codes (module docstring); bias, if any, in float."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        group = group_of(in_features, group_size)
        if in_features % group or (bits == 4 and in_features % 2):
            raise ValueError(f"a {bits}-bit layer of {in_features} inputs cannot have groups of {group}")
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        width = in_features if bits == 8 else in_features // 2
        groups = in_features // group
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("qzeros", torch.zeros(out_features, groups, dtype=torch.uint8, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self._packed_from: torch.Tensor | None = None  # the codes the kernel's copy was made from
        self.block = 0  # x's block on the kernel (kernels/quant.py); 0: dequantize instead

    @classmethod
    def from_linear(cls, layer: nn.Linear, config: QuantConfig) -> QuantLinear:
        group = group_of(layer.in_features, config.group_size)
        codes, scales, zeros = quantize_weight(layer.weight, config.bits, group, config.symmetric)
        q = cls(layer.in_features, layer.out_features, config.bits, group, layer.bias is not None,
                dtype=layer.weight.dtype, device=layer.weight.device)
        q.qweight.copy_(codes if config.bits == 8 else pack_int4(codes))
        q.scales.copy_(scales)
        q.qzeros.copy_(zeros)
        if layer.bias is not None:
            q.bias.data.copy_(layer.bias.detach())
        return q

    def codes(self) -> torch.Tensor:
        """uint8 (out, in) codes."""
        return self.qweight if self.bits == 8 else unpack_int4(self.qweight)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (out, in) weight (q - z) * s, computed in float32 and returned in `dtype` (default the scales')."""
        codes = self.codes().float().view(self.out_features, -1, self.group)
        w = (codes - self.qzeros.float()[..., None]) * self.scales.float()[..., None]
        return w.reshape(self.out_features, self.in_features).to(dtype or self.scales.dtype)

    def pack_for_cpu(self) -> bool:
        """The kernel's copy of the codes (kernels/quant.py), made once (again if new codes were loaded) where
        this CPU runs the kernel and the layer's groups fit it; held as buffers that are not saved, so that
        torch.compile sees tensors. Returns whether products take the kernel."""
        cast = self.block and self.kernel_scales.dtype != torch.float32  # model.to(dtype) reached the copy too
        if self._packed_from is not self.qweight or cast:
            self._packed_from = self.qweight
            self.block = kernel.block_of(self) if kernel.available(torch.float32) else 0
            if self.block:
                codes, scales, offsets, bias, self.kernel_group, _ = kernel.pack(self)
                for name, t in (("kernel_codes", codes), ("kernel_scales", scales), ("kernel_offsets", offsets),
                                ("kernel_bias", bias)):
                    self.register_buffer(name, t, persistent=False)
        return self.block > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():  # a LoRA above trains through this frozen layer (QLoRA)
            y = _FrozenProduct.apply(x, self)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        if x.device.type == "cpu" and x.dtype in kernel.DTYPES:
            if not torch.compiler.is_compiling():  # a compiled model was packed before (speed_up)
                self.pack_for_cpu()
            if self.block:
                packed = (self.kernel_codes, self.kernel_scales, self.kernel_offsets, self.kernel_bias,
                          self.kernel_group, self.block)
                return kernel.product(x, packed, self.out_features, self.bits)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, " \
               f"group={self.group}, bias={self.bias is not None}"


class QuantGroup:
    """QuantLinears that read the same input (a module's PACKED_TOGETHER: q/k/v, gate/up) as one kernel product
    with their outputs side by side, one call where there were three (`prepack_linears` installs it as the
    module's `packed`). Not a module, so the layers' own codes stay what is saved; like every packed copy it is
    not updated if the layers change (pack after loading and casting)."""

    def __init__(self, layers: list[QuantLinear]) -> None:
        first = layers[0]
        fused = QuantLinear(first.in_features, sum(m.out_features for m in layers), first.bits, first.group,
                            any(m.bias is not None for m in layers), dtype=first.scales.dtype)
        with torch.no_grad():
            for name in ("qweight", "scales", "qzeros"):
                getattr(fused, name).copy_(torch.cat([getattr(m, name) for m in layers]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([m.bias if m.bias is not None else torch.zeros_like(m.scales[:, 0])
                                            for m in layers]))
        self.layers = layers
        self.fused = fused if fused.pack_for_cpu() else None

    @staticmethod
    def fits(layers: list[nn.Module]) -> bool:
        """QuantLinears on CPU of one width, group and dtype (what one kernel product can hold)."""
        return all(isinstance(m, QuantLinear) and m.qweight.device.type == "cpu" for m in layers) \
            and len({(m.in_features, m.bits, m.group, m.scales.dtype) for m in layers}) == 1

    def takes(self, x: torch.Tensor) -> bool:
        return self.fused is not None and x.device.type == "cpu" and x.dtype in kernel.DTYPES

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)


def pack_model_for_cpu(model: nn.Module) -> None:
    """Every CPU QuantLinear's kernel copy made now, as a compiled forward does not make them; the layers a
    QuantGroup multiplies are left out (the group holds their copy)."""
    grouped = {id(layer) for m in model.modules() if isinstance(getattr(m, "packed", None), QuantGroup)
               for layer in m.packed.layers}
    for layer in model.modules():
        if isinstance(layer, QuantLinear) and layer.qweight.device.type == "cpu" and id(layer) not in grouped:
            layer.pack_for_cpu()


def layers_to_quantize(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Linear, QuantConfig]]:
    """(name, layer, how) of every linear layer `config` converts: those of its parts but the head, and the head
    on HEAD_CONFIG if `config.head`."""
    head = replace(config, **HEAD_CONFIG)
    return [(name, m, head if name == HEAD else config) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and (name.split(".")[0] in config.parts and name != HEAD
                                              or name == HEAD and config.head)]


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _untie(model: nn.Module, config: QuantConfig) -> None:
    """A head put on codes is no longer the embedding: the config says so, and save/load treat it on its own."""
    if config.head and hasattr(model, "config"):
        model.config.text.tie_word_embeddings = False


@torch.no_grad()
def quantize(model: nn.Module, config: QuantConfig | str) -> nn.Module:
    """Replace the linear layers `config` names (default: the language model's, and its head on int8) by
    `QuantLinear`s quantized from their weights, in place; records `model.quantization`. Returns the model."""
    config = QuantConfig.named(config) if isinstance(config, str) else config
    if getattr(model, "quantization", None) is not None:
        raise ValueError("the model is quantized already")
    for name, layer, how in layers_to_quantize(model, config):
        try:
            _swap(model, name, QuantLinear.from_linear(layer, how))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    _untie(model, config)
    model.quantization = config
    return model


def quantized_structure(model: nn.Module, config: QuantConfig) -> nn.Module:
    """`quantize`'s module structure with empty codes (on the model's device, meta for loading): what a
    quantized checkpoint is read into."""
    for name, layer, how in layers_to_quantize(model, config):
        _swap(model, name, QuantLinear(layer.in_features, layer.out_features, how.bits, how.group_size,
                                       layer.bias is not None, dtype=layer.weight.dtype, device=layer.weight.device))
    _untie(model, config)
    model.quantization = config
    return model


def quantize_once(model: nn.Module, config: QuantConfig | str) -> nn.Module:
    """`quantize`, unless the model is already quantized in `config`'s bits (a quantized checkpoint loaded with
    --quantize); another width is refused, since re-quantizing codes would add a second rounding."""
    config = QuantConfig.named(config) if isinstance(config, str) else config
    have = getattr(model, "quantization", None)
    if have is None:
        return quantize(model, config)
    if have.bits != config.bits:
        raise ValueError(f"the checkpoint is quantized to {have.bits} bits already; it cannot be quantized to "
                         f"{config.bits} (load its float original for that)")
    return model
