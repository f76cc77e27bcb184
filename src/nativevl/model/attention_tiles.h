// bf16 attention for CPU prompts on VDPBF16PS (level 3), built from gemv_tiles.h's loops: gemv.cpp includes
// this file inside namespace avx512, after gemv_tiles.h. No include guard on purpose.
//
// Per block of up to Isa::kRows query rows of one head, all in L1/L2:
//   scores  S = Q K^T in float32: K packed as a product's W (tiles of 48 keys, head_dim in pairs), Q's rows as x;
//   softmax scale, mask, row maximum, p = exp(s - max) summed in float32 and rounded to bf16 (as torch's CPU
//           flash kernel does before its second product);
//   values  O = P V: V^T packed as W (tiles of 48 of head_dim, keys in pairs), P's rows as x; O / sum -> bf16.
// A row that may attend no key at all gets zeros.

struct BF16Scores : BF16Dot {  // BF16Dot's steps, float32 sums stored unrounded
  using Y = float;
};

// exp(x) for x <= 0, within about 2 float32 ulps: 2^n e^f with n = round(x log2 e), |f| <= ln2 / 2, and e^f by
// its Taylor polynomial of degree 6 (remainder below 1.3e-7). Inputs below -100 give 2^-144 or less.
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.f)), _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// One row of scores s[0, keys): scaled in place, keys from `visible` on and those `allowed` forbids (a byte per
// key; null: all) set to -inf; then exp(s - max) rounded to bf16 into p[0, width), zeros from `keys` on.
// Returns the float32 sum of the exps (0 where no key is visible).
inline float softmax_row(float* s, int64_t keys, int64_t visible, const uint8_t* allowed, float scale,
                         uint16_t* p, int64_t width) {
  const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
  __m512 top = minus_inf;
  for (int64_t j = 0; j < keys; j += Isa::kLanes) {
    const __mmask16 in = Isa::mask(keys - j);
    __mmask16 ok = Isa::mask(std::max<int64_t>(visible - j, 0));
    if (allowed) ok &= _mm_test_epi8_mask(_mm_maskz_loadu_epi8(in, allowed + j), _mm_set1_epi8(-1));
    const __m512 v = _mm512_mask_mul_ps(minus_inf, ok, _mm512_maskz_loadu_ps(in, s + j), _mm512_set1_ps(scale));
    _mm512_mask_storeu_ps(s + j, in, v);
    top = _mm512_mask_max_ps(top, in, top, v);
  }
  const float m = _mm512_reduce_max_ps(top);
  if (m == -INFINITY) {
    std::memset(p, 0, width * sizeof(uint16_t));
    return 0.f;
  }
  __m512 sum = Isa::zero();
  const __m512 mv = _mm512_set1_ps(m);
  for (int64_t j = 0; j < keys; j += Isa::kLanes) {
    const __mmask16 in = Isa::mask(keys - j);
    const __m512 v = _mm512_maskz_loadu_ps(in, s + j);
    const __mmask16 seen = _mm512_mask_cmp_ps_mask(in, v, minus_inf, _CMP_NEQ_OQ);  // exactly 0 where masked
    const __m512 e = _mm512_maskz_mov_ps(seen, exp_nonpositive(_mm512_sub_ps(v, mv)));
    sum = _mm512_add_ps(sum, e);
    Isa::store(p + j, keys - j, e);
  }
  for (int64_t j = keys; j < width; ++j) p[j] = 0;  // the pair of an odd last key
  return _mm512_reduce_add_ps(sum);
}

// Where one head's blocks read: K packed (ceil(lk/48), d/2, 48, 2), V^T packed (ceil(d/48), ceil(lk/2), 48, 2).
struct HeadKV {
  const uint16_t* k;
  const uint16_t* v;
};

// The attention of `rows` (<= Isa::kRows) query rows q (row stride d) against `keys` keys (the last row's
// visible ones); row r sees keys [0, min(keys, visible + r)) (causal) or [0, keys), less what `allowed`
// forbids (row r's bytes at allowed + r * allowed_row; null: none). out: row r at out + r * out_row.
// Scratch: s (rows x keys float32), p (rows x even(keys) bf16), o (rows x d float32).
inline void attend_rows(const uint16_t* q, int rows, int64_t d, const HeadKV& kv, int64_t lk, int64_t keys,
                        int64_t visible, bool causal, const uint8_t* allowed, int64_t allowed_row, float scale,
                        float* s, uint16_t* p, float* o, uint16_t* out, int64_t out_row) {
  const int64_t steps = d / 2, width = keys + (keys & 1);
  for (int64_t t = 0; t * kTile < keys; ++t)
    pass<BF16Scores>[vectors(keys, t * kTile) - 1][rows - 1](q, steps, kv.k + t * steps * kTile * 2, nullptr, s, keys, t * kTile);
  float sums[Isa::kRows];
  for (int r = 0; r < rows; ++r)
    sums[r] = softmax_row(s + r * keys, keys, causal ? std::min(keys, visible + r) : keys,
                          allowed ? allowed + r * allowed_row : nullptr, scale, p + r * width, width);
  const int64_t v_steps = (lk + 1) / 2;  // V's tiles hold every key; the block reads the first width / 2 steps
  for (int64_t t = 0; t * kTile < d; ++t)
    pass<BF16Scores>[vectors(d, t * kTile) - 1][rows - 1](p, width / 2, kv.v + t * v_steps * kTile * 2, nullptr, o, d, t * kTile);
  for (int r = 0; r < rows; ++r) {
    const __m512 inv = _mm512_set1_ps(sums[r] > 0.f ? 1.f / sums[r] : 0.f);
    for (int64_t c = 0; c < d; c += Isa::kLanes)
      Isa::store(out + r * out_row + c, d - c, _mm512_mul_ps(_mm512_maskz_loadu_ps(Isa::mask(d - c), o + r * d + c), inv));
  }
}
