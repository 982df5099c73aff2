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
// reciprocal(d) is only asked for d >= 1 (1 + exp(...) in sigmoid and in
// cpu/fast_math.h's tanh).
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

// The cell update alone: activations and c_new (the output h is
// o * tanh(c_new), or o * tanh(LN(c_new)) in a LayerNorm LSTM).
template <typename T, typename Math = StdMath>
RK_HOST_DEVICE T lstm_cell_forward(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev, LstmActivations<T>& act) {
  act.i = sigmoid<T, Math>(pre_i);
  act.f = sigmoid<T, Math>(pre_f);
  act.g = Math::tanh(pre_g);
  act.o = sigmoid<T, Math>(pre_o);
  return act.f * c_prev + act.i * act.g;  // c_new
}

template <typename T, typename Math = StdMath>
RK_HOST_DEVICE void lstm_forward(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev,
                                 LstmActivations<T>& act, T& c_new, T& h_new) {
  c_new = lstm_cell_forward<T, Math>(pre_i, pre_f, pre_g, pre_o, c_prev, act);
  h_new = act.o * Math::tanh(c_new);
}

// Backward of h = o * tanh(y): d_o (of o's pre-activation) and dy.
template <typename T>
RK_HOST_DEVICE void lstm_output_backward(T dh, T o, T tanh_y, T& d_o, T& dy) {
  d_o = dh * tanh_y * o * (T(1) - o);
  dy = dh * o * (T(1) - tanh_y * tanh_y);
}

// Backward of the cell update from the total gradient of c_new.
template <typename T>
RK_HOST_DEVICE void lstm_cell_backward(T dc_total, const LstmActivations<T>& act, T c_prev,
                                       T& d_i, T& d_f, T& d_g, T& dc_prev) {
  d_i = dc_total * act.g * act.i * (T(1) - act.i);
  d_f = dc_total * c_prev * act.f * (T(1) - act.f);
  d_g = dc_total * act.i * (T(1) - act.g * act.g);
  dc_prev = dc_total * act.f;
}

// dh: gradient of h_new (before any projection); dc: gradient of c_new coming
// from the next step. Writes the pre-activation gradients and d c_prev.
template <typename T, typename Math = StdMath>
RK_HOST_DEVICE void lstm_backward(T dh, T dc, const LstmActivations<T>& act, T c_prev, T c_new,
                                  T& d_i, T& d_f, T& d_g, T& d_o, T& dc_prev) {
  T dy;
  lstm_output_backward<T>(dh, act.o, Math::tanh(c_new), d_o, dy);
  lstm_cell_backward<T>(dc + dy, act, c_prev, d_i, d_f, d_g, dc_prev);
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

// ---------------------------------------------------------------- LayerNorm
// LN(v; gamma, beta) = gamma * (v - mean) * rstd + beta over one row of n
// values, rstd = 1 / sqrt(var + eps), biased variance (torch.nn.LayerNorm's).
// The row's mean and variance are a reduction each device does its own way;
// these are the per-element parts around it.

constexpr double kLayerNormEps = 1e-5;

// From the row's variance (two passes: mean, then mean of squared deviations,
// which does not cancel when the mean dwarfs the spread).
template <typename T>
RK_HOST_DEVICE T layer_norm_rstd(T variance) {
  return T(1) / ::sqrt(variance + T(kLayerNormEps));
}

// Backward through x_hat = (v - mean) * rstd, given dyg = dy * gamma per
// element and the row means of dyg and of dyg * x_hat: the gradient of v.
template <typename T>
RK_HOST_DEVICE T layer_norm_backward(T dyg, T x_hat, T rstd, T mean_dyg, T mean_dyg_x_hat) {
  return rstd * (dyg - mean_dyg - x_hat * mean_dyg_x_hat);
}

// ------------------------------------------------------------------ zoneout
// state = keep * previous + (1 - keep) * fresh: keep is a Bernoulli(p) draw
// in training and p itself in evaluation (Krueger et al. 2016).

template <typename T>
RK_HOST_DEVICE T zoneout(T keep, T previous, T fresh) {
  return keep * previous + (T(1) - keep) * fresh;
}

}  // namespace cells
}  // namespace rnnkernels
