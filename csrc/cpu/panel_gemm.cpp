#include "cpu/panel_gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

// The tiles are compiled per ISA under `#pragma GCC target`, which clang
// does not honour for intrinsics: a clang build has no panels (the other
// engines answer).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define RNNKERNELS_PANEL_GEMM_X86 1
#endif

namespace rnnkernels {
namespace cpu {

#ifdef RNNKERNELS_PANEL_GEMM_X86
namespace {

constexpr int64_t kPanel = PanelMatrix::kPanel;
// A thread's share is at least this many multiply-adds: a fork costs a few us.
constexpr int64_t kMinMacsPerThread = 1 << 16;

#define RK_VECTOR_OP static __attribute__((always_inline)) inline

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
// 6 rows x 1 panel (2 registers) = 12 accumulators of the 16 ymm registers: the classic AVX2 shape.
struct Isa {
  using Reg = __m256;
  static constexpr int kRegsPerPanel = 2, kAccumulators = 12, kTileRows = 6, kTilePanels = 1, kBlockPanels = 6;
  RK_VECTOR_OP Reg zero() { return _mm256_setzero_ps(); }
  RK_VECTOR_OP Reg load(const float* p) { return _mm256_loadu_ps(p); }
  RK_VECTOR_OP void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  RK_VECTOR_OP Reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  RK_VECTOR_OP Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  RK_VECTOR_OP Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
};
#include "cpu/panel_tiles.h"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
// 8 rows x 3 panels (1 register each) = 24 accumulators of the 32 zmm
// registers: a batch of 8 (or 16, 64, ...) is whole tiles, 11 loads per 24
// FMAs. Blocks of 6 panels: with 12, a batch-1 step streaming 12 panels at
// once ran at 34 GFLOP/s against 52 (1 thread, Zen 4).
struct Isa {
  using Reg = __m512;
  static constexpr int kRegsPerPanel = 1, kAccumulators = 24, kTileRows = 8, kTilePanels = 3, kBlockPanels = 6;
  RK_VECTOR_OP Reg zero() { return _mm512_setzero_ps(); }
  RK_VECTOR_OP Reg load(const float* p) { return _mm512_loadu_ps(p); }
  RK_VECTOR_OP void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  RK_VECTOR_OP Reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  RK_VECTOR_OP Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  RK_VECTOR_OP Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
};
#include "cpu/panel_tiles.h"
}  // namespace avx512
#pragma GCC pop_options

using PanelRange = void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, const float*, float*,
                            int64_t, bool);

PanelRange panel_range_for(VectorIsa isa) {
  switch (isa) {
    case VectorIsa::Avx512: return cpu_has_avx512() ? &avx512::panel_range : nullptr;
    case VectorIsa::Avx2: return cpu_has_avx2_fma() ? &avx2::panel_range : nullptr;
    case VectorIsa::Best: break;
  }
  // RNNKERNELS_CPU_PANELS_ISA=avx2 runs the AVX2 tiles on an AVX-512 CPU (benchmarks compare the two).
  static const bool avx2_asked = [] {
    const char* asked = std::getenv("RNNKERNELS_CPU_PANELS_ISA");
    return asked != nullptr && std::strcmp(asked, "avx2") == 0;
  }();
  if (cpu_has_avx512() && !avx2_asked) return &avx512::panel_range;
  return cpu_has_avx2_fma() ? &avx2::panel_range : nullptr;
}

}  // namespace
#endif

bool panel_gemm_runs(VectorIsa isa) {
#ifdef RNNKERNELS_PANEL_GEMM_X86
  return panel_range_for(isa) != nullptr;
#else
  (void)isa;
  return false;
#endif
}

const char* panel_isa_name() {
#ifdef RNNKERNELS_PANEL_GEMM_X86
  const PanelRange best = panel_range_for(VectorIsa::Best);
  return best == &avx512::panel_range ? "AVX-512" : best == &avx2::panel_range ? "AVX2" : "no";
#else
  return "no";
#endif
}

PanelMatrix::PanelMatrix(const float* b, int64_t ldb, bool transpose, int64_t k, int64_t n, VectorIsa isa)
    : k_(k), n_(n), panels_((n + kPanel - 1) / kPanel), isa_(isa),
      packed_(new float[size_t(panels_ * k * kPanel)]) {
  TORCH_CHECK(panel_gemm_runs(isa), "rnnkernels: the panels GEMM does not run on this CPU with the ISA asked for");
  at::parallel_for(0, panels_, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* panel = packed_.get() + p * k * kPanel;
      const int64_t cols = std::min(kPanel, n - p * kPanel);
      if (transpose) {  // B[kk][col] = W[col][kk]: the panel's 16 rows of W, 64 values of k at a time
        // (a whole row at a time wrote each of the panel's lines 16 times over, past L1 at k = 650:
        // 3.5% of a 1-thread LSTM forward at (35, 20, 650, 650))
        constexpr int64_t kSpan = 64;
        for (int64_t k0 = 0; k0 < k; k0 += kSpan) {
          const int64_t k1 = std::min(k, k0 + kSpan);
          for (int64_t j = 0; j < cols; ++j) {
            const float* w_row = b + (p * kPanel + j) * ldb;
            for (int64_t kk = k0; kk < k1; ++kk) panel[kk * kPanel + j] = w_row[kk];
          }
        }
      } else {  // a panel's row kk is `cols` adjacent values of B's row kk (a column at a time: 2% of an LSTM fwd+bwd)
        for (int64_t kk = 0; kk < k; ++kk) {
          std::memcpy(panel + kk * kPanel, b + kk * ldb + p * kPanel, cols * sizeof(float));
        }
      }
      for (int64_t kk = 0; cols < kPanel && kk < k; ++kk) {  // zero past n
        std::fill(panel + kk * kPanel + cols, panel + (kk + 1) * kPanel, 0.0f);
      }
    }
  });
}

void PanelMatrix::multiply(int64_t m, const float* a, int64_t lda, float* c, int64_t ldc, bool accumulate) const {
#ifdef RNNKERNELS_PANEL_GEMM_X86
  if (m <= 0) return;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(1, m * k_ * kPanel));
  const float* packed = packed_.get();
  const PanelRange panel_range = panel_range_for(isa_);
  at::parallel_for(0, panels_, grain, [&](int64_t p0, int64_t p1) {
    panel_range(p0, p1, m, k_, n_, a, lda, packed, c, ldc, accumulate);
  });
#else
  (void)m, (void)a, (void)lda, (void)c, (void)ldc, (void)accumulate;
#endif
}

}  // namespace cpu
}  // namespace rnnkernels
