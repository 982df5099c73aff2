// C (m, n) = A (m, k) B (k, n), or C += A B, for the recurrent loop's step
// products: B packed once per call into panels of 16 columns (panel p holds
// B[kk][16p .. 16p + 16) for kk = 0 .. k, zero past n), and register tiles
// swept over them (cpu/panel_tiles.h, compiled once per ISA):
//
//   AVX2 + FMA   6 rows x 1 panel (12 ymm accumulators, the classic shape)
//   AVX-512      8 rows x 3 panels (24 zmm accumulators of 32)
//
// and the last rows across as many panels as the accumulators hold (a
// batch-1 step still has 6-12 FMA chains). oneDNN 3.2 (the newest oneDNN
// wheel) ran some AVX2 steps at a third of the peak with its weight
// reordered once, and MKL takes its generic path on AMD. GFLOP/s, 2 threads,
// interleaved best of 5 (benchmarks/panel_gemm_bench.cpp), on the 2-core
// AMD EPYC Zen 2 (family 23 model 49, AVX2; measured FMA peak 181 GFLOP/s)
// and the 2-core AMD EPYC Zen 4 (family 25 model 17, AVX-512; oneDNN reached
// 228 GFLOP/s, its measured FMA peak):
//
//                      Zen 2                 Zen 4
//   (m, k, n)          oneDNN  panels AVX2   oneDNN  panels AVX2  AVX-512
//   (1, 128, 512)        34      39            23      50          48
//   (1, 512, 2048)       47      59            62      70          70
//   (8, 256, 1024)       45     116           167     138         188
//   (16, 128, 512)      129     154           145     150         151
//   (20, 200, 800)      156     153           173     138         172
//   (20, 650, 2600)     141     139           191     158         205
//   (64, 256, 1024)      61     155           205     187         207
//   (64, 512, 2048)      63     164           214     182         212
//   (256, 128, 512)     157     174           193     185         194
//   (9, 90, 360)          -       -            83      82         105
//
// Each output is one thread's sum over k in order, so results do not depend
// on the thread count.
#pragma once

#include <cstdint>
#include <memory>

#include "cpu/vector_isa.h"

namespace rnnkernels {
namespace cpu {

// Whether this build and CPU run the kernel on `isa` (x86-64; AVX2 and FMA, or AVX-512).
bool panel_gemm_runs(VectorIsa isa = VectorIsa::Best);
// The tiles that VectorIsa::Best runs: "AVX-512", "AVX2" or "no" (for the engine report).
const char* panel_isa_name();

class PanelMatrix {
 public:
  static constexpr int64_t kPanel = 16;  // columns per panel: two ymm registers

  // B (k, n) given as `b` with leading dimension ldb, or, with `transpose`,
  // as its transpose: b is then W (n, k) row-major, B = W^T.
  PanelMatrix(const float* b, int64_t ldb, bool transpose, int64_t k, int64_t n, VectorIsa isa = VectorIsa::Best);

  // c (m, n) (leading dimension ldc) = a (m, k) B (lda), or += with
  // `accumulate`; threads split the panels.
  void multiply(int64_t m, const float* a, int64_t lda, float* c, int64_t ldc, bool accumulate) const;

 private:
  int64_t k_, n_, panels_;
  VectorIsa isa_;
  std::unique_ptr<float[]> packed_;  // (panels, k, 16); filled by the constructor's threads, not zeroed first
};

}  // namespace cpu
}  // namespace rnnkernels
