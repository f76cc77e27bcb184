// Matrix-vector products for CPU decode: y = x @ W.T + b for a row of x (more rows work, row by row), at
// the speed memory can deliver W, in bf16 and float32. Built on first use by nativevl/model/gemv.py
// (torch.utils.cpp_extension) and registered as torch.ops.nativevl_cpu.gemv.
//
// Why: a decode step reads every weight once per token, so it is bound by read bandwidth. oneDNN's packed bf16
// product for one row reached 22-25 GB/s where a plain read of the same bytes reached 28-35 GB/s (2-core
// AVX-512 BF16 CPU, the 1B shape). Here W is stored in blocks of 16 rows by one 64-byte register of columns
// (32 bf16 or 16 float32), each block contiguous and a block-row's blocks in column order, so each thread
// reads one sequential stream. bf16 pairs are multiplied and summed in float32 by VDPBF16PS; float32 by FMA.
//
// Only the kernels are compiled for AVX-512 (a target pragma around them), so the library loads on any x86-64
// CPU; gemv_supported(bf16) says whether this one runs them. Elsewhere the file builds and says unsupported.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NATIVEVL_X86 1
#endif

namespace {

constexpr int kRows = 16;  // rows of W per block: 16 float32 sums, 16 outputs in one register

bool supported(bool bf16) {
#ifdef NATIVEVL_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && (!bf16 || __builtin_cpu_supports("avx512bf16"));
#else
  return false;
#endif
}

#ifdef NATIVEVL_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
#endif

// What differs between the element types: a column step's width, its loads, its multiply-add, its store.
struct BF16 {
  using T = uint16_t;
  using Mask = __mmask32;
  static constexpr int kCols = 32;
  static Mask mask(int64_t n) { return n >= kCols ? (Mask)0xFFFFFFFFu : (Mask)((1u << n) - 1); }
  static __m512i load(Mask m, const T* p) { return _mm512_maskz_loadu_epi16(m, p); }
  static __m512 madd(__m512 acc, __m512i w, __m512i x) { return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x); }
  static void store(T* p, __mmask16 m, __m512 v) {  // rounded to nearest even, as every bf16 cast in torch
    _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
  }
};

struct F32 {
  using T = float;
  using Mask = __mmask16;
  static constexpr int kCols = 16;
  static Mask mask(int64_t n) { return n >= kCols ? (Mask)0xFFFF : (Mask)((1u << n) - 1); }
  static __m512i load(Mask m, const T* p) { return _mm512_castps_si512(_mm512_maskz_loadu_ps(m, p)); }
  static __m512 madd(__m512 acc, __m512i w, __m512i x) {
    return _mm512_fmadd_ps(_mm512_castsi512_ps(w), _mm512_castsi512_ps(x), acc);
  }
  static void store(T* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
};

// sums[i] for one row of x against the block's 16 rows of W, in one pass over the block so W is read as one
// sequential stream: 16 accumulators, then W's 16 lines of a step loaded in memory order. (Tiles of several
// rows of x by fewer rows of W took several passes, or kept accumulators in L1, and read W from memory at half
// this speed: more rows go to oneDNN, see VECTOR_MAX_ROWS in layers.py.)
template <typename E>
inline void one_row(const typename E::T* x, int64_t k, const typename E::T* block, float* sums) {
  const int64_t steps = (k + E::kCols - 1) / E::kCols;
  __m512 acc[kRows];
  for (int i = 0; i < kRows; ++i) acc[i] = _mm512_setzero_ps();
  const typename E::T* p = block;
  for (int64_t s = 0; s < steps; ++s, p += kRows * E::kCols) {
    // the last step's columns beyond k are zeros in W; masked here so x is never read past its end
    const typename E::Mask m = s + 1 == steps ? E::mask(k - s * E::kCols) : E::mask(E::kCols);
    const __m512i xv = E::load(m, x + s * E::kCols);
    for (int i = 0; i < kRows; ++i) acc[i] = E::madd(acc[i], _mm512_loadu_si512(p + i * E::kCols), xv);
  }
  for (int i = 0; i < kRows; ++i) sums[i] = _mm512_reduce_add_ps(acc[i]);
}

// Output blocks [first, last) for every row of x. x: (m, k); w: (blocks, steps, 16, kCols), zero padded;
// bias: blocks * 16 float32 or null; y: (m, n).
template <typename E>
void blocks(const typename E::T* x, const typename E::T* w, const float* bias, typename E::T* y, int64_t m,
            int64_t k, int64_t n, int64_t first, int64_t last) {
  const int64_t steps = (k + E::kCols - 1) / E::kCols;
  alignas(64) float sums[kRows];
  for (int64_t b = first; b < last; ++b) {
    const typename E::T* block = w + b * steps * kRows * E::kCols;
    const int64_t col = b * kRows;
    const __mmask16 store = n - col >= kRows ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - col)) - 1);
    for (int64_t r = 0; r < m; ++r) {  // further rows of x find the block in L1/L2
      one_row<E>(x + r * k, k, block, sums);
      __m512 out = _mm512_load_ps(sums);
      if (bias) out = _mm512_add_ps(out, _mm512_loadu_ps(bias + col));
      E::store(y + r * n + col, store, out);
    }
  }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

template <typename E>
void run(const at::Tensor& x, const at::Tensor& w, const float* bias, at::Tensor& y, int64_t n) {
  const auto* xp = reinterpret_cast<const typename E::T*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const typename E::T*>(w.data_ptr());
  auto* yp = reinterpret_cast<typename E::T*>(y.data_ptr());
  const int64_t m = x.size(0), k = x.size(1);
  // contiguous ranges of blocks per thread: each thread streams its share of W in memory order
  at::parallel_for(0, w.size(0), 8, [&](int64_t first, int64_t last) {
    blocks<E>(xp, wp, bias, yp, m, k, n, first, last);
  });
}
#endif

at::Tensor gemv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, int64_t n) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && (bf16 || x.scalar_type() == at::kFloat),
              "x: 2-d bf16 or float32 on CPU");
  TORCH_CHECK(supported(bf16), "gemv needs a CPU with AVX-512", bf16 ? " BF16" : "");
  const int64_t cols = bf16 ? 32 : 16, m = x.size(0), k = x.size(1);
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == x.scalar_type() && w.dim() == 4 && w.size(2) == kRows &&
                  w.size(3) == cols && w.is_contiguous(),
              "w: packed by gemv.pack, (n/16, k/", cols, ", 16, ", cols, ") of x's dtype");
  TORCH_CHECK(w.size(1) == (k + cols - 1) / cols && n <= w.size(0) * kRows && n > (w.size(0) - 1) * kRows,
              "w's blocks do not match x's width ", k, " and n ", n);
  const float* b = nullptr;
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == w.size(0) * kRows,
                "bias: float32, padded to the blocks' rows");
    b = bias->data_ptr<float>();
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({m, n}, x.options());
#ifdef NATIVEVL_X86
  if (bf16)
    run<BF16>(xc, w, b, y, n);
  else
    run<F32>(xc, w, b, y, n);
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY(nativevl_cpu, lib) {
  lib.def("gemv(Tensor x, Tensor w, Tensor? bias, int n) -> Tensor");
  lib.def("gemv_supported(bool bf16) -> bool", &supported);
}

TORCH_LIBRARY_IMPL(nativevl_cpu, CPU, lib) { lib.impl("gemv", gemv); }
