// Products of a few rows for CPU decode: y = x @ W.T + b for the 1 to a few dozen rows of a decode step, at
// the speed memory can deliver W, in bf16 and float32. Built on first use by nativevl/model/gemv.py
// (torch.utils.cpp_extension) and registered as torch.ops.nativevl_cpu.gemv.
//
// Why: a decode step reads every weight once per token, so at a few rows it is bound by read bandwidth, and
// oneDNN's packed products fell short of it (bf16, one row: W read at 22-25 GB/s where a plain read reached
// 28-35; float32, 8 rows: twice the time of a read; 2-core AVX-512 BF16 CPU, the 1B shape).
//
// Layout: W's outputs in tiles of 48 (three 16-lane registers); a tile holds, for each step along k, its 48
// outputs' weights side by side (in bf16 two k values per output, the pair VDPBF16PS multiplies), so a tile is
// one contiguous stream read once, in order. Each step loads three registers of W and multiplies them by each
// row of x's value(s) at that step broadcast: up to 8 rows x 3 registers of float32 sums stay in registers
// (an outer product per step, with no sums across lanes). More rows take further passes over a tile, which is
// in L2 by then. Sums are float32; bf16 outputs are rounded once, to nearest even.
//
// Only the kernels are compiled for AVX-512 (a target pragma around them), so the library loads on any x86-64
// CPU; gemv_supported(bf16) says whether this one runs them. Elsewhere the file builds and says unsupported.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NATIVEVL_X86 1
#endif

namespace {

constexpr int kVectors = 3;               // registers of sums per row of x
constexpr int kTile = 16 * kVectors;      // outputs per tile
constexpr int kRows = 8;                  // rows of x per pass: 8 x 3 sums, 3 of W and a broadcast in 32 registers

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

// What differs between the element types: k values per lane and step, x's broadcast, the multiply-add, the store.
struct BF16 {
  using T = uint16_t;
  static constexpr int kDepth = 2;
  static __m512i broadcast(const T* p) {  // x's pair at this step, in every lane
    int32_t pair;
    std::memcpy(&pair, p, sizeof pair);
    return _mm512_set1_epi32(pair);
  }
  static __m512 madd(__m512 acc, __m512i w, __m512i x) { return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x); }
  static void store(T* p, __mmask16 m, __m512 v) {  // rounded to nearest even, as every bf16 cast in torch
    _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
  }
};

struct F32 {
  using T = float;
  static constexpr int kDepth = 1;
  static __m512i broadcast(const T* p) { return _mm512_castps_si512(_mm512_set1_ps(*p)); }
  static __m512 madd(__m512 acc, __m512i w, __m512i x) {
    return _mm512_fmadd_ps(_mm512_castsi512_ps(w), _mm512_castsi512_ps(x), acc);
  }
  static void store(T* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
};

// R rows of x (row stride k, k = steps * depth) against one tile (steps, 48, depth) -> y's 48 columns from col.
template <typename E, int R>
void tile_rows(const typename E::T* x, int64_t steps, const typename E::T* tile, const float* bias,
               typename E::T* y, int64_t n, int64_t col) {
  const int64_t k = steps * E::kDepth;
  __m512 acc[R][kVectors];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_setzero_ps();
  const typename E::T* p = tile;
  for (int64_t s = 0; s < steps; ++s, p += kTile * E::kDepth) {
    __m512i w[kVectors];
    for (int v = 0; v < kVectors; ++v) w[v] = _mm512_loadu_si512(p + v * 16 * E::kDepth);
    for (int r = 0; r < R; ++r) {
      const __m512i xr = E::broadcast(x + r * k + s * E::kDepth);
      for (int v = 0; v < kVectors; ++v) acc[r][v] = E::madd(acc[r][v], w[v], xr);
    }
  }
  for (int v = 0; v < kVectors && col + 16 * v < n; ++v) {  // the last tile's outputs past n are not stored
    const int64_t c = col + 16 * v;
    const __mmask16 m = n - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - c)) - 1);
    const __m512 b = bias ? _mm512_loadu_ps(bias + c) : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) E::store(y + r * n + c, m, _mm512_add_ps(acc[r][v], b));
  }
}

template <typename E>
using TileRows = void (*)(const typename E::T*, int64_t, const typename E::T*, const float*, typename E::T*,
                          int64_t, int64_t);

// Tiles [first, last) for every row of x. x: (m, steps * depth); w: (tiles, steps, 48, depth), zero padded;
// bias: tiles * 48 float32 or null; y: (m, n).
template <typename E>
void tiles(const typename E::T* x, const typename E::T* w, const float* bias, typename E::T* y, int64_t m,
           int64_t steps, int64_t n, int64_t first, int64_t last) {
  static constexpr TileRows<E> passes[kRows] = {tile_rows<E, 1>, tile_rows<E, 2>, tile_rows<E, 3>,
                                                tile_rows<E, 4>, tile_rows<E, 5>, tile_rows<E, 6>,
                                                tile_rows<E, 7>, tile_rows<E, 8>};
  const int64_t k = steps * E::kDepth;
  for (int64_t t = first; t < last; ++t) {
    const typename E::T* tile = w + t * steps * kTile * E::kDepth;
    for (int64_t r = 0; r < m; r += kRows)
      passes[std::min<int64_t>(kRows, m - r) - 1](x + r * k, steps, tile, bias, y + r * n, n, t * kTile);
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
  // contiguous ranges of tiles per thread: each thread streams its share of W in memory order
  at::parallel_for(0, w.size(0), 4, [&](int64_t first, int64_t last) {
    tiles<E>(xp, wp, bias, yp, x.size(0), w.size(1), n, first, last);
  });
}
#endif

at::Tensor gemv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, int64_t n) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && (bf16 || x.scalar_type() == at::kFloat),
              "x: 2-d bf16 or float32 on CPU");
  TORCH_CHECK(supported(bf16), "gemv needs a CPU with AVX-512", bf16 ? " BF16" : "");
  const int64_t depth = bf16 ? 2 : 1, m = x.size(0), k = x.size(1);
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == x.scalar_type() && w.dim() == 4 && w.size(2) == kTile &&
                  w.size(3) == depth && w.is_contiguous(),
              "w: packed by gemv.pack, (n/48, k/", depth, ", 48, ", depth, ") of x's dtype");
  TORCH_CHECK(w.size(1) == (k + depth - 1) / depth && n <= w.size(0) * kTile && n > (w.size(0) - 1) * kTile,
              "w's tiles do not match x's width ", k, " and n ", n);
  const float* b = nullptr;
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == w.size(0) * kTile,
                "bias: float32, padded to the tiles' outputs");
    b = bias->data_ptr<float>();
  }
  // an odd k in bf16: x gets the zero that pairs with W's padding (its next value could be anything, NaN too)
  const at::Tensor xc = k % depth ? at::constant_pad_nd(x, {0, 1}) : x.contiguous();
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
