// The product of int8 and int4 weights with a few rows of x (model/quant.py's QuantLinear), in integer dot
// products: cpu.cpp includes this file in the AVX2 namespace only, after gemv_tiles.h, whose tiles (kTile
// outputs), `finish` and `vectors` it shares. No include guard on purpose.
//
// Why integers: widening each code to float32 and multiplying (the first version) made a decode step
// compute-bound at a quarter of the read bound. Here each row of x is first put on 8 bits per block of
// `block` k values (q = round(x * 127 / max|x|), llama.cpp's Q8 activations), and a weight byte and x byte are
// multiplied and summed by VPMADDUBSW (u8 x s8 -> pairs summed to s16) and VPMADDWD (pairs to s32): 32
// products per instruction pair, where the float path did 8.
//
// W, per tile of kTile outputs and step: 3 registers of 8 outputs x 4 bytes. int8: the step's 4 k values as
// signed codes c = q - 128 (x gets c's sign, VPMADDUBSW takes |c|). int4: 8 k values, 4s..4s+3 of the step
// in the low nibbles, 4s+4..4s+7 in the high. Per group of k values and output, a float32 scale s and offset
// o, so that sum_k w_k xhat_k = s * sum_k c_k xhat_k + o * sum_k xhat_k (xhat: x's 8-bit value times its block's
// scale; o = (128 - z) * s at 8 bits, -z * s at 4): the dequantized weight times x's 8-bit values, exactly.

constexpr int kQuantRows = 2;  // 2 x 3 float sums, 2 x 3 integer sums and the codes in AVX2's 16 registers

inline __m256i x_bytes(const int8_t* p) {  // 4 bytes of x, in every 32-bit lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

template <int Bits, typename Out>
struct Quant {
  using Y = Out;
  static constexpr int kStepK = Bits == 8 ? 4 : 8;  // k values a step
  // one step of R rows (row r's bytes at x + r * kp) against the tile's first V registers at p: integer sums,
  // s32 at 8 bits; at 4 bits s16 (at most 4 products of 15 x 127 a step, 4 steps a block: < 2^15)
  template <int R, int V>
  static void step(__m256i (&sum)[R][kVectors], const uint8_t* p, const int8_t* x, int64_t kp) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int v = 0; v < V; ++v) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + v * 32));
      if constexpr (Bits == 8) {
        const __m256i a = _mm256_abs_epi8(w);  // |c| <= 128 and |x| <= 127: a pair sums below 2^15
        for (int r = 0; r < R; ++r) {
          const __m256i pairs = _mm256_maddubs_epi16(a, _mm256_sign_epi8(x_bytes(x + r * kp), w));
          sum[r][v] = _mm256_add_epi32(sum[r][v], _mm256_madd_epi16(pairs, ones));
        }
      } else {
        const __m256i nib = _mm256_set1_epi8(15);
        const __m256i lo = _mm256_and_si256(w, nib), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
        for (int r = 0; r < R; ++r) {
          const __m256i a = _mm256_maddubs_epi16(lo, x_bytes(x + r * kp));
          const __m256i b = _mm256_maddubs_epi16(hi, x_bytes(x + r * kp + 4));
          sum[r][v] = _mm256_add_epi16(sum[r][v], _mm256_add_epi16(a, b));
        }
      }
    }
  }
  template <int R, int V>
  static void end_block(__m256i (&sum)[R][kVectors]) {  // s16 pairs to s32 at 4 bits
    if constexpr (Bits == 4)
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) sum[r][v] = _mm256_madd_epi16(sum[r][v], _mm256_set1_epi16(1));
  }
};

// x on 8 bits, as the loops read it: per row, kp bytes (zero past k), a scale per block, x's sum per group.
struct QuantX {
  const int8_t* q;
  const float* scale;
  const float* sum;
  int64_t kp, blocks, groups;
};

// R rows of x against one tile's first V registers: per block the integer sums, scaled by s times x's block
// scale into float32; per group the offsets times x's sums.
template <typename Kind, int R, int V>
void quant_rows(const QuantX& x, int64_t block_steps, int64_t group_blocks, const uint8_t* tile, const float* scales,
                const float* offsets, const float* bias, typename Kind::Y* y, int64_t n, int64_t col) {
  typename Isa::F acc[R][kVectors];
  for (auto& row : acc)
    for (auto& a : row) a = Isa::zero();
  const uint8_t* p = tile;
  for (int64_t g = 0, b = 0; g < x.groups; ++g) {
    typename Isa::F s[kVectors], o[kVectors];
    for (int v = 0; v < V; ++v) {
      s[v] = Isa::loadf(scales + g * kTile + v * Isa::kLanes);
      o[v] = Isa::loadf(offsets + g * kTile + v * Isa::kLanes);
    }
    for (int64_t last = b + group_blocks; b < last; ++b) {
      __m256i sum[R][kVectors];
      for (auto& row : sum)
        for (auto& a : row) a = _mm256_setzero_si256();
      const int8_t* xb = x.q + b * block_steps * Kind::kStepK;
      for (int64_t st = 0; st < block_steps; ++st, p += kTile * 4)
        Kind::template step<R, V>(sum, p, xb + st * Kind::kStepK, x.kp);
      Kind::template end_block<R, V>(sum);
      for (int r = 0; r < R; ++r) {
        const typename Isa::F sx = Isa::broadcast(x.scale + r * x.blocks + b);
        for (int v = 0; v < V; ++v)
          acc[r][v] = Isa::fmadd(_mm256_cvtepi32_ps(sum[r][v]), _mm256_mul_ps(s[v], sx), acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const typename Isa::F total = Isa::broadcast(x.sum + r * x.groups + g);
      for (int v = 0; v < V; ++v) acc[r][v] = Isa::fmadd(o[v], total, acc[r][v]);
    }
  }
  finish<R, V>(acc, bias, n, col, y);
}

template <typename Kind, int V, int... R>
constexpr auto quant_passes(std::integer_sequence<int, R...>) {
  return std::array{&quant_rows<Kind, R + 1, V>...};
}

template <typename Kind>
constexpr std::array quant_pass = {quant_passes<Kind, 1>(std::make_integer_sequence<int, kQuantRows>{}),
                                   quant_passes<Kind, 2>(std::make_integer_sequence<int, kQuantRows>{}),
                                   quant_passes<Kind, 3>(std::make_integer_sequence<int, kQuantRows>{})};

// Tiles [first, last) for every row of x, kQuantRows rows a pass.
template <typename Kind>
void quant_tiles(const QuantX& x, const uint8_t* w, const float* scales, const float* offsets, const float* bias,
                 typename Kind::Y* y, int64_t m, int64_t block, int64_t n, int64_t first, int64_t last) {
  const int64_t block_steps = block / Kind::kStepK, group_blocks = x.blocks / x.groups;
  for (int64_t t = first; t < last; ++t) {
    const uint8_t* tile = w + t * x.kp * kTile / Kind::kStepK * 4;
    const float* s = scales + t * x.groups * kTile;
    const float* o = offsets + t * x.groups * kTile;
    const auto& by_rows = quant_pass<Kind>[vectors(n, t * kTile) - 1];
    for (int64_t r = 0; r < m; r += kQuantRows) {
      const QuantX rows{x.q + r * x.kp, x.scale + r * x.blocks, x.sum + r * x.groups, x.kp, x.blocks, x.groups};
      by_rows[std::min<int64_t>(kQuantRows, m - r) - 1](rows, block_steps, group_blocks, tile, s, o, bias,
                                                        y + r * n, n, t * kTile);
    }
  }
}

// x (m, k) float32 on 8 bits per block (zero past k, up to kp), and per group the sum of its 8-bit values times
// their scales: with it the product is exactly the dequantized weight times x as 8 bits represent it.
inline void quantize_rows(const float* x, int64_t m, int64_t k, int64_t kp, int64_t block, int64_t group,
                          int8_t* q, float* scale, float* sum) {
  const int64_t blocks = kp / block, groups = kp / group, group_blocks = group / block;
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    for (int64_t g = 0; g < groups; ++g) sum[r * groups + g] = 0.f;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t lo = std::min(k, b * block), hi = std::min(k, lo + block);
      float top = 0.f;
      for (int64_t i = lo; i < hi; ++i) top = std::max(top, std::fabs(xr[i]));
      const float inv = top > 0.f ? 127.f / top : 0.f;
      int8_t* qb = q + r * kp + b * block;
      int32_t total = 0;
      for (int64_t i = 0; i < block; ++i) {
        qb[i] = lo + i < hi ? static_cast<int8_t>(std::nearbyint(xr[lo + i] * inv)) : 0;
        total += qb[i];
      }
      scale[r * blocks + b] = top / 127.f;
      sum[r * groups + b / group_blocks] += static_cast<float>(total) * (top / 127.f);
    }
  }
}
