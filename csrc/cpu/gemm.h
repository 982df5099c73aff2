// The GEMMs of the recurrent loop (csrc/rnn_layer.cpp) on the CPU, on one of
// three engines:
//
//   onednn  oneDNN's matmul primitive (csrc/cpu/onednn.cpp). It picks its
//           kernels by instruction set (AVX-512, AMX for bfloat16), not by
//           vendor: on a 2-core AMD EPYC (Zen 5) it ran the step GEMMs 3-4x
//           faster than MKL, whose kernel there is 256-bit (DESIGN.md).
//   blas    the BLAS inside libtorch_cpu (MKL: sgemm, the packed sgemm for
//           the repeated step products; csrc/cpu/blas.h), else ATen.
//   panels  float32 step weights packed once per call into 16-column panels
//           and multiplied by AVX-512 or AVX2 + FMA register tiles
//           (cpu/panel_gemm.h): on an AVX2-only CPU oneDNN 3.2 re-packs the
//           weight every step, and on the Zen 4 the AVX-512 tiles matched
//           (within 1%) or beat oneDNN's reordered matmul at every step shape.
//
// Which one runs the step products is chosen once per process by measuring
// all on step-shaped products (gemm.cpp), never from the vendor string; the
// products over all steps (matmul below) take oneDNN or BLAS per shape,
// timed at the shape's first call. RNNKERNELS_CPU_GEMM=
// onednn|blas|panels pins it, and a build without oneDNN has no onednn.
// Non-CPU tensors (the same loop runs on CUDA) and dtypes an engine does not
// take (float64 on oneDNN) go to BLAS or ATen: every call is answered.
// Under any engine, a float32 product of a few rows with a weight as the
// layer stores it and used once (a cell's step, a layer of T < 4) runs on
// cpu/rows_times_weight.h, which needs no per-call copy of the weight.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

namespace rnnkernels {
namespace gemm {

enum class GemmEngine { OneDnn = 0, Blas = 1, Panels = 2 };

// The engine in use (measured at the first call unless pinned).
GemmEngine gemm_engine();
// The engine and how it was chosen, e.g. "panels, AVX2 tiles (measured on
// float32 steps, GFLOP/s: onednn 50, blas 45, panels 77); float32 products
// over all steps: onednn or blas per shape, timed at its first call; ...".
std::string gemm_engine_info();
// "auto" (measure again), "onednn", "blas" or "panels"; an unavailable one is an error.
void set_gemm_engine(const std::string& name);
// Whether this build links oneDNN.
bool onednn_built();

// A weight W (k, n), the right operand of T products C (m, n) = A (m, k) W
// (or C += A W with `accumulate`) with m <= max_m: the per-step GEMMs. Laid
// out once per call in the engine's kernel layout (oneDNN's blocked format or
// MKL's packed buffer), so that the T products do not re-pack it each step.
// `stored` is W as the layer keeps it: (k, n), or (n, k) with `transpose`.
class StepWeight {
 public:
  // `uses`: how many products it serves (T); a few are run on W as stored.
  StepWeight(const at::Tensor& stored, bool transpose, int64_t max_m, bool accumulate, int64_t uses);
  ~StepWeight();
  StepWeight(const StepWeight&) = delete;
  StepWeight& operator=(const StepWeight&) = delete;

  // out (m, n) = a (m, k) W, or += with `accumulate`; a and out row-major
  // 2-D (unit column stride), m <= max_m.
  void multiply(const at::Tensor& out, const at::Tensor& a) const;

  struct Prepared;  // the engine's copy of W

 private:
  at::Tensor matrix_;  // (k, n), row-major or a transposed view, when no engine prepared a copy
  std::unique_ptr<Prepared> prepared_;
  bool accumulate_;
};

// out (m, n) = a (m, k) b (k, n), or out += a b: the products over all steps
// (input projection, input and weight gradients). a and b may be transposed
// views.
void matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate = false);

// While alive, this thread's OpenMP and MKL thread counts are 1 (when
// `active`): for step GEMMs too small to split (with two threads a batch-1
// LSTM step's (1, 128) x (128, 512) product got slower). Both counts are
// restored on destruction, whatever happens in between.
class SingleThreaded {
 public:
  explicit SingleThreaded(bool active);
  ~SingleThreaded();
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  bool active_;
  int omp_threads_ = 0, mkl_threads_ = 0;
};

}  // namespace gemm
}  // namespace rnnkernels
