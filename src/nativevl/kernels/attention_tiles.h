// bf16 attention for CPU prompts on VDPBF16PS (level 3), built from gemv_tiles.h's loops: cpu.cpp includes
// this file inside namespace avx512, after gemv_tiles.h. No include guard on purpose.
//
// Per block of up to kBlock (32) query rows of one head, all in L1/L2:
//   scores  S = Q K^T in float32: K packed as a product's W (tiles of 48 keys, head_dim in pairs), Q's rows as x;
//   softmax mask, row maximum, p = exp(scale (s - max)) summed in float32 and rounded to bf16 (as torch's
//           CPU flash kernel does before its second product);
//   values  O = P V: V^T packed as W (tiles of 48 of head_dim, keys in pairs), P's rows as x; O / sum -> bf16.
// A row that may attend no key at all gets zeros.

struct BF16Scores : BF16Dot {  // BF16Dot's steps, float32 sums stored unrounded
  using Y = float;
};

// float32 -> bf16, to nearest even, NaN kept (VCVTNEPS2BF16: one instruction where Isa::store's integer
// rounding, which level 2 needs, takes eight)
inline void store_bf16(uint16_t* p, int64_t left, __m512 v) {
  _mm256_mask_storeu_epi16(p, Isa::mask(left), (__m256i)_mm512_cvtneps_pbh(v));
}

// exp(x) for x <= 0: 2^n e^f with n = round(x log2 e), |f| <= ln2 / 2, and e^f by its Taylor polynomial of
// degree 6 (remainder below 1.3e-7). Relative error about 1.3e-7 + |x| 2^-24 (the rounding of x log2 e): 2e-7
// near the row's maximum, where the weights that count lie, far below bf16's 2^-9. Below -100: 2^-144 or less.
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.f)), _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// Which of the 16 keys from j a row sees: below `visible` and, where `allowed` is given, its byte nonzero.
inline __mmask16 seen(int64_t j, int64_t keys, int64_t visible, const uint8_t* allowed) {
  __mmask16 ok = Isa::mask(std::max<int64_t>(std::min(visible, keys) - j, 0));
  if (allowed) ok &= _mm_test_epi8_mask(_mm_maskz_loadu_epi8(Isa::mask(keys - j), allowed + j), _mm_set1_epi8(-1));
  return ok;
}

// One row of raw scores s[0, keys), of which the row sees those `seen` says: p[0, width) = exp(scale (s - max))
// rounded to bf16, zeros for the keys it does not see and from `keys` on. Returns the float32 sum of the exps
// (0 where it sees no key). scale > 0, so the maximum of the raw scores is the scaled ones' maximum.
inline float softmax_row(const float* s, int64_t keys, int64_t visible, const uint8_t* allowed, float scale,
                         uint16_t* p, int64_t width) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < keys; j += Isa::kLanes)
    top = _mm512_mask_max_ps(top, seen(j, keys, visible, allowed), top, _mm512_maskz_loadu_ps(Isa::mask(keys - j), s + j));
  const float m = _mm512_reduce_max_ps(top);
  if (m == -INFINITY) {
    std::memset(p, 0, width * sizeof(uint16_t));
    return 0.f;
  }
  __m512 sum = Isa::zero();
  const __m512 by = _mm512_set1_ps(scale), shift = _mm512_set1_ps(-m * scale);
  for (int64_t j = 0; j < keys; j += Isa::kLanes) {
    const __m512 x = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(Isa::mask(keys - j), s + j), by, shift);
    const __m512 e = _mm512_maskz_mov_ps(seen(j, keys, visible, allowed), exp_nonpositive(x));
    sum = _mm512_add_ps(sum, e);
    store_bf16(p + j, keys - j, e);
  }
  for (int64_t j = keys; j < width; ++j) p[j] = 0;  // the pair of an odd last key
  return _mm512_reduce_add_ps(sum);
}

// Where one head's blocks read: K packed (ceil(lk/48), d/2, 48, 2), V^T packed (ceil(d/48), ceil(lk/2), 48, 2).
struct HeadKV {
  const uint16_t* k;
  const uint16_t* v;
};

// Query rows a block takes: each tile of K or V, once in L1, serves the block's passes of kRows rows.
constexpr int kBlock = 4 * Isa::kRows;

// y's rows [0, rows) (stride n) = x's (stride steps * 2) against the packed tiles of n outputs at w (each
// w_steps steps long; the first `steps` read), by passes of kRows rows per tile.
inline void product(const uint16_t* x, int rows, int64_t steps, const uint16_t* w, int64_t w_steps, float* y,
                    int64_t n) {
  for (int64_t t = 0; t * kTile < n; ++t) {
    const auto& by_rows = pass<BF16Scores>[vectors(n, t * kTile) - 1];
    for (int r = 0; r < rows; r += Isa::kRows)
      by_rows[std::min(Isa::kRows, rows - r) - 1](x + r * steps * 2, steps, w + t * w_steps * kTile * 2, nullptr,
                                                  y + r * n, n, t * kTile);
  }
}

// The attention of `rows` (<= kBlock) query rows q (row stride d) against `keys` keys (the last row's
// visible ones); row r sees keys [0, min(keys, visible + r)) (causal) or [0, keys), less what `allowed`
// forbids (row r's bytes at allowed + r * allowed_row; null: none). out: row r at out + r * out_row.
// Scratch: s (rows x keys float32), p (rows x even(keys) bf16), o (rows x d float32).
inline void attend_rows(const uint16_t* q, int rows, int64_t d, const HeadKV& kv, int64_t lk, int64_t keys,
                        int64_t visible, bool causal, const uint8_t* allowed, int64_t allowed_row, float scale,
                        float* s, uint16_t* p, float* o, uint16_t* out, int64_t out_row) {
  const int64_t width = keys + (keys & 1);
  product(q, rows, d / 2, kv.k, d / 2, s, keys);
  float sums[kBlock];
  for (int r = 0; r < rows; ++r)
    sums[r] = softmax_row(s + r * keys, keys, causal ? visible + r : keys,
                          allowed ? allowed + r * allowed_row : nullptr, scale, p + r * width, width);
  product(p, rows, width / 2, kv.v, (lk + 1) / 2, o, d);  // V's tiles hold every key; the block reads `keys`
  for (int r = 0; r < rows; ++r) {
    const __m512 inv = _mm512_set1_ps(sums[r] > 0.f ? 1.f / sums[r] : 0.f);
    for (int64_t c = 0; c < d; c += Isa::kLanes)
      store_bf16(out + r * out_row + c, d - c, _mm512_mul_ps(_mm512_maskz_loadu_ps(Isa::mask(d - c), o + r * d + c), inv));
  }
}
