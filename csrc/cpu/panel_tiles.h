// The register tiles of the panels engine (cpu/panel_gemm.h), written once
// against a vector ISA `Isa` and compiled once per ISA: panel_gemm.cpp
// includes this file inside each ISA's namespace and `#pragma GCC target`
// region (the re-include pattern of Highway's foreach_target.h), so every
// function here is compiled for that ISA only, and the AVX2 copy has no
// AVX-512 instruction in it. Hence no include guard.
//
// `Isa` provides: Reg (one vector register), kRegsPerPanel (registers per
// 16-column panel), kAccumulators (registers a tile may sum in), kTileRows x
// kTilePanels (the main tile), kBlockPanels (panels swept together, the widest
// remainder tile), and zero / load / store / broadcast / fma / add.

// c (= or +=) rows r < ROWS of a (m, k) times PANELS adjacent panels, each
// (k, 16): ROWS x PANELS x kRegsPerPanel accumulators. Of the output columns
// only `cols` (counted from the first panel's) exist.
template <int ROWS, int PANELS>
__attribute__((always_inline)) inline void tile(int64_t k, const float* a, int64_t lda, const float* panels, float* c,
                                                int64_t ldc, int64_t cols, bool accumulate) {
  constexpr int kRegs = PANELS * Isa::kRegsPerPanel, kLanes = kPanel / Isa::kRegsPerPanel;
  static_assert(ROWS * kRegs <= Isa::kAccumulators,
                "the accumulators, the B values and a broadcast fill the registers");
  const int64_t panel_size = k * kPanel;
  typename Isa::Reg sum[ROWS][kRegs];
#pragma GCC unroll 24
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 24
    for (int v = 0; v < kRegs; ++v) sum[r][v] = Isa::zero();
  }
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < k; ++kk) {
    typename Isa::Reg b[kRegs];
#pragma GCC unroll 24
    for (int v = 0; v < kRegs; ++v) {
      const int panel = v / Isa::kRegsPerPanel, part = v % Isa::kRegsPerPanel;
      b[v] = Isa::load(panels + panel * panel_size + kk * kPanel + part * kLanes);
    }
#pragma GCC unroll 24
    for (int r = 0; r < ROWS; ++r) {
      const typename Isa::Reg x = Isa::broadcast(a + r * lda + kk);
#pragma GCC unroll 24
      for (int v = 0; v < kRegs; ++v) sum[r][v] = Isa::fma(x, b[v], sum[r][v]);
    }
  }
  if (cols >= PANELS * kPanel) {
#pragma GCC unroll 24
    for (int r = 0; r < ROWS; ++r) {
      float* row = c + r * ldc;
#pragma GCC unroll 24
      for (int v = 0; v < kRegs; ++v) {
        if (accumulate) sum[r][v] = Isa::add(Isa::load(row + kLanes * v), sum[r][v]);
        Isa::store(row + kLanes * v, sum[r][v]);
      }
    }
    return;
  }
  alignas(64) float part[kRegs * kLanes];  // the last panel: only `cols` of the columns exist
#pragma GCC unroll 24
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 24
    for (int v = 0; v < kRegs; ++v) Isa::store(part + kLanes * v, sum[r][v]);
    float* row = c + r * ldc;
    for (int64_t j = 0; j < cols; ++j) row[j] = accumulate ? row[j] + part[j] : part[j];
  }
}

// ROWS rows against `count` panels from panel p: tiles PANELS wide, then the
// rest at half the width, and so on (a tile one panel wide on a single row
// has kRegsPerPanel FMA chains only, latency-bound).
template <int ROWS, int PANELS>
__attribute__((always_inline)) inline void rows_across(int64_t p, int64_t count, int64_t k, int64_t n, const float* a,
                                                       int64_t lda, const float* packed, float* c, int64_t ldc,
                                                       bool accumulate) {
  for (; count >= PANELS; count -= PANELS, p += PANELS) {
    tile<ROWS, PANELS>(k, a, lda, packed + p * k * kPanel, c + p * kPanel, ldc, n - p * kPanel, accumulate);
  }
  if constexpr (PANELS > 1) {
    if (count > 0) rows_across<ROWS, PANELS / 2>(p, count, k, n, a, lda, packed, c, ldc, accumulate);
  }
}

// The widest tile of `rows` rows: as many panels as the accumulators hold, at most a block.
constexpr int rest_panels(int rows) {
  const int fit = Isa::kAccumulators / (rows * Isa::kRegsPerPanel);
  return fit < Isa::kBlockPanels ? fit : Isa::kBlockPanels;
}

// The last `rows` (< kTileRows) rows against `count` panels from p.
template <int ROWS = Isa::kTileRows - 1>
__attribute__((always_inline)) inline void rest_rows(int64_t rows, int64_t p, int64_t count, int64_t k, int64_t n,
                                                     const float* a, int64_t lda, const float* packed, float* c,
                                                     int64_t ldc, bool accumulate) {
  if constexpr (ROWS > 0) {
    if (rows == ROWS) return rows_across<ROWS, rest_panels(ROWS)>(p, count, k, n, a, lda, packed, c, ldc, accumulate);
    rest_rows<ROWS - 1>(rows, p, count, k, n, a, lda, packed, c, ldc, accumulate);
  }
}

// Panels [p0, p1) against all m rows, a block of panels at a time (its B
// values stay in cache between the two sweeps): the main tiles over the
// rows that fill them, then the last rows across the block.
inline void panel_range(int64_t p0, int64_t p1, int64_t m, int64_t k, int64_t n, const float* a, int64_t lda,
                        const float* packed, float* c, int64_t ldc, bool accumulate) {
  const int64_t full_rows = m - m % Isa::kTileRows, rest = m % Isa::kTileRows;
  for (int64_t p = p0; p < p1; p += Isa::kBlockPanels) {
    const int64_t count = std::min<int64_t>(Isa::kBlockPanels, p1 - p);
    for (int64_t q = p; q < p + count; q += Isa::kTilePanels) {  // one tile's panels against every row
      const int64_t width = std::min<int64_t>(Isa::kTilePanels, p + count - q);
      for (int64_t i = 0; i < full_rows; i += Isa::kTileRows) {
        rows_across<Isa::kTileRows, Isa::kTilePanels>(q, width, k, n, a + i * lda, lda, packed, c + i * ldc, ldc,
                                                      accumulate);
      }
    }
    rest_rows(rest, p, count, k, n, a + full_rows * lda, lda, packed, c + full_rows * ldc, ldc, accumulate);
  }
}
