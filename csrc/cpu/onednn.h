// oneDNN's matmul primitive behind csrc/cpu/gemm.h (built only with
// RNNKERNELS_WITH_ONEDNN; setup.py defines it when it finds oneDNN). No
// oneDNN header here, so that the rest of the extension compiles without one.
#pragma once

#ifdef RNNKERNELS_WITH_ONEDNN

#include <ATen/ATen.h>

#include <memory>
#include <string>

namespace rnnkernels {
namespace gemm {
namespace onednn {

// The dtypes the engine multiplies (float32, bfloat16; accumulation in float32).
bool takes(at::ScalarType dtype);

// "oneDNN 3.2.0 (avx512_core_amx)": the library and the instruction set its kernels use.
std::string version();

// W (k, n) reordered once into the matmul primitive's preferred (blocked)
// layout; C (m, n) = A (m, k) W [+ C] for any m <= max_m. One primitive per
// row count, made on first use: a fixed-m primitive beat oneDNN's runtime-m
// one (f32, 2 threads, GFLOP/s: (20, 650, 2600) 170 vs 130, (1, 256, 1024) 53
// vs 31), and every m reads the same layout (checked in the constructor).
class RepeatedMatmul {
 public:
  // Throws c10::Error when oneDNN has no primitive for these sizes.
  RepeatedMatmul(const at::Tensor& stored, bool transpose, int64_t max_m, bool accumulate);
  ~RepeatedMatmul();
  void multiply(const at::Tensor& out, const at::Tensor& a) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// out (m, n) = a (m, k) b (k, n) [+ out], any unit-stride-in-one-dim layouts;
// false (nothing done) when oneDNN has no primitive for them.
bool matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

}  // namespace onednn
}  // namespace gemm
}  // namespace rnnkernels

#endif  // RNNKERNELS_WITH_ONEDNN
