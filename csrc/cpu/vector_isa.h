// The x86 vector widths that the hand-written CPU kernels (cpu/panel_gemm.h,
// cpu/rows_times_weight.h) are compiled for, and whether this CPU runs them.
// Best: the widest the CPU has; the others ask for one (the tests run every
// width the CPU has, so the AVX2 code is checked on AVX-512 machines too).
#pragma once

namespace rnnkernels {
namespace cpu {

enum class VectorIsa { Best, Avx2, Avx512 };

#if defined(__x86_64__) && defined(__GNUC__)
inline bool cpu_has_avx512() { return __builtin_cpu_supports("avx512f"); }
inline bool cpu_has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
inline bool cpu_has_avx512() { return false; }
inline bool cpu_has_avx2_fma() { return false; }
#endif

// Whether this CPU runs code of `isa` (Best: of either width).
inline bool cpu_runs(VectorIsa isa) {
  switch (isa) {
    case VectorIsa::Avx512: return cpu_has_avx512();
    case VectorIsa::Avx2: return cpu_has_avx2_fma();
    case VectorIsa::Best: break;
  }
  return cpu_has_avx512() || cpu_has_avx2_fma();
}

}  // namespace cpu
}  // namespace rnnkernels
