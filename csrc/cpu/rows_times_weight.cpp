#include "cpu/rows_times_weight.h"

#include <ATen/Parallel.h>

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RNNKERNELS_ROWS_TIMES_WEIGHT_X86 1
// GCC 12's shuffle intrinsics pass an undefined register as their unused
// mask source, which -Wmaybe-uninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace rnnkernels {
namespace cpu {

#ifdef RNNKERNELS_ROWS_TIMES_WEIGHT_X86
namespace {

// Columns [n0, n1) of c on one vector width's `Tiles`: full blocks of
// Tiles::kBlock columns as 4-row tiles of Tiles::kFourRowColumns columns (the
// last 1-3 rows one at a time against the whole block), then single columns.
// Each width's target function below inlines it and its Tiles (flatten): the
// members carry that width's target, so they cannot be always_inline here.
template <class Tiles>
__attribute__((always_inline)) inline void column_range_on(int64_t n0, int64_t n1, int64_t m, int64_t k,
                                                           const float* a, int64_t lda, const float* w, int64_t ldw,
                                                           float* c, int64_t ldc, bool accumulate) {
  int64_t j = n0;
  for (; j + Tiles::kBlock <= n1; j += Tiles::kBlock) {
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
      for (int64_t q = 0; q < Tiles::kBlock; q += Tiles::kFourRowColumns) {
        Tiles::four_rows(k, a + i * lda, lda, w + (j + q) * ldw, ldw, c + i * ldc + j + q, ldc, accumulate);
      }
    }
    for (; i < m; ++i) Tiles::one_row(k, a + i * lda, lda, w + j * ldw, ldw, c + i * ldc + j, ldc, accumulate);
  }
  for (; j < n1; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      const float d = Tiles::one(k, a + i * lda, w + j * ldw);
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + d : d;
    }
  }
}

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

// Blocks of 16 columns as 4 x 4 tiles.
struct Avx512Tiles {
  static constexpr int64_t kBlock = kBlockColumns, kFourRowColumns = 4;
  __attribute__((target("avx512f"))) static void four_rows(int64_t k, const float* a, int64_t lda, const float* w,
                                                            int64_t ldw, float* c, int64_t ldc, bool accumulate) {
    dot_tile<4, 4>(k, a, lda, w, ldw, c, ldc, accumulate);
  }
  __attribute__((target("avx512f"))) static void one_row(int64_t k, const float* a, int64_t lda, const float* w,
                                                          int64_t ldw, float* c, int64_t ldc, bool accumulate) {
    dot_tile<1, 16>(k, a, lda, w, ldw, c, ldc, accumulate);
  }
  __attribute__((target("avx512f"))) static float one(int64_t k, const float* a, const float* w) {
    return dot(k, a, w);
  }
};

__attribute__((target("avx512f"), flatten)) void column_range(int64_t n0, int64_t n1, int64_t m, int64_t k,
                                                              const float* a, int64_t lda, const float* w,
                                                              int64_t ldw, float* c, int64_t ldc, bool accumulate) {
  column_range_on<Avx512Tiles>(n0, n1, m, k, a, lda, w, ldw, c, ldc, accumulate);
}

// ---- the same on AVX2 + FMA (8 lanes; AMD Zen 2 and other CPUs without AVX-512)
namespace avx2 {

constexpr int64_t kLanes = 8;
constexpr int64_t kBlockColumns = 8;

#define RK_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline

// sums[8] -> one register whose lane L holds the sum of the lanes of sums[L].
RK_AVX2 __m256 sum_lanes_of_8(const __m256* sums) {
  const __m256 pairs01 = _mm256_hadd_ps(sums[0], sums[1]), pairs23 = _mm256_hadd_ps(sums[2], sums[3]);
  const __m256 pairs45 = _mm256_hadd_ps(sums[4], sums[5]), pairs67 = _mm256_hadd_ps(sums[6], sums[7]);
  // quads0123's lane j (j < 4) holds the sum of sums[j]'s low four lanes, lane 4 + j of its high four;
  // quads4567 the same for sums[4 + j]. Lining up the halves and adding them completes each sum.
  const __m256 quads0123 = _mm256_hadd_ps(pairs01, pairs23), quads4567 = _mm256_hadd_ps(pairs45, pairs67);
  return _mm256_add_ps(_mm256_permute2f128_ps(quads0123, quads4567, 0x20),
                       _mm256_permute2f128_ps(quads0123, quads4567, 0x31));
}

// Lanes [0, valid) on, for the k tail.
RK_AVX2 __m256i first_lanes(int64_t valid) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(valid)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <int ROWS, int COLS, bool TAIL>
RK_AVX2 void accumulate_lanes(__m256* sums, int64_t p, __m256i valid, const float* a, int64_t lda, const float* w,
                              int64_t ldw) {
  __m256 w_part[COLS];
  for (int j = 0; j < COLS; ++j) {
    w_part[j] = TAIL ? _mm256_maskload_ps(w + j * ldw + p, valid) : _mm256_loadu_ps(w + j * ldw + p);
  }
  for (int i = 0; i < ROWS; ++i) {
    const __m256 a_part = TAIL ? _mm256_maskload_ps(a + i * lda + p, valid) : _mm256_loadu_ps(a + i * lda + p);
    for (int j = 0; j < COLS; ++j) sums[i * COLS + j] = _mm256_fmadd_ps(a_part, w_part[j], sums[i * COLS + j]);
  }
}

// c[i][j] = a_i . w_j (or +=) for ROWS x COLS = 8 dot products of length k.
template <int ROWS, int COLS>
RK_AVX2 void dot_tile(int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
                      bool accumulate) {
  static_assert(ROWS * COLS == 8, "one register of sums per dot product, 8 of them");
  __m256 sums[8];
  for (auto& s : sums) s = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + kLanes <= k; p += kLanes) accumulate_lanes<ROWS, COLS, false>(sums, p, __m256i(), a, lda, w, ldw);
  if (p < k) accumulate_lanes<ROWS, COLS, true>(sums, p, first_lanes(k - p), a, lda, w, ldw);
  alignas(32) float dots[8];
  _mm256_store_ps(dots, sum_lanes_of_8(sums));
  for (int which = 0; which < 8; ++which) {
    float& out = c[(which / COLS) * ldc + which % COLS];
    out = accumulate ? out + dots[which] : dots[which];
  }
}

RK_AVX2 float dot(int64_t k, const float* a, const float* w) {
  __m256 sum = _mm256_setzero_ps();
  for (int64_t p = 0; p < k; p += kLanes) {
    const __m256i valid = first_lanes(k - p);
    sum = _mm256_fmadd_ps(_mm256_maskload_ps(a + p, valid), _mm256_maskload_ps(w + p, valid), sum);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}

// Blocks of 8 columns as 4 x 2 tiles.
struct Tiles {
  static constexpr int64_t kBlock = kBlockColumns, kFourRowColumns = 2;
  __attribute__((target("avx2,fma"))) static void four_rows(int64_t k, const float* a, int64_t lda, const float* w,
                                                            int64_t ldw, float* c, int64_t ldc, bool accumulate) {
    dot_tile<4, 2>(k, a, lda, w, ldw, c, ldc, accumulate);
  }
  __attribute__((target("avx2,fma"))) static void one_row(int64_t k, const float* a, int64_t lda, const float* w,
                                                          int64_t ldw, float* c, int64_t ldc, bool accumulate) {
    dot_tile<1, 8>(k, a, lda, w, ldw, c, ldc, accumulate);
  }
  __attribute__((target("avx2,fma"))) static float one(int64_t k, const float* a, const float* w) {
    return dot(k, a, w);
  }
};

__attribute__((target("avx2,fma"), flatten)) void column_range(int64_t n0, int64_t n1, int64_t m, int64_t k,
                                                               const float* a, int64_t lda, const float* w,
                                                               int64_t ldw, float* c, int64_t ldc, bool accumulate) {
  column_range_on<Tiles>(n0, n1, m, k, a, lda, w, ldw, c, ldc, accumulate);
}

}  // namespace avx2

}  // namespace
#endif

bool rows_times_weight_runs() {
#ifdef RNNKERNELS_ROWS_TIMES_WEIGHT_X86
  return cpu_runs(VectorIsa::Best);
#else
  return false;
#endif
}

bool rows_times_weight(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
                       float* c, int64_t ldc, bool accumulate, VectorIsa isa) {
#ifdef RNNKERNELS_ROWS_TIMES_WEIGHT_X86
  if (!cpu_runs(isa) || !rows_times_weight_takes(m, k) || n <= 0 || k <= 0) return false;
  // Threads take whole blocks of columns; the columns past the last full block go to the last.
  const bool wide = isa == VectorIsa::Avx512 || (isa == VectorIsa::Best && cpu_has_avx512());
  const int64_t block = wide ? kBlockColumns : avx2::kBlockColumns;
  const int64_t blocks = n / block;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / (m * k * block));
  at::parallel_for(0, std::max<int64_t>(blocks, 1), grain, [&](int64_t b0, int64_t b1) {
    const int64_t n1 = b1 >= blocks ? n : b1 * block;
    if (wide) column_range(b0 * block, n1, m, k, a, lda, w, ldw, c, ldc, accumulate);
    else avx2::column_range(b0 * block, n1, m, k, a, lda, w, ldw, c, ldc, accumulate);
  });
  return true;
#else
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)w, (void)ldw, (void)c, (void)ldc, (void)accumulate, (void)isa;
  return false;
#endif
}

}  // namespace cpu
}  // namespace rnnkernels
