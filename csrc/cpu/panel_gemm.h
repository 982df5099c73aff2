// C (m, n) = A (m, k) B (k, n), or C += A B, for the recurrent loop's step
// products on CPUs with AVX2 + FMA: B packed once per call into panels of 16
// columns (panel p holds B[kk][16p .. 16p + 16) for kk = 0 .. k, zero past n),
// and a 6 x 16 register tile (12 ymm accumulators, the classic AVX2 shape)
// swept over each panel (the last 1-5 rows across 2-6 panels at once, so a
// batch-1 step still has 12 FMA chains). oneDNN 3.2 (the newest oneDNN
// wheel) ran some of these AVX2 steps at a third of the peak with its weight
// reordered once, and MKL takes its generic path on AMD. On the 2-core AMD
// EPYC (Zen 2, family 23 model 49; measured FMA peak 181 GFLOP/s), 2 threads,
// GFLOP/s, interleaved best of 5 (benchmarks/panel_gemm_bench.cpp):
//
//   (m, k, n)          oneDNN matmul   panels
//   (1, 128, 512)           34            39
//   (1, 512, 2048)          47            59
//   (8, 256, 1024)          45           116
//   (16, 128, 512)         129           154
//   (20, 200, 800)         156           153
//   (20, 650, 2600)        141           139
//   (64, 256, 1024)         61           155
//   (64, 512, 2048)         63           164
//   (256, 128, 512)        157           174
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

 private:
  int64_t k_, n_, panels_;
  std::vector<float> packed_;  // (panels, k, 16)
};

}  // namespace cpu
}  // namespace rnnkernels
