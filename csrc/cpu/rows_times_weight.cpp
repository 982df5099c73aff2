#include "cpu/rows_times_weight.h"

#include <ATen/Parallel.h>

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RNNKERNELS_ROWS_TIMES_WEIGHT_AVX512 1
// GCC 12's shuffle intrinsics pass an undefined register as their unused
// mask source, which -Wmaybe-uninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace rnnkernels {
namespace cpu {

#ifdef RNNKERNELS_ROWS_TIMES_WEIGHT_AVX512
namespace {

constexpr int64_t kLanes = 16;        // floats in a 512-bit register
constexpr int64_t kBlockColumns = 16;  // outputs per row that a thread's block holds
// A thread's share is at least this many multiply-adds: a fork costs a few us.
constexpr int64_t kMinMacsPerThread = 1 << 15;

#define RK_AVX512 __attribute__((target("avx512f"), always_inline)) inline

// sums[16] -> one register whose lane L holds the sum of the lanes of
// sums[(L >> 2) + 4 (L & 3)]: four levels, each adding the halves of two
// registers (256-bit halves, 128-bit quarters, pairs, single lanes).
RK_AVX512 __m512 sum_lanes_of_16(const __m512* sums) {
  __m512 halves[8], quarters[4], pairs[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 x = sums[2 * i], y = sums[2 * i + 1];
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int i = 0; i < 4; ++i) {
    const __m512 x = halves[2 * i], y = halves[2 * i + 1];
    quarters[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {
    const __m512 x = quarters[2 * i], y = quarters[2 * i + 1];
    pairs[i] = _mm512_add_ps(_mm512_shuffle_ps(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// sums[i * COLS + j] += a_i[p, p + 16) * w_j[p, p + 16), lanes outside `valid` as 0.
template <int ROWS, int COLS>
RK_AVX512 void accumulate_lanes(__m512* sums, int64_t p, __mmask16 valid, const float* a, int64_t lda,
                                const float* w, int64_t ldw) {
  __m512 w_part[COLS];
  for (int j = 0; j < COLS; ++j) w_part[j] = _mm512_maskz_loadu_ps(valid, w + j * ldw + p);
  for (int i = 0; i < ROWS; ++i) {
    const __m512 a_part = _mm512_maskz_loadu_ps(valid, a + i * lda + p);
    for (int j = 0; j < COLS; ++j) sums[i * COLS + j] = _mm512_fmadd_ps(a_part, w_part[j], sums[i * COLS + j]);
  }
}

// c[i][j] = a_i . w_j (or c[i][j] += with `accumulate`) for ROWS rows of a and
// COLS rows of w (ROWS * COLS = 16 dot products of length k, 16 lanes along k
// at a time, the tail masked).
template <int ROWS, int COLS>
RK_AVX512 void dot_tile(int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
                        bool accumulate) {
  static_assert(ROWS * COLS == 16, "one register of sums per dot product, 16 of them");
  __m512 sums[16];
  for (auto& s : sums) s = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + kLanes <= k; p += kLanes) accumulate_lanes<ROWS, COLS>(sums, p, __mmask16(0xFFFF), a, lda, w, ldw);
  if (p < k) accumulate_lanes<ROWS, COLS>(sums, p, __mmask16((1u << (k - p)) - 1), a, lda, w, ldw);
  alignas(64) float dots[16];
  _mm512_store_ps(dots, sum_lanes_of_16(sums));
  for (int lane = 0; lane < 16; ++lane) {
    const int which = (lane >> 2) + 4 * (lane & 3);
    float& out = c[(which / COLS) * ldc + which % COLS];
    out = accumulate ? out + dots[lane] : dots[lane];
  }
}

// One dot product (the columns past the last full block).
RK_AVX512 float dot(int64_t k, const float* a, const float* w) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t p = 0; p < k; p += kLanes) {
    const __mmask16 valid = p + kLanes <= k ? __mmask16(0xFFFF) : __mmask16((1u << (k - p)) - 1);
    sum = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, a + p), _mm512_maskz_loadu_ps(valid, w + p), sum);
  }
  return _mm512_reduce_add_ps(sum);
}

// Columns [n0, n1) of c: full blocks of 16 as 4 x 4 tiles (rows in fours,
// the last 1-3 rows one at a time against all 16), then single columns.
__attribute__((target("avx512f"))) void column_range(int64_t n0, int64_t n1, int64_t m, int64_t k, const float* a,
                                                     int64_t lda, const float* w, int64_t ldw, float* c,
                                                     int64_t ldc, bool accumulate) {
  int64_t j = n0;
  for (; j + kBlockColumns <= n1; j += kBlockColumns) {
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
      for (int64_t q = 0; q < kBlockColumns; q += 4) {
        dot_tile<4, 4>(k, a + i * lda, lda, w + (j + q) * ldw, ldw, c + i * ldc + j + q, ldc, accumulate);
      }
    }
    for (; i < m; ++i) dot_tile<1, 16>(k, a + i * lda, lda, w + j * ldw, ldw, c + i * ldc + j, ldc, accumulate);
  }
  for (; j < n1; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      const float d = dot(k, a + i * lda, w + j * ldw);
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + d : d;
    }
  }
}

}  // namespace
#endif

bool rows_times_weight_runs() {
#ifdef RNNKERNELS_ROWS_TIMES_WEIGHT_AVX512
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
#else
  return false;
#endif
}

bool rows_times_weight(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
                       float* c, int64_t ldc, bool accumulate) {
#ifdef RNNKERNELS_ROWS_TIMES_WEIGHT_AVX512
  if (!rows_times_weight_runs() || !rows_times_weight_takes(m, k) || n <= 0 || k <= 0) return false;
  // Threads take whole blocks of columns; the columns past the last full block go to the last.
  const int64_t blocks = n / kBlockColumns;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / (m * k * kBlockColumns));
  at::parallel_for(0, std::max<int64_t>(blocks, 1), grain, [&](int64_t b0, int64_t b1) {
    const int64_t n1 = b1 >= blocks ? n : b1 * kBlockColumns;
    column_range(b0 * kBlockColumns, n1, m, k, a, lda, w, ldw, c, ldc, accumulate);
  });
  return true;
#else
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)w, (void)ldw, (void)c, (void)ldc, (void)accumulate;
  return false;
#endif
}

}  // namespace cpu
}  // namespace rnnkernels
