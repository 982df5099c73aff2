// Math policy (exp, tanh) the CPU pointwise loops pass to cells.h.
//
// libm's expf / tanhf are calls the compiler cannot vectorise (without
// -ffast-math), and they dominate a step's pointwise pass. FastFloatMath is
// plain arithmetic that `#pragma omp simd` loops vectorise: Cephes' expf
// polynomial (error ~1 ulp over the clamped range) and a rational tanh (a
// few ulp). double keeps libm: it is the precision reference. The selects
// need -fno-trapping-math (see pointwise_cpu.cpp) to be vectorised.
//
// reciprocal replaces the divisions of sigmoid and tanh: a vector division
// issues once per 10-16 cycles on one port and was half the LSTM step's
// pointwise time; three Newton steps from the bit-trick guess are six FMAs
// (relative error ~1e-7; test_float32_gate_math_is_accurate_elementwise checks
// the gates against float64 over pre-activations in [-100, 100]).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cells.h"

namespace rnnkernels {

// Always inlined into the row loops: a call left in a `#pragma omp simd` loop
// runs it one element at a time. GCC's `flatten` on the row functions (see
// pointwise_cpu.cpp) stopped inlining AccurateFloatMath::tanh once the
// extended rows grew, and the extended forward ran 1.4x slower for it.
#if defined(__GNUC__)
#define RK_MATH_INLINE __attribute__((always_inline)) inline
#else
#define RK_MATH_INLINE inline
#endif

struct FastFloatMath {
  static RK_MATH_INLINE float exp(float x) {
    // Clamped at -88, where k = -127 and 2^k's bits are 0: from e^-87.7
    // down (past the normal floats; -Inf included) the result is exactly 0,
    // as torch's e^x reaches 0 a little later, not a floor of 1.6e-38 (which
    // floored softmax weights in attention where torch's are 0). NaN passes
    // both clamps (a false comparison keeps it).
    x = x < -88.0f ? -88.0f : x;
    x = x > 88.0f ? 88.0f : x;
    // k = round(x / ln 2) by the 1.5 * 2^23 trick (no libm call, exact for |k| < 2^22)
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // x - k ln2 in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
  }

  // 1 / d for d >= 1: the guess 0x7EF311C7 - bits(d) is within 12%, and each
  // Newton step y (2 - d y) squares the error. Up to 2^126 the result stays
  // a float (denormal past 2^120, where the steps run slower but exact
  // enough: sigmoid(-85) = 1e-37 as torch has it); past 2^126 it is 0, as
  // 1/Inf is: sigmoid(-Inf) must be exactly 0, or its derivative times an
  // infinite input gives Inf where torch gives NaN. NaN stays NaN.
  static RK_MATH_INLINE float reciprocal(float d) {
    constexpr float kLargest = 8.507059e37f;  // 2^126
    const bool beyond = d > kLargest;
    d = beyond ? kLargest : d;
    int32_t bits;
    std::memcpy(&bits, &d, sizeof(bits));
    bits = 0x7EF311C7 - bits;
    float y;
    std::memcpy(&y, &bits, sizeof(y));
    y = y * (2.0f - d * y);
    y = y * (2.0f - d * y);
    // The last step adds the residual's correction to y instead of scaling y
    // by 2 - d y (which rounds to 1 - ulp for d = 1): 1 / 1 is exactly 1, so
    // sigmoid saturates at exactly 1 and its derivative reaches 0.
    y = y + y * (1.0f - d * y);
    return beyond ? 0.0f : y;
  }

  // Rational minimax tanh (Eigen's float coefficients, both polynomials
  // divided by Q's constant term so that Q >= 1 suits reciprocal()): one
  // reciprocal and 11 FMAs, where exp-based tanh needs exp, a reciprocal and
  // a second polynomial for small |x|. Relative error <= 4.5e-7 (1.8e-7 for
  // the exp form) over 4e7 points of [-20, 20] and magnitudes 1e-38 to 1e38.
  // LSTM/GRU/RNN-tanh forward vs torch.nn: +1-5% / +2-8% / +5-13% over the
  // exp form. The rational form is evaluated up to |x| = 7.905 (past it,
  // 0.99999988); from |x| = 9.0109, where tanh rounds to 1 in float, it is
  // exactly +-1, as torch's: a saturated unit's derivative 1 - tanh^2 is 0,
  // not 2.4e-7 (which let inputs near 1e30 give weight gradients of 1e24).
  // +-Inf gives +-1 and NaN stays NaN (the clamps keep it: its comparisons
  // are false).
  static RK_MATH_INLINE float tanh(float x) {
    constexpr float kRationalLimit = 7.90531110763549805f, kRoundsToOne = 9.0109f;
    const float z0 = x > kRationalLimit ? kRationalLimit : x;
    const float xc = z0 < -kRationalLimit ? -kRationalLimit : z0;
    const float z = xc * xc;
    float p = -5.641676241e-14f;
    p = p * z + 4.087417207e-11f;
    p = p * z - 1.758378918e-08f;
    p = p * z + 1.046749919e-05f;
    p = p * z + 3.036098315e-03f;
    p = p * z + 1.302255337e-01f;
    p = p * z + 9.999998719e-01f;
    float q = 2.448660933e-04f;
    q = q * z + 2.422276400e-02f;
    q = q * z + 4.635583851e-01f;
    q = q * z + 1.0f;
    const float rational = xc * p * reciprocal(q);
    const float one = x < 0.0f ? -1.0f : 1.0f;
    return (x >= kRoundsToOne || x <= -kRoundsToOne) ? one : rational;
  }

  static inline double reciprocal(double d) { return cells::StdMath::reciprocal(d); }
  static inline double exp(double x) { return cells::StdMath::exp(x); }
  static inline double tanh(double x) { return cells::StdMath::tanh(x); }
};

// FastFloatMath with a tanh whose saturated tail is as accurate as libm's:
// past |x| = 1 it is 1 - 2 / (e^2|x| + 1), whose error is the final rounding.
// What a saturated gate's derivative 1 - g^2 keeps of the truth, worst
// relative error over |g| > 0.9 (20M points of [-9, 9]): this form 0.96,
// libm 1.0, the rational form 2.9. LayerNorm keeps pre-activations at O(1),
// where gates saturate often, so the extended rows (LayerNorm, zoneout, cell
// outputs) take it; it costs twice the rational tanh (1.3 vs 0.6 ns an
// element, AVX-512), which the plain rows keep.
struct AccurateFloatMath : FastFloatMath {
  using FastFloatMath::tanh;
  static RK_MATH_INLINE float tanh(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float tail = 1.0f - 2.0f * reciprocal(exp(2.0f * ax) + 1.0f);  // exp clamps: tail is 1 past |x| = 44
    const float rational = FastFloatMath::tanh(x);
    const float signed_tail = x < 0.0f ? -tail : tail;
    return ax >= 1.0f ? signed_tail : rational;  // NaN: the comparison is false, rational keeps it
  }
};

// The policy for compute type T: libm for double (the precision reference),
// the given vectorisable one for float.
template <typename T, typename FloatMath>
struct CpuMathFor {
  using type = cells::StdMath;
};

template <typename FloatMath>
struct CpuMathFor<float, FloatMath> {
  using type = FloatMath;
};

template <typename T>
using CpuMath = typename CpuMathFor<T, FastFloatMath>::type;

template <typename T>
using CpuAccurateMath = typename CpuMathFor<T, AccurateFloatMath>::type;

}  // namespace rnnkernels
