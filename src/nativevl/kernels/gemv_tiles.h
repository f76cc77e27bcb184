// The few-row product's loops, written once for any register width: cpu.cpp includes this file once per
// instruction set, inside that set's target pragma and namespace, after defining `Isa` there (its vector
// types, lane count, rows per pass and the few intrinsics below). No include guard on purpose.
//
// W: tiles of kTile = 3 * kLanes outputs, (tiles, steps, kTile, depth): per step each output's `depth` k
// values side by side. x: (m, steps * depth) rows. Per step three registers of W are multiplied by each row's
// value(s) at that step broadcast, into kRows x 3 registers of float32 sums (an outer product, no sums across
// lanes at the end).

constexpr int kVectors = 3;
constexpr int kTile = Isa::kLanes * kVectors;

// The sums of R rows against one tile's first V registers, plus the bias, stored as y's columns
// [col, min(col + V * kLanes, n)) (Isa's store is overloaded for float32 and bf16 outputs).
template <int R, int V, typename Y>
inline void finish(const typename Isa::F (&acc)[R][kVectors], const float* bias, int64_t n, int64_t col, Y* y) {
  for (int v = 0; v < V && col + Isa::kLanes * v < n; ++v) {
    const int64_t c = col + Isa::kLanes * v;
    const typename Isa::F b = bias ? Isa::loadf(bias + c) : Isa::zero();
    for (int r = 0; r < R; ++r) Isa::store(y + r * n + c, n - c, Isa::add(acc[r][v], b));
  }
}

// Each kind of product: the types of x as the loop reads it, of W and of y, k values per step (depth), and
// step<R, V>: one step of R rows of x (row r at x + r * k) against the tile's first V registers at p, into the
// sums (V < 3 only for a last tile of fewer outputs: its other registers would multiply padding).

// float32 W, float32 x: one FMA per row and register, x's value read as a broadcast.
struct F32 {
  using X = float;
  using W = float;
  using Y = float;
  static constexpr int kDepth = 1;
  template <int R, int V>
  static void step(typename Isa::F (&acc)[R][kVectors], const float* p, const float* x, int64_t k) {
    typename Isa::F w[V];
    for (int v = 0; v < V; ++v) w[v] = Isa::loadf(p + v * Isa::kLanes);
    for (int r = 0; r < R; ++r) {
      const typename Isa::F xr = Isa::broadcast(x + r * k);
      for (int v = 0; v < V; ++v) acc[r][v] = Isa::fmadd(w[v], xr, acc[r][v]);
    }
  }
};

// bf16 W widened in registers (a bf16 is the upper half of its float32), x already widened to float32:
// per register of W pairs, the even k's values and the odd k's, two FMAs per row. For CPUs without
// VDPBF16PS; W is still read at two bytes a value.
struct BF16Widened {
  using X = float;
  using W = uint16_t;
  using Y = uint16_t;
  static constexpr int kDepth = 2;
  template <int R, int V>
  static void step(typename Isa::F (&acc)[R][kVectors], const uint16_t* p, const float* x, int64_t k) {
    for (int v = 0; v < V; ++v) {
      const typename Isa::I w = Isa::loadi(p + 2 * v * Isa::kLanes);
      const typename Isa::F even = Isa::low_halves(w), odd = Isa::high_halves(w);
      for (int r = 0; r < R; ++r) {
        const typename Isa::F sum = Isa::fmadd(even, Isa::broadcast(x + r * k), acc[r][v]);
        acc[r][v] = Isa::fmadd(odd, Isa::broadcast(x + r * k + 1), sum);
      }
    }
  }
};

#if NATIVEVL_DOT_BF16
// bf16 W and x on VDPBF16PS: each lane multiplies its output's pair of k values by x's pair and adds both.
struct BF16Dot {
  using X = uint16_t;
  using W = uint16_t;
  using Y = uint16_t;
  static constexpr int kDepth = 2;
  template <int R, int V>
  static void step(typename Isa::F (&acc)[R][kVectors], const uint16_t* p, const uint16_t* x, int64_t k) {
    typename Isa::I w[V];
    for (int v = 0; v < V; ++v) w[v] = Isa::loadi(p + 2 * v * Isa::kLanes);
    for (int r = 0; r < R; ++r) {
      const typename Isa::I xr = Isa::broadcast_pair(x + r * k);
      for (int v = 0; v < V; ++v) acc[r][v] = Isa::dot(acc[r][v], w[v], xr);
    }
  }
};
#endif

// R rows of x (row stride k = steps * depth) against one tile's first V registers, from its first step to its
// last: W read once, in order.
template <typename Kind, int R, int V>
void rows(const typename Kind::X* x, int64_t steps, const typename Kind::W* tile, const float* bias,
          typename Kind::Y* y, int64_t n, int64_t col) {
  typename Isa::F acc[R][kVectors];
  for (auto& row : acc)
    for (auto& a : row) a = Isa::zero();
  const int64_t k = steps * Kind::kDepth;
  const typename Kind::W* p = tile;
  for (int64_t s = 0; s < steps; ++s, p += kTile * Kind::kDepth)
    Kind::template step<R, V>(acc, p, x + s * Kind::kDepth, k);
  finish<R, V>(acc, bias, n, col, y);
}

template <typename Kind, int V, int... R>
constexpr auto passes(std::integer_sequence<int, R...>) {  // passes[R - 1]: R rows of x at once
  return std::array{&rows<Kind, R + 1, V>...};
}

// pass<Kind>[V - 1][R - 1]: R rows against a tile's first V registers
template <typename Kind>
constexpr std::array pass = {passes<Kind, 1>(std::make_integer_sequence<int, Isa::kRows>{}),
                             passes<Kind, 2>(std::make_integer_sequence<int, Isa::kRows>{}),
                             passes<Kind, 3>(std::make_integer_sequence<int, Isa::kRows>{})};

// The registers of a tile at `col` that hold some of n outputs.
inline int vectors(int64_t n, int64_t col) {
  return static_cast<int>(std::min<int64_t>(kVectors, (n - col + Isa::kLanes - 1) / Isa::kLanes));
}

// Tiles [first, last) for every row of x, Isa::kRows rows a pass (further passes find the tile in L2).
template <typename Kind>
void tiles(const typename Kind::X* x, const typename Kind::W* w, const float* bias, typename Kind::Y* y,
           int64_t m, int64_t steps, int64_t n, int64_t first, int64_t last) {
  const int64_t k = steps * Kind::kDepth;
  for (int64_t t = first; t < last; ++t) {
    const typename Kind::W* tile = w + t * steps * kTile * Kind::kDepth;
    const auto& by_rows = pass<Kind>[vectors(n, t * kTile) - 1];
    for (int64_t r = 0; r < m; r += Isa::kRows)
      by_rows[std::min<int64_t>(Isa::kRows, m - r) - 1](x + r * k, steps, tile, bias, y + r * n, n, t * kTile);
  }
}
