// The few-row product of int8 and int4 weights (model/quant.py's QuantLinear): cpu.cpp includes this file in
// a level's namespace after gemv_tiles.h, whose tiles (kTile outputs), `finish` and `vectors` it shares.
// No include guard on purpose.
//
// W: per tile (tiles, steps, kTile) bytes, one byte per output and step: at 8 bits a step is one k value's
// code; at 4 bits two k values' (2s in the low nibble, 2s+1 in the high). Per tile and group of
// `group_steps` steps, each output's scale s and offset m = -z * s (tiles, groups, kTile) float32, so that a
// weight is q * s + m, widened and scaled in registers; x is float32. A decode step reads W at one byte or half
// a byte a weight, which is what makes it faster than bf16's two.

// Rows a pass: 2 x 3 sums, 3 scales, 3 offsets and a weight in AVX2's 16 registers.
constexpr int kQuantRows = Isa::kRows / 2;

template <int Bits, typename Out>
struct Quant {
  using Y = Out;
  static constexpr int kDepth = Bits == 8 ? 1 : 2;
  template <int R, int V>
  static void step(typename Isa::F (&acc)[R][kVectors], const uint8_t* p, const typename Isa::F (&s)[kVectors],
                   const typename Isa::F (&m)[kVectors], const float* x, int64_t k) {
    for (int v = 0; v < V; ++v) {
      const typename Isa::I q = Isa::load_bytes(p + v * Isa::kLanes);
      if constexpr (Bits == 8) {
        const typename Isa::F w = Isa::fmadd(Isa::to_float(q), s[v], m[v]);
        for (int r = 0; r < R; ++r) acc[r][v] = Isa::fmadd(w, Isa::broadcast(x + r * k), acc[r][v]);
      } else {
        const typename Isa::F even = Isa::fmadd(Isa::to_float(Isa::low_nibbles(q)), s[v], m[v]);
        const typename Isa::F odd = Isa::fmadd(Isa::to_float(Isa::high_nibbles(q)), s[v], m[v]);
        for (int r = 0; r < R; ++r) {
          const typename Isa::F sum = Isa::fmadd(even, Isa::broadcast(x + r * k), acc[r][v]);
          acc[r][v] = Isa::fmadd(odd, Isa::broadcast(x + r * k + 1), sum);
        }
      }
    }
  }
};

// R rows of x against one tile's first V registers, group by group: each group's scales and offsets loaded
// once, its steps' codes read in order.
template <typename Kind, int R, int V>
void quant_rows(const float* x, int64_t steps, int64_t group_steps, const uint8_t* tile, const float* scales,
                const float* offsets, const float* bias, typename Kind::Y* y, int64_t n, int64_t col) {
  typename Isa::F acc[R][kVectors];
  for (auto& row : acc)
    for (auto& a : row) a = Isa::zero();
  const int64_t k = steps * Kind::kDepth;
  for (int64_t first = 0, g = 0; first < steps; first += group_steps, ++g) {
    typename Isa::F s[kVectors], m[kVectors];
    for (int v = 0; v < V; ++v) {
      s[v] = Isa::loadf(scales + g * kTile + v * Isa::kLanes);
      m[v] = Isa::loadf(offsets + g * kTile + v * Isa::kLanes);
    }
    const int64_t last = std::min(steps, first + group_steps);
    for (int64_t st = first; st < last; ++st)
      Kind::template step<R, V>(acc, tile + st * kTile, s, m, x + st * Kind::kDepth, k);
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
void quant_tiles(const float* x, const uint8_t* w, const float* scales, const float* offsets, const float* bias,
                 typename Kind::Y* y, int64_t m, int64_t steps, int64_t group_steps, int64_t n, int64_t first,
                 int64_t last) {
  const int64_t k = steps * Kind::kDepth, groups = (steps + group_steps - 1) / group_steps;
  for (int64_t t = first; t < last; ++t) {
    const uint8_t* tile = w + t * steps * kTile;
    const float* s = scales + t * groups * kTile;
    const float* o = offsets + t * groups * kTile;
    const auto& by_rows = quant_pass<Kind>[vectors(n, t * kTile) - 1];
    for (int64_t r = 0; r < m; r += kQuantRows)
      by_rows[std::min<int64_t>(kQuantRows, m - r) - 1](x + r * k, steps, group_steps, tile, s, o, bias, y + r * n,
                                                        n, t * kTile);
  }
}
