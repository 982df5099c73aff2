// The machine's measured float32 FMA peak, the denominator of every "fraction
// of peak" the benchmarks print: independent FMA chains at the widest vector
// the CPU has (AVX-512, else AVX2), on `threads` OpenMP threads.
//
// The chains must cover 2 FMA ports x 4-5 cycles of latency and, with the
// multiplier and addend, fit in the register file: 16 zmm chains of the 32
// AVX-512 registers, 12 ymm chains of AVX2's 16 (16 spilled and measured 75% of
// the peak on an AMD EPYC Zen 2). A loop over an array of accumulators spilled
// them to memory and measured a third of the peak.
#include "cpu/vector_isa.h"

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace rnnkernels {
namespace {

constexpr int kChains512 = 16;
constexpr int kChains256 = 12;

#if defined(__x86_64__) && defined(__GNUC__)
// The template is only ever inlined into the target("avx512f" / "avx2")
// functions below, so the baseline ABI of its vector arguments never applies.
#pragma GCC diagnostic ignored "-Wpsabi"
template <int Chains, typename Vec, Vec (*Set1)(float), Vec (*Fma)(Vec, Vec, Vec)>
__attribute__((always_inline)) inline float fma_chains(int64_t iterations) {
  const Vec m = Set1(0.999999f), b = Set1(1e-7f);
  Vec a[Chains];
#pragma GCC unroll 16
  for (int c = 0; c < Chains; ++c) a[c] = Set1(float(c));
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < Chains; ++c) a[c] = Fma(a[c], m, b);
  }
  Vec sum = a[0];
#pragma GCC unroll 16
  for (int c = 1; c < Chains; ++c) sum = sum + a[c];
  float out[sizeof(Vec) / sizeof(float)];
  std::memcpy(out, &sum, sizeof(out));
  return out[0];
}

__attribute__((target("avx512f"))) __m512 set1_512(float v) { return _mm512_set1_ps(v); }
__attribute__((target("avx512f"))) __m512 fma_512(__m512 a, __m512 m, __m512 b) { return _mm512_fmadd_ps(a, m, b); }
__attribute__((target("avx2,fma"))) __m256 set1_256(float v) { return _mm256_set1_ps(v); }
__attribute__((target("avx2,fma"))) __m256 fma_256(__m256 a, __m256 m, __m256 b) { return _mm256_fmadd_ps(a, m, b); }

__attribute__((target("avx512f"), flatten)) float chains_512(int64_t n) {
  return fma_chains<kChains512, __m512, set1_512, fma_512>(n);
}
__attribute__((target("avx2,fma"), flatten)) float chains_256(int64_t n) {
  return fma_chains<kChains256, __m256, set1_256, fma_256>(n);
}
#endif

// Float32 FLOPs of one iteration at this CPU's widest FMA, and the loop; 0 without one.
int64_t flops_per_iteration() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu::cpu_has_avx512()) return kChains512 * 16 * 2;
  if (cpu::cpu_has_avx2_fma()) return kChains256 * 8 * 2;
#endif
  return 0;
}

float run_chains(int64_t iterations) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu::cpu_has_avx512()) return chains_512(iterations);
  if (cpu::cpu_has_avx2_fma()) return chains_256(iterations);
#endif
  (void)iterations;
  return 0;
}

// GFLOP/s on `threads` threads (0: torch's count), best of 3 runs of ~50 ms.
double fma_peak_gflops(int64_t threads) {
  const int64_t flops = flops_per_iteration();
  TORCH_CHECK(flops > 0, "rnnkernels: fma_peak_gflops needs an x86-64 CPU with AVX2+FMA or AVX-512");
  const int team = threads > 0 ? int(threads) : at::get_num_threads();
  const int64_t iterations = 5000000;
  double best = 1e30;
  for (int run = 0; run < 3; ++run) {
    const auto start = std::chrono::steady_clock::now();
    float sink = 0;
#pragma omp parallel num_threads(team) reduction(+ : sink)
    sink += run_chains(iterations);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::min(best, seconds + (sink == 1.2345f ? 1e-9 : 0.0));  // sink keeps the loop alive
  }
  return double(team) * iterations * flops / best / 1e9;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkernels, m) {
  m.def("fma_peak_gflops(int threads=0) -> float");
}

TORCH_LIBRARY_IMPL(rnnkernels, CompositeExplicitAutograd, m) {
  m.impl("fma_peak_gflops", &fma_peak_gflops);
}

}  // namespace rnnkernels
