"""The packed Linear of CPU inference (`PackedLinear`): one or more nn.Linear layers that read the same input
(q/k/v, gate/up) multiplied as one product of their stacked weights, on copies laid out in oneDNN's blocked
format (what inductor does to weights when it freezes a graph) where that is faster than torch's default
kernel, and for a few rows on the few-row kernel's copy (gemv.py). `prepack_linears` (nativevl/model/layers.py)
is the model's switch that puts them in place. Measured at the InternVL3-1B shape:

- float32, up to PACKED_MAX_ROWS rows: a decode step 1.5x faster at batch 1 and 8 (2-core AVX2 CPU);
- bfloat16 on a CPU with native bf16 products (AVX-512 BF16, AMX), at every row count: packed in bf16, the
  same sums as torch's kernel (bit-identical here), a decode step's products 1.5x faster at batch 1 and
  1.7x at batch 8, a prefill's 1.03-1.1x (2-core AVX-512 BF16 CPU);
- bfloat16 on a CPU without them, from BF16_PACKED_MIN_ROWS rows: torch's bf16 product there costs time in
  proportion to the rows (batch 8 took 2.1x float32-packed's time, a prefill about 6x), so the input is
  widened to float32, multiplied, and the result rounded back. The products of bf16 values are exact in
  float32 and both kernels accumulate in float32: only the summation order differs. At 1-3 rows the bf16
  kernel, reading half the bytes, stays.

Products of up to KERNEL_MAX_ROWS[level] rows (a decode step, a short prompt) run on nativevl's own kernel
instead (gemv.py; float32 and bf16 where the CPU has AVX2 + FMA or AVX-512, bf16 read at its own width even
where the CPU has no bf16 products), with one more copy in its layout: oneDNN's few-row products read the
weights below a plain read's speed (bf16, one row: 22-25 GB/s of 28-35) or, in float32, took twice the time
of the read at 8 rows; the kernel reads them at the plain read's speed. `decodes=False` skips that copy for
layers that never see few rows (the vision tower and the projector)."""

from __future__ import annotations

import torch
from torch import nn

from nativevl.kernels import gemv
from nativevl.kernels.build import level

# Above this many rows (a prefill, a ViT tile) the float32 packed product is no faster than MKL's and at 512
# rows up to 1.5x slower (the 1B shape's matrices; a 1-tile prompt's first token took 7.1 s packed, 6.1 s not).
PACKED_MAX_ROWS = 256
# From this many rows a bf16 layer on a CPU without native bf16 is faster widened to float32 and packed (24 of
# the 1B shape's matrices: 2 rows 15 ms bf16 vs 24 ms widened; 4 rows 30 vs 26 ms; 8 rows 59 vs 28 ms).
BF16_PACKED_MIN_ROWS = 4
# Up to this many rows, by the kernel's level (build.py), the few-row kernel is at least as fast as oneDNN's
# packed product. The 1B shape's decode products on the AVX-512 BF16 CPU, kernel against oneDNN, ms: level 3 bf16
# 1 row 32 / 61, 8 rows 36 / 46, 16 rows 49 / 59, 64 rows 164 / 175; float32 1 row 65 / 84, 8 rows 68 / 131, 64
# rows 331 / 425; four layers at 128 rows: bf16 37.8 / 38.1 (at 256 even, at 2048 oneDNN 7% ahead), float32 75 /
# 89. Level 2's bf16 (widened in registers) against oneDNN's widened float32 there: 5.6 / 15.7 ms at 8 rows, 78.5
# / 79.9 at 128. Level 1 (AVX2, run on that CPU, against oneDNN's AVX-512 products): float32 13.1 / 15.5 at 8
# rows but 18.3 / 17.5 at 12; bf16 29.0 / 29.8 at 32.
KERNEL_MAX_ROWS = {1: 8, 2: 128, 3: 128}


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has native bf16 products (AVX-512 BF16 or AMX), as oneDNN reports it."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def packable(layers: list[nn.Linear]) -> bool:
    """Whether `layers` can share one `PackedLinear`: nn.Linear layers on CPU, float32 or bf16, of one dtype and
    input width (not a QuantLinear: its codes have a product of their own)."""
    if not all(isinstance(layer, nn.Linear) for layer in layers):
        return False
    weights = [layer.weight for layer in layers]
    return (len({(w.dtype, w.device.type, w.shape[1]) for w in weights}) == 1
            and weights[0].device.type == "cpu" and weights[0].dtype in (torch.float32, torch.bfloat16))


class PackedLinear:
    """The products of one or more nn.Linear layers that read the same input, as one product of their stacked
    weights: oneDNN-packed, and for a few rows the few-row kernel's copy where it runs (see this module's
    docstring). Call it only where `takes(x)`; it returns the layers' outputs side by side in the last
    dimension, in their order. `native_bf16`: whether this CPU multiplies bf16 natively (`cpu_multiplies_bf16`)."""

    def __init__(self, layers: list[nn.Linear], native_bf16: bool, decodes: bool = True) -> None:
        first = layers[0].weight
        self.dtype = first.dtype
        self.compute = torch.bfloat16 if first.dtype == torch.bfloat16 and native_bf16 else torch.float32
        self.rows = ((1, PACKED_MAX_ROWS) if first.dtype == torch.float32 else
                     (1, None) if native_bf16 else (BF16_PACKED_MIN_ROWS, None))
        stacked = torch.cat([layer.weight.detach() for layer in layers])
        self.weight = torch.ops.mkldnn._reorder_linear_weight(stacked.to(self.compute), 1)
        self.bias = None
        if any(layer.bias is not None for layer in layers):  # a layer without one adds zeros
            self.bias = torch.cat([layer.bias.detach() if layer.bias is not None
                                   else first.new_zeros(layer.out_features) for layer in layers]).to(self.compute)
        # a decode step's few rows: nativevl's kernel, on its own copy (gemv.py)
        self.kernel_weight = self.kernel_bias = None
        self.in_features, self.out_features = stacked.shape[1], stacked.shape[0]
        self.kernel_level = level()
        if decodes and first.dtype in gemv.DTYPES and self.kernel_level:
            # in the layers' own dtype: bf16 widened for oneDNN is still read in bf16 by the kernel
            self.kernel_weight = gemv.pack(stacked, self.kernel_level)
            # float32 in the kernel (a widened bf16 bias is exact)
            self.kernel_bias = None if self.bias is None else gemv.pack_bias(self.bias, self.kernel_level)

    def takes(self, x: torch.Tensor) -> bool:
        if torch.is_grad_enabled() or x.dtype != self.dtype:
            return False
        if self._on_kernel(x):
            return True
        n, (low, high) = x.numel() // x.shape[-1], self.rows
        return n >= low and (high is None or n <= high)

    def _on_kernel(self, x: torch.Tensor) -> bool:
        return self.kernel_weight is not None and x.numel() <= KERNEL_MAX_ROWS[self.kernel_level] * x.shape[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._on_kernel(x):
            return gemv.product(x, self.kernel_weight, self.kernel_bias, self.out_features, self.kernel_level)
        # under torch.compile through the custom operation below; eagerly straight to oneDNN (a custom
        # operation's Python wrapper costs 6 us a call, 0.6 ms a decode step of the 1B shape)
        product = packed_product if torch.compiler.is_compiling() else _packed_product
        return product(x.to(self.compute), self.weight, self.bias).to(self.dtype)


def _packed_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


@torch.library.custom_op("nativevl::packed_product", mutates_args=())
def packed_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T + b with W in oneDNN's packed layout; an opaque operation to torch.compile, which cannot take a
    packed weight as a graph input (its own oneDNN lowering wants the weight frozen into the graph)."""
    return _packed_product(x, weight, bias)


@packed_product.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear_forward(packed: PackedLinear, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A lone layer's forward once packed (`partial(linear_forward, packed, layer)` as its instance attribute
    `forward`): the packed product where it `takes(x)`, else the layer's own weights (gradients, other rows)."""
    if packed.takes(x):
        return packed(x)
    return nn.functional.linear(x, layer.weight, layer.bias)
