// A bf16 matrix-vector product for CPU decode: y = x @ W.T + b for a few rows of x, at the speed memory can
// deliver W. Built on first use by nativevl/model/gemv.py (torch.utils.cpp_extension) and registered as
// torch.ops.nativevl.gemv_bf16.
//
// Why: a decode step reads every weight once per token, so it is bound by read bandwidth. oneDNN's packed bf16
// product for one row reached 22-25 GB/s where a plain read of the same bytes reached 28-35 GB/s (2-core
// AVX-512 BF16 CPU, the 1B shape). Here W is stored in blocks of 16 rows x 32 columns, each block's 1 KiB
// contiguous and the blocks of 16 rows in column order, so each thread reads one sequential stream, and
// VDPBF16PS multiplies bf16 pairs and accumulates in float32.
//
// Only the kernel is compiled for AVX-512 BF16 (a target attribute), so the library loads on any x86-64 CPU;
// callers ask gemv_bf16_supported() first. Elsewhere the file builds and says unsupported.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NATIVEVL_X86 1
#endif

namespace {

constexpr int64_t kRows = 16;  // rows of W per block: 16 float32 accumulators, 16 outputs in one register
constexpr int64_t kCols = 32;  // columns per block: one 512-bit register of bf16

bool supported() {
#ifdef NATIVEVL_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#ifdef NATIVEVL_X86
// Output blocks [first, last) for every row of x. x: (m, k) bf16; w: blocks (n/16, k/32, 16, 32) bf16, zero
// padded; bias: n_padded float32 or null; y: (m, n) bf16.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void blocks(
    const uint16_t* x, const uint16_t* w, const float* bias, uint16_t* y, int64_t m, int64_t k, int64_t n,
    int64_t first, int64_t last) {
  const int64_t steps = (k + kCols - 1) / kCols;
  const __mmask32 tail = k % kCols ? (__mmask32)((1u << (k % kCols)) - 1) : (__mmask32)0xFFFFFFFFu;
  for (int64_t b = first; b < last; ++b) {
    const uint16_t* block = w + b * steps * kRows * kCols;
    const int64_t col = b * kRows;
    const __mmask16 store = n - col >= kRows ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - col)) - 1);
    for (int64_t r = 0; r < m; ++r) {  // the block stays in L1/L2 for the next row of x
      const uint16_t* xr = x + r * k;
      __m512 acc[kRows];
      for (int i = 0; i < kRows; ++i) acc[i] = _mm512_setzero_ps();
      const uint16_t* p = block;
      for (int64_t s = 0; s < steps; ++s, p += kRows * kCols) {
        // the last step's columns beyond k are zeros in w; masked here so x is never read past its end
        const __mmask32 mask = s + 1 == steps ? tail : (__mmask32)0xFFFFFFFFu;
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, xr + s * kCols);
        for (int i = 0; i < kRows; ++i)
          acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512(p + i * kCols), xv);
      }
      alignas(64) float sums[kRows];
      for (int i = 0; i < kRows; ++i) sums[i] = _mm512_reduce_add_ps(acc[i]);
      __m512 out = _mm512_load_ps(sums);
      if (bias) out = _mm512_add_ps(out, _mm512_loadu_ps(bias + col));
      // round to nearest even, as every bf16 cast in torch does
      _mm256_mask_storeu_epi16(y + r * n + col, store, (__m256i)_mm512_cvtneps_pbh(out));
    }
  }
}
#endif

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                     int64_t n) {
  TORCH_CHECK(supported(), "gemv_bf16 needs a CPU with AVX-512 BF16");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 2, "x: 2-d bf16 on CPU");
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 4 && w.size(2) == kRows && w.size(3) == kCols &&
                  w.is_contiguous(), "w: packed by gemv.pack, (n/16, k/32, 16, 32) bf16");
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(w.size(1) == (k + kCols - 1) / kCols && n <= w.size(0) * kRows && n > (w.size(0) - 1) * kRows,
              "w's blocks do not match x's width ", k, " and n ", n);
  const float* b = nullptr;
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == w.size(0) * kRows,
                "bias: float32, padded to the blocks' rows");
    b = bias->data_ptr<float>();
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({m, n}, x.options());
#ifdef NATIVEVL_X86
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  // contiguous ranges of blocks per thread: each thread streams its share of W in memory order
  at::parallel_for(0, w.size(0), 8, [&](int64_t first, int64_t last) {
    blocks(xp, wp, b, yp, m, k, n, first, last);
  });
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY(nativevl_cpu, lib) {
  lib.def("gemv_bf16(Tensor x, Tensor w, Tensor? bias, int n) -> Tensor");
  lib.def("gemv_bf16_supported() -> bool", &supported);
}

TORCH_LIBRARY_IMPL(nativevl_cpu, CPU, lib) { lib.impl("gemv_bf16", gemv_bf16); }
