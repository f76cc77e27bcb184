// nativevl's CPU kernels, one library built on first use by nativevl/kernels/build.py
// (torch.utils.cpp_extension) and registered as torch.ops.nativevl_cpu: gemv (below) and attention (at the end).
//
// torch.ops.nativevl_cpu.gemv, products of a few rows for CPU decode (Python side: nativevl/kernels/gemv.py):
// y = x @ W.T + b for the 1 to a few dozen rows of a decode step, at the speed memory can deliver W, in bf16
// and float32.
//
// Why: a decode step reads every weight once per token, so at a few rows it is bound by read bandwidth, and
// oneDNN's packed products fell short of it (bf16, one row: W read at 22-25 GB/s where a plain read reached
// 28-35; float32, 8 rows: twice the time of a read; 2-core AVX-512 BF16 CPU, the 1B shape).
//
// How (gemv_tiles.h, the loops): W's outputs in tiles of three registers' lanes, each tile one contiguous
// stream read once, in order; per step along k, three registers of W times each row of x's value(s) at that
// step broadcast, every sum in a register. The loops are compiled once per instruction set, by level:
//   1  AVX2 + FMA         8 lanes, tiles of 24 outputs, 4 rows a pass; bf16 widened to float32 in registers
//   2  AVX-512 F/BW/VL   16 lanes, tiles of 48 outputs, 8 rows a pass; bf16 widened likewise
//   3  + AVX-512 BF16    as 2, bf16 pairs multiplied and summed by VDPBF16PS (float32 as in 2)
// Sums are float32; bf16 outputs are rounded once, to nearest even as torch rounds (NaN stays NaN).
// Only the loops get the instruction sets (target pragmas), so the library loads on any x86-64 CPU;
// gemv_level() says which this one runs. Elsewhere the file builds and says 0.
//
// torch.ops.nativevl_cpu.attention: bf16 attention for prompts on the level-3 loops (attention_tiles.h; Python
// side: nativevl/kernels/bf16_attention.py): torch's CPU flash kernel ran the 1B's ViT attention at a quarter
// of the bf16 matmul rate.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>
#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NATIVEVL_X86 1
#endif

namespace {

int64_t level() {
#ifdef NATIVEVL_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return __builtin_cpu_supports("avx512bf16") ? 3 : 2;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#else
  return 0;
#endif
}

int64_t tile_outputs(int64_t level) { return level == 1 ? 24 : 48; }  // as gemv.tile in Python

}  // namespace

#ifdef NATIVEVL_X86

// --- level 1: AVX2 + FMA ---
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
struct Isa {
  using F = __m256;
  using I = __m256i;
  static constexpr int kLanes = 8;
  static constexpr int kRows = 4;  // 4 x 3 sums and 3 of W in the 16 registers
  static F zero() { return _mm256_setzero_ps(); }
  static F loadf(const float* p) { return _mm256_loadu_ps(p); }
  static I loadi(const uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static F broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F low_halves(I w) { return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)); }
  static F high_halves(I w) { return _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(-65536))); }
  static void store(float* p, int64_t left, F v) {
    if (left >= kLanes) return _mm256_storeu_ps(p, v);
    alignas(32) float part[kLanes];
    _mm256_store_ps(part, v);
    std::memcpy(p, part, left * sizeof(float));
  }
  static void store(uint16_t* p, int64_t left, F v) {  // round to nearest even: + 0x7FFF + the kept lsb
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // 16-bit halves of the 8 lanes in order: pack within 128-bit halves, then gather the two low quarters
    const __m128i h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0b1000));
    if (left >= kLanes) return _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    alignas(16) uint16_t part[kLanes];
    _mm_store_si128(reinterpret_cast<__m128i*>(part), h);
    std::memcpy(p, part, left * sizeof(uint16_t));
  }
};
#define NATIVEVL_DOT_BF16 0
#include "gemv_tiles.h"
#include "quant_tiles.h"
#undef NATIVEVL_DOT_BF16
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// --- levels 2 and 3: AVX-512 (level 3's VDPBF16PS only in BF16Dot, run only where the CPU has it) ---
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
#endif
namespace avx512 {
struct Isa {
  using F = __m512;
  using I = __m512i;
  static constexpr int kLanes = 16;
  static constexpr int kRows = 8;  // 8 x 3 sums, 3 of W and a broadcast in the 32 registers
  static F zero() { return _mm512_setzero_ps(); }
  static F loadf(const float* p) { return _mm512_loadu_ps(p); }
  static I loadi(const uint16_t* p) { return _mm512_loadu_si512(p); }
  static F broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F low_halves(I w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
  static F high_halves(I w) { return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(-65536))); }
  static __mmask16 mask(int64_t left) { return left >= kLanes ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }
  static void store(float* p, int64_t left, F v) { _mm512_mask_storeu_ps(p, mask(left), v); }
  static void store(uint16_t* p, int64_t left, F v) {  // round to nearest even: + 0x7FFF + the kept lsb
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_mask_storeu_epi16(p, mask(left), _mm512_cvtepi32_epi16(r));
  }
  static I broadcast_pair(const uint16_t* p) {  // x's pair at this step, in every lane
    int32_t pair;
    std::memcpy(&pair, p, sizeof pair);
    return _mm512_set1_epi32(pair);
  }
  static F dot(F acc, I w, I x) { return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x); }
};
#define NATIVEVL_DOT_BF16 1
#include "gemv_tiles.h"
#include "attention_tiles.h"
#undef NATIVEVL_DOT_BF16
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace {

// Contiguous ranges of tiles per thread: each thread streams its share of W in memory order.
template <typename X, typename W, typename Y>
void run(void (*tiles)(const X*, const W*, const float*, Y*, int64_t, int64_t, int64_t, int64_t, int64_t),
         const at::Tensor& x, const at::Tensor& w, const float* bias, at::Tensor& y, int64_t n) {
  const auto* xp = reinterpret_cast<const X*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const W*>(w.data_ptr());
  auto* yp = reinterpret_cast<Y*>(y.data_ptr());
  at::parallel_for(0, w.size(0), 4, [&](int64_t first, int64_t last) {
    tiles(xp, wp, bias, yp, x.size(0), w.size(1), n, first, last);
  });
}

// One head's K as a product's W: (ceil(lk/48), d/2, 48, 2), key rows at stride ks, their values at stride kd.
// Each pair moves as one 32-bit word (a key's two adjacent values); padding keys are zeros.
void pack_keys(const uint16_t* k, int64_t ks, int64_t kd, int64_t lk, int64_t d, uint16_t* dst) {
  constexpr int64_t t48 = avx512::kTile;
  const int64_t steps = d / 2, tiles = (lk + t48 - 1) / t48;
  std::memset(dst, 0, tiles * steps * t48 * 2 * sizeof(uint16_t));
  for (int64_t key = 0; key < lk; ++key) {
    const uint16_t* row = k + key * ks;
    uint16_t* out = dst + (key / t48 * steps * t48 + key % t48) * 2;
    for (int64_t s = 0; s < steps; ++s, out += t48 * 2) {
      if (kd == 1) {
        std::memcpy(out, row + 2 * s, 2 * sizeof(uint16_t));
      } else {
        out[0] = row[2 * s * kd];
        out[1] = row[(2 * s + 1) * kd];
      }
    }
  }
}

// One head's V^T as a product's W: (ceil(d/48), ceil(lk/2), 48, 2), the pairs two keys' values of one dimension.
void pack_values(const uint16_t* v, int64_t vs, int64_t vd, int64_t lk, int64_t d, uint16_t* dst) {
  constexpr int64_t t48 = avx512::kTile;
  const int64_t steps = (lk + 1) / 2, tiles = (d + t48 - 1) / t48;
  std::memset(dst, 0, tiles * steps * t48 * 2 * sizeof(uint16_t));
  for (int64_t s = 0; s < steps; ++s) {
    const uint16_t* even = v + 2 * s * vs;
    const uint16_t* odd = 2 * s + 1 < lk ? even + vs : nullptr;  // an odd count's last pair: its zero stays
    for (int64_t t = 0; t < tiles; ++t) {
      uint16_t* out = dst + (t * steps + s) * t48 * 2;
      const int64_t first = t * t48, n = std::min(t48, d - first);
      for (int64_t o = 0; o < n; ++o) {
        out[2 * o] = even[(first + o) * vd];
        if (odd) out[2 * o + 1] = odd[(first + o) * vd];
      }
    }
  }
}

// q (B, H, Lq, d), k/v (B, Hkv, Lk, d), mask (B or 1, 1, Lq or 1, Lk) bytes -> out (B, Lq, H, d) contiguous.
void attention_blocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor* mask,
                      bool causal, double scale, at::Tensor& out) {
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), hkv = k.size(1), lk = k.size(2);
  const int64_t k_size = (lk + avx512::kTile - 1) / avx512::kTile * avx512::kTile * d;
  const int64_t v_size = (d + avx512::kTile - 1) / avx512::kTile * avx512::kTile * ((lk + 1) / 2 * 2);
  const auto* kp = reinterpret_cast<const uint16_t*>(k.data_ptr());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.data_ptr());
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const uint8_t* mp = mask ? reinterpret_cast<const uint8_t*>(mask->data_ptr()) : nullptr;
  const int64_t mask_b = mask && mask->size(0) > 1 ? mask->stride(0) : 0;
  const int64_t mask_row = mask && mask->size(2) > 1 ? mask->stride(2) : 0;
  const int64_t blocks = (lq + avx512::kBlock - 1) / avx512::kBlock, offset = lk - lq;  // causal: the last query, last key
  // Items in (batch, head, block) order, contiguous ranges per thread: a thread packs a key/value head's K and
  // V when its items reach it (a group's query heads follow one another) and keeps them in its caches.
  at::parallel_for(0, b * h * blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<uint16_t> kv(k_size + v_size), qrows(avx512::kBlock * d), p(avx512::kBlock * (lk + 1));
    std::vector<float> s(avx512::kBlock * lk), o(avx512::kBlock * d);
    int64_t packed = -1;  // the (batch, kv head) in kv
    for (int64_t item = first; item < last; ++item) {
      const int64_t bi = item / (h * blocks), hi = item / blocks % h, r0 = item % blocks * avx512::kBlock;
      const int64_t g = hi / (h / hkv);
      if (bi * hkv + g != packed) {
        packed = bi * hkv + g;
        pack_keys(kp + bi * k.stride(0) + g * k.stride(1), k.stride(2), k.stride(3), lk, d, kv.data());
        pack_values(vp + bi * v.stride(0) + g * v.stride(1), v.stride(2), v.stride(3), lk, d, kv.data() + k_size);
      }
      const int rows = static_cast<int>(std::min<int64_t>(avx512::kBlock, lq - r0));
      for (int r = 0; r < rows; ++r)
        std::memcpy(qrows.data() + r * d, qp + bi * q.stride(0) + hi * q.stride(1) + (r0 + r) * q.stride(2),
                    d * sizeof(uint16_t));
      const int64_t keys = causal ? std::clamp<int64_t>(r0 + rows + offset, 0, lk) : lk;
      avx512::attend_rows(qrows.data(), rows, d, {kv.data(), kv.data() + k_size}, lk, keys, r0 + offset + 1,
                          causal, mp ? mp + bi * mask_b + r0 * mask_row : nullptr, mask_row,
                          static_cast<float>(scale), s.data(), p.data(), o.data(),
                          op + ((bi * lq + r0) * h + hi) * d, h * d);
    }
  });
}

}  // namespace
#endif

namespace {

// softmax(q k^T * scale) v in bf16 for prompts (level 3; see attention_tiles.h), causal aligned at the last
// query and key as torch's SDPA with a KV cache, and/or a boolean mask (True: may attend).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, bool causal, double scale) {
  TORCH_CHECK(level() >= 3, "nativevl_cpu::attention needs a CPU with AVX-512 BF16");
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->dim() == 4,
                "q, k, v: 4-d bf16 on CPU, (batch, heads, length, head_dim)");
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == b && k.size(3) == d && k.size(1) > 0 && h % k.size(1) == 0,
              "k and v: (batch, kv_heads, length, head_dim) with q's batch and head_dim, heads a multiple of kv_heads");
  TORCH_CHECK(d % 2 == 0 && d > 0, "head_dim ", d, ": even (bf16 pairs)");
  TORCH_CHECK(scale > 0, "scale ", scale, ": positive");
  at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous(), m;
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4 && mask->size(1) == 1 && mask->size(3) == lk &&
                    (mask->size(0) == 1 || mask->size(0) == b) && (mask->size(2) == 1 || mask->size(2) == lq),
                "mask: bool (batch or 1, 1, q length or 1, k length)");
    m = mask->stride(3) == 1 ? *mask : mask->contiguous();
  }
  at::Tensor out = at::empty({b, lq, h, d}, q.options());
#ifdef NATIVEVL_X86
  attention_blocks(qc, k, v, mask ? &m : nullptr, causal, scale, out);
#endif
  return out.transpose(1, 2);
}

at::Tensor gemv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, int64_t n,
                int64_t lvl) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && (bf16 || x.scalar_type() == at::kFloat),
              "x: 2-d bf16 or float32 on CPU");
  TORCH_CHECK(lvl >= 1 && lvl <= 3, "level ", lvl, ": 1 (AVX2), 2 (AVX-512) or 3 (AVX-512 BF16)");
  TORCH_CHECK(lvl <= level(), "gemv level ", lvl, " needs a CPU with ",
              lvl == 1 ? "AVX2 and FMA" : lvl == 2 ? "AVX-512" : "AVX-512 BF16");
  const int64_t depth = bf16 ? 2 : 1, m = x.size(0), k = x.size(1), tile = tile_outputs(lvl);
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == x.scalar_type() && w.dim() == 4 && w.size(2) == tile &&
                  w.size(3) == depth && w.is_contiguous(),
              "w: packed by gemv.pack for level ", lvl, ", (n/", tile, ", k/", depth, ", ", tile, ", ", depth,
              ") of x's dtype");
  TORCH_CHECK(w.size(1) == (k + depth - 1) / depth && n <= w.size(0) * tile && n > (w.size(0) - 1) * tile,
              "w's tiles do not match x's width ", k, " and n ", n);
  const float* b = nullptr;
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == w.size(0) * tile,
                "bias: float32, padded to the tiles' outputs");
    b = bias->data_ptr<float>();
  }
  // an odd k in bf16: x gets the zero that pairs with W's padding (its next value could be anything, NaN too)
  at::Tensor xc = k % depth ? at::constant_pad_nd(x, {0, 1}) : x.contiguous();
  if (bf16 && lvl < 3) xc = xc.to(at::kFloat);  // widened once here; the loops widen W in registers
  at::Tensor y = at::empty({m, n}, x.options());
#ifdef NATIVEVL_X86
  if (lvl == 1 && bf16)
    run(&avx2::tiles<avx2::BF16Widened>, xc, w, b, y, n);
  else if (lvl == 1)
    run(&avx2::tiles<avx2::F32>, xc, w, b, y, n);
  else if (!bf16)
    run(&avx512::tiles<avx512::F32>, xc, w, b, y, n);
  else if (lvl == 2)
    run(&avx512::tiles<avx512::BF16Widened>, xc, w, b, y, n);
  else
    run(&avx512::tiles<avx512::BF16Dot>, xc, w, b, y, n);
#endif
  return y;
}


// y = x @ W.T + b for rows of x against int8 or int4 codes, in integer dot products on 8-bit x (quant_tiles.h;
// Python side: nativevl/kernels/quant.py), on the AVX2 loops at every level.
at::Tensor quant_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& offsets,
                      const std::optional<at::Tensor>& bias, int64_t n, int64_t bits, int64_t group, int64_t block) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && (bf16 || x.scalar_type() == at::kFloat),
              "x: 2-d bf16 or float32 on CPU");
  TORCH_CHECK(level() >= 1, "quant_gemv needs a CPU with AVX2 and FMA");
  TORCH_CHECK(bits == 8 || bits == 4, "bits ", bits, ": 8 or 4");
  constexpr int64_t tile = 24;  // avx2::kTile
  const int64_t step_k = bits == 8 ? 4 : 8, m = x.size(0), k = x.size(1);
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kByte && w.dim() == 3 && w.size(2) == tile * 4 &&
                  w.is_contiguous(),
              "w: (n/24, k/", step_k, ", 96) bytes packed by kernels.quant.pack");
  const int64_t kp = w.size(1) * step_k;
  TORCH_CHECK(k <= kp && k > kp - 32, "x's width ", k, " does not match w's ", kp, " k values");
  TORCH_CHECK(n <= w.size(0) * tile && n > (w.size(0) - 1) * tile, "n ", n, " does not match w's tiles");
  TORCH_CHECK(block > 0 && block <= 32 && block % step_k == 0 && group % block == 0 && kp % group == 0,
              "block ", block, " and group ", group, ": block a multiple of ", step_k, " up to 32, dividing the "
              "group, which divides ", kp);
  const int64_t groups = kp / group, blocks = kp / block;
  for (const at::Tensor* t : {&scales, &offsets})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 3 &&
                    t->size(0) == w.size(0) && t->size(1) == groups && t->size(2) == tile,
                "scales and offsets: float32 (tiles, groups, 24)");
  const float* b = nullptr;
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == w.size(0) * tile,
                "bias: float32, padded to the tiles' outputs");
    b = bias->data_ptr<float>();
  }
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({m, n}, x.options());
#ifdef NATIVEVL_X86
  std::vector<int8_t> xq(m * kp);
  std::vector<float> xscale(m * blocks), xsum(m * groups);
  avx2::quantize_rows(xf.data_ptr<float>(), m, k, kp, block, group, xq.data(), xscale.data(), xsum.data());
  const avx2::QuantX xs{xq.data(), xscale.data(), xsum.data(), kp, blocks, groups};
  const auto* wp = w.data_ptr<uint8_t>();
  const float *sp = scales.data_ptr<float>(), *op = offsets.data_ptr<float>();
  auto each = [&](auto kind, auto* yp) {
    using Kind = decltype(kind);
    at::parallel_for(0, w.size(0), 4, [&](int64_t first, int64_t last) {
      avx2::quant_tiles<Kind>(xs, wp, sp, op, b, yp, m, block, n, first, last);
    });
  };
  auto* yb = reinterpret_cast<uint16_t*>(y.data_ptr());
  auto* yf = reinterpret_cast<float*>(y.data_ptr());
  if (bits == 8 && bf16) each(avx2::Quant<8, uint16_t>{}, yb);
  else if (bits == 8) each(avx2::Quant<8, float>{}, yf);
  else if (bf16) each(avx2::Quant<4, uint16_t>{}, yb);
  else each(avx2::Quant<4, float>{}, yf);
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY(nativevl_cpu, lib) {
  lib.def("gemv(Tensor x, Tensor w, Tensor? bias, int n, int level) -> Tensor");
  lib.def("gemv_level() -> int", &level);
  lib.def("quant_gemv(Tensor x, Tensor w, Tensor scales, Tensor offsets, Tensor? bias, int n, int bits, "
          "int group, int block) -> Tensor");
  lib.def("attention(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(nativevl_cpu, CPU, lib) {
  lib.impl("gemv", gemv);
  lib.impl("quant_gemv", quant_gemv);
  lib.impl("attention", attention);
}
