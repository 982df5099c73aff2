// Math policy (exp, tanh) the CPU pointwise loops pass to cells.h.
//
// libm's expf / tanhf are calls the compiler cannot vectorise (without
// -ffast-math), and they dominate a step's pointwise pass. FastFloatMath is
// plain arithmetic that `#pragma omp simd` loops vectorise: Cephes' expf
// polynomial (error ~1 ulp over the clamped range) and Cephes' tanhf built
// on it. double keeps libm: it is the precision reference. The selects
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
// pointwise_cpu.cpp) stopped inlining the exp-form tanh once the
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

  // tanh as Cephes' tanhf computes it: 1 - 2 / (e^2|x| + 1) from |x| =
  // 0.625 on, whose error is the final rounding, and an odd polynomial
  // below, where that form would cancel. Relative error <= 1.4e-7 over 4e6
  // points of [-20, 20] and magnitudes 1e-38 to 1e38. Near saturation the
  // derivative 1 - tanh^2 keeps what libm's tanh keeps (worst relative error
  // over 1 < |x| < 9.0109: this form 1.0, libm 1.0; the rational minimax
  // form used before, 2.9: a saturated gate's gradient three times off gave
  // weight gradients 40x further from float64 than torch's, issue 16). It
  // costs 0.8 ns an element against the rational form's 0.44 (AVX-512, one
  // core); whole layers, min of 3 interleaved runs at 4 suite shapes on the
  // 2-core Xeon family 6 model 167: forward +0-10% (median +2.5%),
  // forward+backward median +1%. Exactly +-1 from |x| =
  // 9.0109 on (2 / (e^2|x| + 1) then rounds away; exp clamps at 88 and the
  // reciprocal of e^176 is 0): a saturated unit's derivative is 0, as
  // torch's. +-Inf gives +-1; NaN stays NaN (its comparisons are false, so
  // the polynomial keeps it).
  static RK_MATH_INLINE float tanh(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float tail = 1.0f - 2.0f * reciprocal(exp(2.0f * ax) + 1.0f);
    const float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const float small = x + x * z * p;
    const float signed_tail = x < 0.0f ? -tail : tail;
    return ax >= 0.625f ? signed_tail : small;
  }

  static inline double reciprocal(double d) { return cells::StdMath::reciprocal(d); }
  static inline double exp(double x) { return cells::StdMath::exp(x); }
  static inline double tanh(double x) { return cells::StdMath::tanh(x); }
};

// The policy for compute type T: libm for double (the precision reference),
// FastFloatMath for float.
template <typename T>
struct CpuMathFor {
  using type = cells::StdMath;
};

template <>
struct CpuMathFor<float> {
  using type = FastFloatMath;
};

template <typename T>
using CpuMath = typename CpuMathFor<T>::type;

}  // namespace rnnkernels
