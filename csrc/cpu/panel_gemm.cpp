#include "cpu/panel_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RNNKERNELS_PANEL_GEMM_AVX2 1
#endif

namespace rnnkernels {
namespace cpu {

#ifdef RNNKERNELS_PANEL_GEMM_AVX2
namespace {

constexpr int64_t kPanel = PanelMatrix::kPanel;
constexpr int kTileRows = 6;  // 6 rows x 2 registers = 12 accumulators of AVX2's 16
// A thread's share is at least this many multiply-adds: a fork costs a few us.
constexpr int64_t kMinMacsPerThread = 1 << 16;

#define RK_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline

// c (= or +=) rows r < ROWS of a (m, k) times PANELS adjacent panels, each
// (k, 16): ROWS x 2 PANELS accumulators, at most 12. Of the output columns
// only `cols` (counted from the first panel's) exist.
template <int ROWS, int PANELS>
RK_AVX2 void tile(int64_t k, const float* a, int64_t lda, const float* panels, float* c, int64_t ldc, int64_t cols,
                  bool accumulate) {
  static_assert(ROWS * PANELS * 2 <= 12, "12 accumulators, the B values and a broadcast fill AVX2's 16 registers");
  const int64_t panel_size = k * kPanel;
  __m256 sum[ROWS][2 * PANELS];
#pragma GCC unroll 12
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 12
    for (int v = 0; v < 2 * PANELS; ++v) sum[r][v] = _mm256_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < k; ++kk) {
    __m256 b[2 * PANELS];
#pragma GCC unroll 12
    for (int v = 0; v < 2 * PANELS; ++v) {
      b[v] = _mm256_loadu_ps(panels + (v / 2) * panel_size + kk * kPanel + (v % 2) * 8);
    }
#pragma GCC unroll 12
    for (int r = 0; r < ROWS; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + kk);
#pragma GCC unroll 12
      for (int v = 0; v < 2 * PANELS; ++v) sum[r][v] = _mm256_fmadd_ps(x, b[v], sum[r][v]);
    }
  }
  if (cols >= PANELS * kPanel) {
#pragma GCC unroll 12
    for (int r = 0; r < ROWS; ++r) {
      float* row = c + r * ldc;
#pragma GCC unroll 12
      for (int v = 0; v < 2 * PANELS; ++v) {
        if (accumulate) sum[r][v] = _mm256_add_ps(_mm256_loadu_ps(row + 8 * v), sum[r][v]);
        _mm256_storeu_ps(row + 8 * v, sum[r][v]);
      }
    }
    return;
  }
  alignas(32) float part[2 * PANELS * 8];  // the last panel: only `cols` of the columns exist
#pragma GCC unroll 12
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 12
    for (int v = 0; v < 2 * PANELS; ++v) _mm256_store_ps(part + 8 * v, sum[r][v]);
    float* row = c + r * ldc;
    for (int64_t j = 0; j < cols; ++j) row[j] = accumulate ? row[j] + part[j] : part[j];
  }
}

// The last `rows` (< 6) rows against panels [p, p + count), count <= PANELS: as wide a tile as 12 accumulators allow.
template <int ROWS, int PANELS>
RK_AVX2 void rest_rows(int64_t p, int64_t count, int64_t k, int64_t n, const float* a, int64_t lda,
                       const float* packed, float* c, int64_t ldc, bool accumulate) {
  const float* panels = packed + p * k * kPanel;
  float* c_panels = c + p * kPanel;
  const int64_t cols = n - p * kPanel;
  if (count == PANELS) return tile<ROWS, PANELS>(k, a, lda, panels, c_panels, ldc, cols, accumulate);
  for (int64_t q = 0; q < count; ++q) {
    tile<ROWS, 1>(k, a, lda, panels + q * k * kPanel, c_panels + q * kPanel, ldc, cols - q * kPanel, accumulate);
  }
}

// Panels [p0, p1) against all m rows: 6 rows x 1 panel tiles, then the last
// 1-5 rows across several panels at once (one row alone against one panel
// would be two FMA chains, latency-bound).
__attribute__((target("avx2,fma"))) void panel_range(int64_t p0, int64_t p1, int64_t m, int64_t k, int64_t n,
                                                     const float* a, int64_t lda, const float* packed, float* c,
                                                     int64_t ldc, bool accumulate) {
  const int64_t full_rows = m - m % kTileRows, rest = m % kTileRows;
  const int64_t group = rest == 1 ? 6 : rest == 2 ? 3 : rest == 3 ? 2 : 1;  // panels per remainder tile
  const float* a_rest = a + full_rows * lda;
  float* c_rest = c + full_rows * ldc;
  for (int64_t g = p0; g < p1; g += group) {
    const int64_t count = std::min(group, p1 - g);
    for (int64_t p = g; p < g + count; ++p) {
      const float* panel = packed + p * k * kPanel;
      const int64_t cols = n - p * kPanel;
      for (int64_t i = 0; i < full_rows; i += kTileRows) {
        tile<6, 1>(k, a + i * lda, lda, panel, c + i * ldc + p * kPanel, ldc, cols, accumulate);
      }
    }
    switch (rest) {
      case 5: rest_rows<5, 1>(g, count, k, n, a_rest, lda, packed, c_rest, ldc, accumulate); break;
      case 4: rest_rows<4, 1>(g, count, k, n, a_rest, lda, packed, c_rest, ldc, accumulate); break;
      case 3: rest_rows<3, 2>(g, count, k, n, a_rest, lda, packed, c_rest, ldc, accumulate); break;
      case 2: rest_rows<2, 3>(g, count, k, n, a_rest, lda, packed, c_rest, ldc, accumulate); break;
      case 1: rest_rows<1, 6>(g, count, k, n, a_rest, lda, packed, c_rest, ldc, accumulate); break;
      default: break;
    }
  }
}

}  // namespace
#endif

bool panel_gemm_runs() {
#ifdef RNNKERNELS_PANEL_GEMM_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2;
#else
  return false;
#endif
}

PanelMatrix::PanelMatrix(const float* b, int64_t ldb, bool transpose, int64_t k, int64_t n)
    : k_(k), n_(n), panels_((n + kPanel - 1) / kPanel), packed_(size_t(panels_ * k * kPanel), 0.0f) {
  at::parallel_for(0, panels_, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* panel = packed_.data() + p * k * kPanel;
      const int64_t cols = std::min(kPanel, n - p * kPanel);
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t col = p * kPanel + j;
        if (transpose) {  // B[kk][col] = W[col][kk]: one row of W per column
          const float* w_row = b + col * ldb;
          for (int64_t kk = 0; kk < k; ++kk) panel[kk * kPanel + j] = w_row[kk];
        } else {
          for (int64_t kk = 0; kk < k; ++kk) panel[kk * kPanel + j] = b[kk * ldb + col];
        }
      }
    }
  });
}

void PanelMatrix::multiply(int64_t m, const float* a, int64_t lda, float* c, int64_t ldc, bool accumulate) const {
#ifdef RNNKERNELS_PANEL_GEMM_AVX2
  if (m <= 0) return;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(1, m * k_ * kPanel));
  const float* packed = packed_.data();
  at::parallel_for(0, panels_, grain, [&](int64_t p0, int64_t p1) {
    panel_range(p0, p1, m, k_, n_, a, lda, packed, c, ldc, accumulate);
  });
#else
  (void)m, (void)a, (void)lda, (void)c, (void)ldc, (void)accumulate;
#endif
}

}  // namespace cpu
}  // namespace rnnkernels
