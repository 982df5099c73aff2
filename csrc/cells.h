// Per-element gate math of every recurrent cell: the ONE source of truth that
// the CPU loops (csrc/cpu/) and the CUDA kernels (csrc/cuda/) both call.
//
// Plain scalar templates, no torch headers, so nvcc compiles this alone. T is
// the compute type (float or double; bfloat16 storage is computed in float).
// Math is a policy giving exp() and tanh(): StdMath uses libm (or CUDA's device
// libm); a device may pass a faster, vectorisable policy of equal accuracy.
//
// Gate order and formulas are torch.nn's (see rnnkernels/reference.py). Each
// forward returns the activations backward needs; each backward takes them
// back instead of recomputing the nonlinearities.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define RK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RK_HOST_DEVICE inline
#endif

namespace rnnkernels {
namespace cells {

// libm on the host, CUDA's libm on the device (both overload float and double).
// reciprocal(d) is only asked for d >= 1 (1 + exp(...) in sigmoid; the
// denominator of cpu/fast_math.h's rational tanh).
struct StdMath {
  static RK_HOST_DEVICE float reciprocal(float d) { return 1.0f / d; }
  static RK_HOST_DEVICE double reciprocal(double d) { return 1.0 / d; }
  static RK_HOST_DEVICE float exp(float x) { return ::expf(x); }
  static RK_HOST_DEVICE double exp(double x) { return ::exp(x); }
  static RK_HOST_DEVICE float tanh(float x) { return ::tanhf(x); }
  static RK_HOST_DEVICE double tanh(double x) { return ::tanh(x); }
};

template <typename T, typename Math = StdMath>
RK_HOST_DEVICE T sigmoid(T x) {
  return Math::reciprocal(T(1) + Math::exp(-x));
}

// ---------------------------------------------------------------- Elman RNN
// h' = tanh(pre) or relu(pre), pre = x W_ih^T + b_ih + h W_hh^T + b_hh.
// Backward needs only h' itself.

template <typename T, typename Math = StdMath>
RK_HOST_DEVICE T rnn_tanh_forward(T pre) {
  return Math::tanh(pre);
}

template <typename T>
RK_HOST_DEVICE T rnn_tanh_backward(T dh, T h_new) {  // -> d pre
  return dh * (T(1) - h_new * h_new);
}

template <typename T>
RK_HOST_DEVICE T rnn_relu_forward(T pre) {
  return pre < T(0) ? T(0) : pre;  // NaN stays NaN, as in torch.relu
}

template <typename T>
RK_HOST_DEVICE T rnn_relu_backward(T dh, T h_new) {  // -> d pre
  return h_new <= T(0) ? T(0) : dh;  // a NaN h_new passes dh, as torch's threshold_backward does
}

// --------------------------------------------------------------------- LSTM
// Pre-activations of gates i, f, g, o (each already x W_ih^T + h W_hh^T + both
// biases). Saves the four activations; c_prev and c_new are kept by the caller.

template <typename T>
struct LstmActivations {
  T i, f, g, o;  // sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
};

template <typename T, typename Math = StdMath>
RK_HOST_DEVICE void lstm_forward(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev,
                                 LstmActivations<T>& act, T& c_new, T& h_new) {
  act.i = sigmoid<T, Math>(pre_i);
  act.f = sigmoid<T, Math>(pre_f);
  act.g = Math::tanh(pre_g);
  act.o = sigmoid<T, Math>(pre_o);
  c_new = act.f * c_prev + act.i * act.g;
  h_new = act.o * Math::tanh(c_new);
}

// dh: gradient of h_new (before any projection); dc: gradient of c_new coming
// from the next step. Writes the pre-activation gradients and d c_prev.
template <typename T, typename Math = StdMath>
RK_HOST_DEVICE void lstm_backward(T dh, T dc, const LstmActivations<T>& act, T c_prev, T c_new,
                                  T& d_i, T& d_f, T& d_g, T& d_o, T& dc_prev) {
  const T tanh_c = Math::tanh(c_new);
  const T dc_total = dc + dh * act.o * (T(1) - tanh_c * tanh_c);
  d_o = dh * tanh_c * act.o * (T(1) - act.o);
  d_i = dc_total * act.g * act.i * (T(1) - act.i);
  d_f = dc_total * c_prev * act.f * (T(1) - act.f);
  d_g = dc_total * act.i * (T(1) - act.g * act.g);
  dc_prev = dc_total * act.f;
}

// ---------------------------------------------------------------------- GRU
// gi_*: x W_ih^T + b_ih; gh_*: h W_hh^T + b_hh (gh_n must include b_hh's n part,
// since r multiplies it). Saves r, z, n and gh_n.

template <typename T>
struct GruActivations {
  T r, z, n, gh_n;
};

template <typename T, typename Math = StdMath>
RK_HOST_DEVICE T gru_forward(T gi_r, T gi_z, T gi_n, T gh_r, T gh_z, T gh_n, T h_prev,
                             GruActivations<T>& act) {
  act.r = sigmoid<T, Math>(gi_r + gh_r);
  act.z = sigmoid<T, Math>(gi_z + gh_z);
  act.n = Math::tanh(gi_n + act.r * gh_n);
  act.gh_n = gh_n;
  return (T(1) - act.z) * act.n + act.z * h_prev;  // h_new
}

// dh: gradient of h_new. The pre-activation gradients of the input side and
// the recurrent side agree on r and z; on n they are d_n and d_n * r.
// dh_prev_direct is the part of d h_prev that does not go through W_hh.
template <typename T>
RK_HOST_DEVICE void gru_backward(T dh, const GruActivations<T>& act, T h_prev,
                                 T& d_r, T& d_z, T& d_n, T& d_hn, T& dh_prev_direct) {
  d_n = dh * (T(1) - act.z) * (T(1) - act.n * act.n);
  d_z = dh * (h_prev - act.n) * act.z * (T(1) - act.z);
  d_r = d_n * act.gh_n * act.r * (T(1) - act.r);
  d_hn = d_n * act.r;
  dh_prev_direct = dh * act.z;
}

}  // namespace cells
}  // namespace rnnkernels
