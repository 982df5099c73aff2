// C (m, n) = A (m, k) W^T for a few rows m and a weight W (n, k) as the layer
// stores it (row-major, each output's k inputs contiguous): the products of
// a step that runs once per call, a cell's x W_ih^T and h W_hh^T.
//
// Why not BLAS: with W as stored, MKL's sgemm copies (transposes) W into its
// kernel layout every call, which costs as much as the product when m is
// small, and the layer's remedy (prepare W once per call, gemm.h's
// StepWeight) has nothing to amortise over a single step. Here every
// output is a dot product of a row of A with a row of W, 4 x 4 of them at a
// time in AVX-512 registers (4 x 2 in AVX2 registers on CPUs without
// AVX-512), and W is read once, as it is. On the 2-core
// Xeon (family 6 model 167), 2 threads, interleaved best of 7, through the
// op torch.ops.rnnkernels.cpu_rows_times_weight against torch.mm(a, w.t())
// (benchmarks/rows_times_weight.py):
//
//   (m, k, n)          MKL sgemm      this
//   (1, 256, 1024)     9.6 us         5.8 us
//   (16, 256, 1024)    43.1 us        28.2 us
//   (16, 512, 2048)    254 us         123 us
//   (32, 256, 1024)    61.7 us        53.1 us
//   (64, 256, 1024)    91.7 us        102 us    <- MKL's copy pays: BLAS
//   (64, 512, 2048)    446 us         401 us
//   (128, 512, 2048)   726 us         766 us    <- BLAS
//
// The AVX2 version on the 2-core AMD EPYC (Zen 2, family 23 model 49), same
// benchmark: (1, 256, 1024) 34.4 -> 13.8 us, (16, 256, 1024) 114 -> 73 us,
// (32, 256, 1024) 186 -> 140 us, (16, 512, 2048) 450 -> 267 us, (64, 512,
// 2048) 1335 -> 1053 us; LSTMCell's 50-step decoder loop forward (median of
// 6 shapes, benchmarks/cells.py) 1.11x -> 1.37x torch.nn's.
//
// Each output is one thread's sum in a fixed order (16 lanes along k, then a
// fixed reduction tree), so results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "cpu/vector_isa.h"

namespace rnnkernels {
namespace cpu {

// Whether m rows of length k run here rather than on BLAS (measured as above:
// up to 32 rows, and up to 64 where k >= 512 makes each row's share longer).
constexpr bool rows_times_weight_takes(int64_t m, int64_t k) { return m >= 1 && (m <= 32 || (m <= 64 && k >= 512)); }

// Whether this build and CPU run the kernel at all (AVX-512, else AVX2 + FMA).
bool rows_times_weight_runs();

// c (m, n) = a (m, k) w (n, k)^T, or c += a w^T with `accumulate` (each
// product summed in full, then added), all row-major float32 with leading
// dimensions lda, ldw, ldc; threads split n. False (nothing written) where
// this CPU lacks `isa` (Best: has neither AVX-512 nor AVX2 + FMA), or
// rows_times_weight_takes(m, k) is false.
bool rows_times_weight(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
                       float* c, int64_t ldc, bool accumulate = false, VectorIsa isa = VectorIsa::Best);

}  // namespace cpu
}  // namespace rnnkernels
