// The row functions and everything they inline are compiled for AVX-512: the
// target pragma comes before cells.h, so cells.h's templates instantiated
// here carry it too; pointwise_cpu.cpp calls in only where
// vector_rows_run(). Nothing inside the pragma may be a function another
// file also instantiates (the linker could keep this file's AVX-512 copy
// for both): the standard headers come before it, the vector type and the
// math policy live in an anonymous namespace, and only cells.h's templates
// on them are used.
#include "cpu/vector_rows.h"

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNKERNELS_VECTOR_ROWS_AVX512 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#include <immintrin.h>
// GCC 12's masked intrinsics pass an undefined register as their unused
// source, which -Wmaybe-uninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cells.h"

namespace rnnkernels {
namespace cpu {

#ifdef RNNKERNELS_VECTOR_ROWS_AVX512
namespace {

// 16 floats; the operators cells.h's gate math uses.
struct Vec16 {
  __m512 v;
  Vec16() = default;
  explicit Vec16(__m512 x) : v(x) {}
  explicit Vec16(float x) : v(_mm512_set1_ps(x)) {}
};
inline Vec16 operator+(Vec16 a, Vec16 b) { return Vec16(_mm512_add_ps(a.v, b.v)); }
inline Vec16 operator-(Vec16 a, Vec16 b) { return Vec16(_mm512_sub_ps(a.v, b.v)); }
inline Vec16 operator*(Vec16 a, Vec16 b) { return Vec16(_mm512_mul_ps(a.v, b.v)); }
inline Vec16 operator-(Vec16 a) { return Vec16(_mm512_xor_ps(a.v, _mm512_set1_ps(-0.0f))); }

inline __m512 splat(float x) { return _mm512_set1_ps(x); }

// cpu/fast_math.h's FastFloatMath on 16 lanes, with the same polynomials and
// the same answers at the edges (exp clamped to [-88, 88]; reciprocal 0 past
// 2^126, so sigmoid(-Inf) is exactly 0; tanh exactly +-1 from |x| = 9.0109;
// NaN stays NaN), but 2^k by vscalefps and 1/d by vrcp14ps (relative error
// below 2^-14) and one Newton step instead of the bit tricks.
struct Avx512Math {
  static Vec16 exp(Vec16 x_in) {
    // max(c, x) and min(c, x) return x when x is NaN (the second operand).
    const __m512 x = _mm512_min_ps(splat(88.0f), _mm512_max_ps(splat(-88.0f), x_in.v));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, splat(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fmadd_ps(k, splat(2.12194440e-4f), _mm512_fnmadd_ps(k, splat(0.693359375f), x));
    __m512 p = splat(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, splat(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, splat(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, splat(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, splat(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, splat(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), splat(1.0f));
    return Vec16(_mm512_scalef_ps(p, k));
  }

  // 1 / d for d >= 1 (1 + exp(...)): y + y (1 - d y) from vrcp14ps' y.
  static Vec16 reciprocal(Vec16 d) {
    const __m512 y = _mm512_rcp14_ps(d.v);
    const __m512 refined = _mm512_fmadd_ps(y, _mm512_fnmadd_ps(d.v, y, splat(1.0f)), y);
    const __mmask16 beyond = _mm512_cmp_ps_mask(d.v, splat(8.507059e37f), _CMP_GT_OQ);  // 2^126
    return Vec16(_mm512_mask_mov_ps(refined, beyond, _mm512_setzero_ps()));
  }

  static Vec16 tanh(Vec16 x) {
    const __m512 ax = _mm512_abs_ps(x.v);
    const __m512 r = reciprocal(exp(Vec16(_mm512_add_ps(ax, ax))) + Vec16(1.0f)).v;
    const __m512 tail = _mm512_fnmadd_ps(splat(2.0f), r, splat(1.0f));
    const __m512 z = _mm512_mul_ps(x.v, x.v);
    __m512 p = splat(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, splat(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, splat(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, splat(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, splat(-3.33332819422e-1f));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(x.v, z), p, x.v);
    const __m512 signed_tail = _mm512_or_ps(tail, _mm512_and_ps(x.v, splat(-0.0f)));
    const __mmask16 large = _mm512_cmp_ps_mask(ax, splat(0.625f), _CMP_GE_OQ);  // false for NaN: small keeps it
    return Vec16(_mm512_mask_mov_ps(small, large, signed_tail));
  }
};

inline Vec16 load(const float* p, __mmask16 lanes) { return Vec16(_mm512_maskz_loadu_ps(lanes, p)); }
inline Vec16 load(const uint16_t* p, __mmask16 lanes) {
  const __m512i widened = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, p));
  return Vec16(_mm512_castsi512_ps(_mm512_slli_epi32(widened, 16)));
}
inline void store(float* p, __mmask16 lanes, Vec16 x) { _mm512_mask_storeu_ps(p, lanes, x.v); }
// Round to nearest even, NaN as 0x7FC0: pointwise_cpu.cpp's narrow(), c10's rounding.
inline void store(uint16_t* p, __mmask16 lanes, Vec16 x) {
  const __m512i bits = _mm512_castps_si512(x.v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(p, lanes, _mm512_cvtepi32_epi16(rounded));
}

// Units [j, j + 16) of the four gate blocks of a saved-activations row.
template <typename stored_t>
inline void store_gates(stored_t* saved, int64_t H, int64_t j, __mmask16 lanes, Vec16 g0, Vec16 g1, Vec16 g2,
                        Vec16 g3) {
  store(saved + j, lanes, g0);
  store(saved + H + j, lanes, g1);
  store(saved + 2 * H + j, lanes, g2);
  store(saved + 3 * H + j, lanes, g3);
}

// fn(j, lanes) for the 16-unit chunks of a row of H, the last one masked.
template <typename F>
inline void for_each_chunk(int64_t H, const F& fn) {
  for (int64_t j = 0; j < H; j += 16) fn(j, j + 16 <= H ? __mmask16(0xFFFF) : __mmask16((1u << (H - j)) - 1));
}

}  // namespace

template <typename stored_t>
void lstm_forward_row(int64_t H, const stored_t* gi, const stored_t* gh, const stored_t* b_ih, const stored_t* b_hh,
                      const stored_t* c_prev, stored_t* c_next, stored_t* h_dst, stored_t* out_dst, stored_t* saved) {
  for_each_chunk(H, [&](int64_t j, __mmask16 lanes) {
    auto pre = [&](int64_t k) {
      if (gh == nullptr) return load(gi + k, lanes) + load(b_ih + k, lanes) + load(b_hh + k, lanes);
      return load(gi + k, lanes) + load(b_ih + k, lanes) + load(gh + k, lanes) + load(b_hh + k, lanes);
    };
    cells::LstmActivations<Vec16> act;
    Vec16 c, h;
    cells::lstm_forward<Vec16, Avx512Math>(pre(j), pre(H + j), pre(2 * H + j), pre(3 * H + j), load(c_prev + j, lanes),
                                           act, c, h);
    store(c_next + j, lanes, c);
    store(h_dst + j, lanes, h);
    store(out_dst + j, lanes, h);
    if (saved != nullptr) store_gates(saved, H, j, lanes, act.i, act.f, act.g, act.o);
  });
}

template <typename stored_t>
void gru_forward_row(int64_t H, const stored_t* gi, const stored_t* gh, const stored_t* b_ih, const stored_t* b_hh,
                     const stored_t* h_prev, stored_t* h_dst, stored_t* out_dst, stored_t* saved) {
  for_each_chunk(H, [&](int64_t j, __mmask16 lanes) {
    auto in = [&](int64_t k) { return load(gi + k, lanes) + load(b_ih + k, lanes); };
    auto rec = [&](int64_t k) { return load(gh + k, lanes) + load(b_hh + k, lanes); };
    cells::GruActivations<Vec16> act;
    const Vec16 h = cells::gru_forward<Vec16, Avx512Math>(in(j), in(H + j), in(2 * H + j), rec(j), rec(H + j),
                                                          rec(2 * H + j), load(h_prev + j, lanes), act);
    store(h_dst + j, lanes, h);
    store(out_dst + j, lanes, h);
    if (saved != nullptr) store_gates(saved, H, j, lanes, act.r, act.z, act.n, act.gh_n);
  });
}

#pragma GCC pop_options

namespace {
std::atomic<bool> vector_rows_enabled{std::getenv("RNNKERNELS_CPU_VECTOR_ROWS") == nullptr ||
                                      std::getenv("RNNKERNELS_CPU_VECTOR_ROWS")[0] != '0'};
}  // namespace

bool vector_rows_run() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return supported && vector_rows_enabled.load(std::memory_order_relaxed);
}

void set_vector_rows(bool on) { vector_rows_enabled.store(on, std::memory_order_relaxed); }

#else  // no AVX-512 code in this build: the scalar rows run

bool vector_rows_run() { return false; }
void set_vector_rows(bool) {}

template <typename stored_t>
void lstm_forward_row(int64_t, const stored_t*, const stored_t*, const stored_t*, const stored_t*, const stored_t*,
                      stored_t*, stored_t*, stored_t*, stored_t*) {}
template <typename stored_t>
void gru_forward_row(int64_t, const stored_t*, const stored_t*, const stored_t*, const stored_t*, const stored_t*,
                     stored_t*, stored_t*, stored_t*) {}

#endif

// (The AVX-512 ones keep the target of their template's definition.)
template void lstm_forward_row<float>(int64_t, const float*, const float*, const float*, const float*, const float*,
                                      float*, float*, float*, float*);
template void lstm_forward_row<uint16_t>(int64_t, const uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*,
                                         const uint16_t*, uint16_t*, uint16_t*, uint16_t*, uint16_t*);
template void gru_forward_row<float>(int64_t, const float*, const float*, const float*, const float*, const float*,
                                     float*, float*, float*);
template void gru_forward_row<uint16_t>(int64_t, const uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*,
                                        const uint16_t*, uint16_t*, uint16_t*, uint16_t*);

}  // namespace cpu
}  // namespace rnnkernels
