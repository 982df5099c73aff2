// C (m, n) = A (m, k) B (k, n), or C += A B, for the recurrent loop's step
// products on CPUs with AVX2 + FMA: B packed once per call into panels of 16
// columns (panel p holds B[kk][16p .. 16p + 16) for kk = 0 .. k, zero past n),
// and a 6 x 16 register tile (12 ymm accumulators, the classic AVX2 shape)
// swept over each panel. oneDNN 3.2's f32 matmul on AVX2 (the newest oneDNN
// wheel) has no blocked-weight kernel: it re-packs B every call, and MKL takes
// its generic path on AMD. On the 2-core AMD EPYC (Zen 2, family 23 model 49;
// measured FMA peak 181 GFLOP/s), 2 threads, GFLOP/s (csrc/cpu/panel_gemm_bench.cpp):
//
//   (m, k, n)           oneDNN 3.2 matmul    this
//   see the table in panel_gemm_bench.cpp's header, filled from its run
//
// Each output is one thread's sum over k in order, so results do not depend
// on the thread count.
#pragma once

#include <cstdint>
#include <vector>

namespace rnnkernels {
namespace cpu {

// Whether this build and CPU run the kernel (x86-64, AVX2 and FMA).
bool panel_gemm_runs();

class PanelMatrix {
 public:
  static constexpr int64_t kPanel = 16;  // columns per panel: two ymm registers

  // B (k, n) given as `b` with leading dimension ldb, or, with `transpose`,
  // as its transpose: b is then W (n, k) row-major, B = W^T.
  PanelMatrix(const float* b, int64_t ldb, bool transpose, int64_t k, int64_t n);

  // c (m, n) (leading dimension ldc) = a (m, k) B (lda), or += with
  // `accumulate`; threads split the panels.
  void multiply(int64_t m, const float* a, int64_t lda, float* c, int64_t ldc, bool accumulate) const;

  int64_t k() const { return k_; }
  int64_t n() const { return n_; }

 private:
  int64_t k_, n_, panels_;
  std::vector<float> packed_;  // (panels, k, 16)
};

}  // namespace cpu
}  // namespace rnnkernels
