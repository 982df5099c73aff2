// CPU implementation of the fused pointwise pass of one time step (see
// csrc/pointwise.h): rows of the batch are split over threads with
// at::parallel_for; each row applies the cells.h gate math to its H units.

// Lets GCC if-convert (and so vectorise) FastFloatMath's selects, whose arms
// hold divisions it would otherwise refuse to run speculatively; nothing here
// relies on floating-point exceptions.
#pragma GCC optimize("no-trapping-math")
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cells.h"
#include "cpu/fast_math.h"
#include "cpu/vector_rows.h"
#include "pointwise.h"

namespace rnnkernels {
namespace {

// float and bfloat16 rows are compiled for AVX-512, AVX2+FMA and baseline x86-64, picked at
// load time (GCC function multiversioning): the wheel stays portable and the
// vectorised gate math runs at the machine's vector width. `flatten` inlines
// the gate math into each clone: past GCC's inlining budget (the bfloat16
// rows) a call left in the loop kept it scalar.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#define RK_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define RK_CPU_CLONES
#define RK_ALWAYS_INLINE inline
#endif

// Below this many elements a step runs on one thread: forking costs more.
// On the quiet 2-core box, 2048 beat 16384 and 512 (fwd+bwd vs torch.nn,
// GRU (35, 20, 200, 200): 1.59 -> 1.89; LSTM 0.86 -> 0.91).
constexpr int64_t kMinElementsPerTask = 2048;

template <typename F>
void for_each_row_block(int64_t batch, int64_t elements_per_row, const F& fn) {
  // One row cannot be split, and at::parallel_for would still open an OpenMP
  // region for it (B = 1: the region's start and stop were ~20% of a step).
  if (batch <= 1) return fn(0, batch);
  const int64_t grain = std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(1, elements_per_row));
  at::parallel_for(0, batch, grain, fn);
}

// Row b's pointer into a (B, n) tensor, or nullptr for an undefined one.
// Untyped data_ptr(): the typed one's dtype check, run for every tensor of
// every row, was 9% of an RNN-tanh forward at (16, 256, 128, 128) (perf,
// AMD EPYC Zen 4). Every tensor of a step has the dtype the step was
// dispatched on (the layer ops check it on entry; debug builds assert it).
template <typename scalar_t>
scalar_t* row(const at::Tensor& tensor, int64_t b) {
  if (!tensor.defined()) return nullptr;
  TORCH_INTERNAL_ASSERT_DEBUG_ONLY(tensor.scalar_type() == c10::CppTypeToScalarType<scalar_t>::value);
  return static_cast<scalar_t*>(tensor.data_ptr()) + b * tensor.size(1);
}

inline bool alive(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// Whether a step tensor has a row b: a packed step's gi, saved, d_pre and
// d_gh hold the running rows only (pointwise.h).
inline bool holds_row(const at::Tensor& tensor, int64_t b) {
  return tensor.defined() && b < tensor.size(0);
}

inline const int64_t* lengths_ptr(const at::Tensor& lengths) {
  return lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
}

template <typename scalar_t>
void copy_row(scalar_t* dst, const scalar_t* src, int64_t n) {
  std::memcpy(dst, src, n * sizeof(scalar_t));
}

template <typename scalar_t>
void zero_row(scalar_t* dst, int64_t n) {
  if (dst != nullptr) std::fill(dst, dst + n, scalar_t(0));
}

// The rows hold bfloat16 as its raw bits (uint16_t) and convert with the
// widen/narrow below, which the vectoriser sees through: with c10::BFloat16
// itself, its struct copies and the NaN branch of its rounding kept the
// bfloat16 rows scalar. narrow() rounds to nearest even, NaN stays NaN, like c10's.
template <typename scalar_t>
using storage_of = std::conditional_t<std::is_same_v<scalar_t, c10::BFloat16>, uint16_t, scalar_t>;

// Row b of a (B, n) tensor as storage, or nullptr for an undefined one.
template <typename scalar_t>
storage_of<scalar_t>* storage_row(const at::Tensor& tensor, int64_t b) {
  return reinterpret_cast<storage_of<scalar_t>*>(row<scalar_t>(tensor, b));
}

template <typename acc_t, typename stored_t>
RK_ALWAYS_INLINE acc_t widen(stored_t v) {
  if constexpr (std::is_same_v<stored_t, uint16_t>) {  // bfloat16 bits
    const uint32_t bits = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  } else {
    return acc_t(v);
  }
}

template <typename stored_t, typename acc_t>
RK_ALWAYS_INLINE stored_t narrow(acc_t v) {
  if constexpr (std::is_same_v<stored_t, uint16_t>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return v != v ? uint16_t(0x7FC0) : uint16_t(rounded);
  } else {
    return stored_t(v);
  }
}

// ------------------------------------------------------------------ forward

template <typename scalar_t>
RK_ALWAYS_INLINE void forward_rows(const ForwardStep& s, int64_t b_begin, int64_t b_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using stored_t = storage_of<scalar_t>;
  using Math = CpuMath<acc_t>;
  const int64_t* lengths = lengths_ptr(s.lengths);
  const int64_t P = s.h_prev.size(1);
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  const int64_t H = lstm ? s.c_prev.size(1) : P;
  const bool projected = s.h_raw.defined();
  // Inference writes the activations to a throw-away row: a branch-free inner
  // loop is one the compiler vectorises. The row is kept per thread, so that
  // steps do not allocate (B = 1: malloc was 5% of the step).
  thread_local std::vector<stored_t> scratch;
  if (!s.saved.defined()) scratch.resize(std::max<size_t>(scratch.size(), saved_gate_count(s.mode) * H));
  const stored_t* b_ih = reinterpret_cast<const stored_t*>(s.b_ih.data_ptr<scalar_t>());
  const stored_t* b_hh = reinterpret_cast<const stored_t*>(s.b_hh.data_ptr<scalar_t>());
  // float and bfloat16 storage (float compute) may run csrc/cpu/vector_rows.h.
  const bool vector_rows = std::is_same_v<acc_t, float> && cpu::vector_rows_run();
  // gh already summed into gi: the vector rows skip it, the scalar ones add a
  // row of zeros (x + 0 is x: the same sums either way).
  const bool gh_in_gi = !s.gh.defined();
  thread_local std::vector<stored_t> zero_gh;
  if (gh_in_gi) zero_gh.resize(std::max<size_t>(zero_gh.size(), s.gi.size(1)), stored_t(0));
  for (int64_t b = b_begin; b < b_end; ++b) {
    const stored_t* h_prev = storage_row<scalar_t>(s.h_prev, b);
    stored_t* h_next = storage_row<scalar_t>(s.h_next, b);
    stored_t* out = storage_row<scalar_t>(s.out, b);
    if (!alive(lengths, b, s.t)) {  // frozen state, zero output
      if (lstm) copy_row(storage_row<scalar_t>(s.c_next, b), storage_row<scalar_t>(s.c_prev, b), H);
      if (projected) {
        zero_row(storage_row<scalar_t>(s.h_raw, b), H);  // projected and then discarded by commit_projection
      } else {
        copy_row(h_next, h_prev, P);
        zero_row(out, P);
      }
      if (holds_row(s.saved, b)) zero_row(storage_row<scalar_t>(s.saved, b), saved_gate_count(s.mode) * H);
      continue;
    }
    const stored_t* gi = storage_row<scalar_t>(s.gi, b);
    const stored_t* gh = gh_in_gi ? zero_gh.data() : storage_row<scalar_t>(s.gh, b);
    stored_t* saved = s.saved.defined() ? storage_row<scalar_t>(s.saved, b) : scratch.data();
    stored_t* saved_or_null = s.saved.defined() ? saved : nullptr;  // the vector rows store no gates in inference
    // Pre-activation of gate unit k: both GEMM outputs plus both biases.
    auto pre = [&](int64_t k) { return widen<acc_t>(gi[k]) + widen<acc_t>(b_ih[k]) + widen<acc_t>(gh[k]) + widen<acc_t>(b_hh[k]); };
    // h goes to h_raw (to be projected) or straight into the next state and
    // the output; projected, the second store repeats the first (the GEMM
    // writes out), which keeps the loop branch-free.
    stored_t* h_dst = projected ? storage_row<scalar_t>(s.h_raw, b) : h_next;
    stored_t* out_dst = projected ? h_dst : out;
    if (lstm) {
      const stored_t* c_prev = storage_row<scalar_t>(s.c_prev, b);
      stored_t* c_next = storage_row<scalar_t>(s.c_next, b);
      if constexpr (std::is_same_v<acc_t, float>) {
        if (vector_rows) {
          cpu::lstm_forward_row(H, gi, gh_in_gi ? nullptr : gh, b_ih, b_hh, c_prev, c_next, h_dst, out_dst,
                                saved_or_null);
          continue;
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        cells::LstmActivations<acc_t> act;
        acc_t c, h;
        cells::lstm_forward<acc_t, Math>(pre(j), pre(H + j), pre(2 * H + j), pre(3 * H + j), widen<acc_t>(c_prev[j]), act,
                                         c, h);
        c_next[j] = narrow<stored_t>(c);
        const stored_t h_stored = narrow<stored_t>(h);  // one value, two stores: a chained store of a
        h_dst[j] = h_stored;                           // struct (BFloat16) re-reads memory, unvectorised
        out_dst[j] = h_stored;
        saved[j] = narrow<stored_t>(act.i);
        saved[H + j] = narrow<stored_t>(act.f);
        saved[2 * H + j] = narrow<stored_t>(act.g);
        saved[3 * H + j] = narrow<stored_t>(act.o);
      }
    } else if (gru) {
      auto in = [&](int64_t k) { return widen<acc_t>(gi[k]) + widen<acc_t>(b_ih[k]); };
      auto rec = [&](int64_t k) { return widen<acc_t>(gh[k]) + widen<acc_t>(b_hh[k]); };
      if constexpr (std::is_same_v<acc_t, float>) {
        if (vector_rows) {
          cpu::gru_forward_row(H, gi, gh, b_ih, b_hh, h_prev, h_dst, out_dst, saved_or_null);
          continue;
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        cells::GruActivations<acc_t> act;
        const acc_t h = cells::gru_forward<acc_t, Math>(in(j), in(H + j), in(2 * H + j), rec(j), rec(H + j),
                                                        rec(2 * H + j), widen<acc_t>(h_prev[j]), act);
        const stored_t h_stored = narrow<stored_t>(h);
        h_dst[j] = h_stored;
        out_dst[j] = h_stored;
        saved[j] = narrow<stored_t>(act.r);
        saved[H + j] = narrow<stored_t>(act.z);
        saved[2 * H + j] = narrow<stored_t>(act.n);
        saved[3 * H + j] = narrow<stored_t>(act.gh_n);
      }
    } else if (s.mode == Mode::RnnTanh) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const stored_t h_stored = narrow<stored_t>(cells::rnn_tanh_forward<acc_t, Math>(pre(j)));
        h_dst[j] = h_stored;
        out_dst[j] = h_stored;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const stored_t h_stored = narrow<stored_t>(cells::rnn_relu_forward<acc_t>(pre(j)));
        h_dst[j] = h_stored;
        out_dst[j] = h_stored;
      }
    }
  }
}

// ----------------------------------------------------------------- backward

template <typename scalar_t>
RK_ALWAYS_INLINE void backward_rows(const BackwardStep& s, int64_t b_begin, int64_t b_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using stored_t = storage_of<scalar_t>;
  using Math = CpuMath<acc_t>;
  const int64_t* lengths = lengths_ptr(s.lengths);
  const int64_t P = s.dh.size(1);
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  const int64_t H = lstm ? s.dc.size(1) : P;
  const int64_t GH = s.d_pre.size(1);
  std::vector<acc_t> dh_row(H);  // gradient of this step's h (before projection)
  for (int64_t b = b_begin; b < b_end; ++b) {
    const stored_t* dh_carry = storage_row<scalar_t>(s.dh, b);
    stored_t* dh_prev = storage_row<scalar_t>(s.dh_prev, b);
    if (!alive(lengths, b, s.t)) {  // the state passed through unchanged: so does its gradient
      copy_row(dh_prev, dh_carry, P);
      if (holds_row(s.d_pre, b)) zero_row(storage_row<scalar_t>(s.d_pre, b), GH);
      if (holds_row(s.d_gh, b)) zero_row(storage_row<scalar_t>(s.d_gh, b), GH);
      continue;  // dc (lstm) stays as it is
    }
    stored_t* d_pre = storage_row<scalar_t>(s.d_pre, b);
    // The gradient of this step's h: through the projection, or carry + output.
    const stored_t* dh_raw = storage_row<scalar_t>(s.dh_raw, b);
    const stored_t* grad_out = storage_row<scalar_t>(s.grad_out, b);
    const stored_t* saved = storage_row<scalar_t>(s.saved, b);
    if (dh_raw != nullptr) {
      for (int64_t j = 0; j < H; ++j) dh_row[j] = widen<acc_t>(dh_raw[j]);
    } else if (grad_out != nullptr) {
      for (int64_t j = 0; j < H; ++j) dh_row[j] = widen<acc_t>(dh_carry[j]) + widen<acc_t>(grad_out[j]);
    } else {
      for (int64_t j = 0; j < H; ++j) dh_row[j] = widen<acc_t>(dh_carry[j]);
    }
    const acc_t* dh = dh_row.data();
    if (lstm) {
      const stored_t* c_prev = storage_row<scalar_t>(s.c_prev, b);
      const stored_t* c_next = storage_row<scalar_t>(s.c_next, b);
      stored_t* dc = storage_row<scalar_t>(s.dc, b);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const cells::LstmActivations<acc_t> act{widen<acc_t>(saved[j]), widen<acc_t>(saved[H + j]), widen<acc_t>(saved[2 * H + j]),
                                                widen<acc_t>(saved[3 * H + j])};
        acc_t d_i, d_f, d_g, d_o, dc_prev;
        cells::lstm_backward<acc_t, Math>(dh[j], widen<acc_t>(dc[j]), act, widen<acc_t>(c_prev[j]), widen<acc_t>(c_next[j]), d_i,
                                          d_f, d_g, d_o, dc_prev);
        d_pre[j] = narrow<stored_t>(d_i);
        d_pre[H + j] = narrow<stored_t>(d_f);
        d_pre[2 * H + j] = narrow<stored_t>(d_g);
        d_pre[3 * H + j] = narrow<stored_t>(d_o);
        dc[j] = narrow<stored_t>(dc_prev);
      }
      zero_row(dh_prev, P);  // h_prev reaches the loss only through W_hh
    } else if (gru) {
      const stored_t* h_prev = storage_row<scalar_t>(s.h_prev, b);
      stored_t* d_gh = storage_row<scalar_t>(s.d_gh, b);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const cells::GruActivations<acc_t> act{widen<acc_t>(saved[j]), widen<acc_t>(saved[H + j]), widen<acc_t>(saved[2 * H + j]),
                                               widen<acc_t>(saved[3 * H + j])};
        acc_t d_r, d_z, d_n, d_hn, dh_direct;
        cells::gru_backward<acc_t>(dh[j], act, widen<acc_t>(h_prev[j]), d_r, d_z, d_n, d_hn, dh_direct);
        const stored_t d_r_stored = narrow<stored_t>(d_r), d_z_stored = narrow<stored_t>(d_z);
        d_pre[j] = d_r_stored;
        d_gh[j] = d_r_stored;
        d_pre[H + j] = d_z_stored;
        d_gh[H + j] = d_z_stored;
        d_pre[2 * H + j] = narrow<stored_t>(d_n);
        d_gh[2 * H + j] = narrow<stored_t>(d_hn);
        dh_prev[j] = narrow<stored_t>(dh_direct);
      }
    } else {
      const stored_t* h_next = storage_row<scalar_t>(s.h_next, b);
      const bool tanh_mode = s.mode == Mode::RnnTanh;
      if (tanh_mode) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d_pre[j] = narrow<stored_t>(cells::rnn_tanh_backward<acc_t>(dh[j], widen<acc_t>(h_next[j])));
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d_pre[j] = narrow<stored_t>(cells::rnn_relu_backward<acc_t>(dh[j], widen<acc_t>(h_next[j])));
      }
      zero_row(dh_prev, P);
    }
  }
}

// ------------------------------------------------- extended rows (extras set)
//
// LayerNorm of h W_hh^T and of c, zoneout and per-step cell outputs: each row
// runs its reductions between element-wise passes over the same cache-hot row.
// Separate from the plain rows above so that those stay as they are (measured:
// the plain layers did not slow down).

// A 1-D tensor's data as storage, or nullptr for an undefined one.
template <typename scalar_t>
const storage_of<scalar_t>* storage_data(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const storage_of<scalar_t>*>(t.data_ptr<scalar_t>()) : nullptr;
}

// The mean and the rstd of a row of n values (two passes, see cells.h).
template <typename acc_t, typename Load>
RK_ALWAYS_INLINE void row_moments(int64_t n, const Load& load, acc_t& mean, acc_t& rstd) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) sum += load(k);
  mean = sum / acc_t(n);
  acc_t squares = 0;
#pragma omp simd reduction(+ : squares)
  for (int64_t k = 0; k < n; ++k) {
    const acc_t d = load(k) - mean;
    squares += d * d;
  }
  rstd = cells::layer_norm_rstd<acc_t>(squares / acc_t(n));
}

// The two row means LayerNorm's backward needs: of dyg and of dyg * x_hat.
template <typename acc_t, typename DygLoad, typename XhatLoad>
RK_ALWAYS_INLINE void backward_means(int64_t n, const DygLoad& dyg, const XhatLoad& x_hat, acc_t& mean_dyg,
                                     acc_t& mean_dyg_x_hat) {
  acc_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t k = 0; k < n; ++k) {
    a += dyg(k);
    b += dyg(k) * x_hat(k);
  }
  mean_dyg = a / acc_t(n);
  mean_dyg_x_hat = b / acc_t(n);
}

// body(std::bool_constant<flag>...) for the given runtime flags: a loop whose
// optional inputs are loop-invariant is compiled once per combination without
// their tests. Left to GCC's unswitching, the extended LSTM loop kept its
// tests, spilled vector registers to the stack and ran 3x the plain rows'
// time (perf, (50, 64, 256, 512)).
template <typename Body>
RK_ALWAYS_INLINE void with_constants(Body&& body) {
  body();
}
template <typename Body, typename... Flags>
RK_ALWAYS_INLINE void with_constants(Body&& body, bool flag, Flags... flags) {
  if (flag) {
    with_constants([&](auto... known) { body(std::true_type{}, known...); }, flags...);
  } else {
    with_constants([&](auto... known) { body(std::false_type{}, known...); }, flags...);
  }
}

// Back through y = gamma * LN(v) for one row of n: d_v from dy, x_hat and
// rstd as the forward saved them (d_v may be dy itself). gain_sums and
// bias_sums, when not null, get dy * x_hat and dy added: the row's share of
// gamma's gradient and of a bias added after it.
template <typename acc_t, typename stored_t>
RK_ALWAYS_INLINE void layer_norm_row_backward(int64_t n, const stored_t* dy, const stored_t* gamma,
                                              const stored_t* x_hat, acc_t rstd, stored_t* d_v, acc_t* gain_sums,
                                              acc_t* bias_sums) {
  acc_t mean_dyg, mean_dyg_x_hat;
  backward_means<acc_t>(n, [&](int64_t k) { return widen<acc_t>(dy[k]) * widen<acc_t>(gamma[k]); },
                        [&](int64_t k) { return widen<acc_t>(x_hat[k]); }, mean_dyg, mean_dyg_x_hat);
  with_constants([&](auto gain, auto bias) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const acc_t d = widen<acc_t>(dy[k]), normalised = widen<acc_t>(x_hat[k]);
      if constexpr (decltype(gain)::value) gain_sums[k] += d * normalised;
      if constexpr (decltype(bias)::value) bias_sums[k] += d;
      d_v[k] = narrow<stored_t>(
          cells::layer_norm_backward<acc_t>(d * widen<acc_t>(gamma[k]), normalised, rstd, mean_dyg, mean_dyg_x_hat));
    }
  }, gain_sums != nullptr, bias_sums != nullptr);
}

template <typename scalar_t>
RK_ALWAYS_INLINE void forward_rows_extended(const ForwardStep& s, int64_t b_begin, int64_t b_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using stored_t = storage_of<scalar_t>;
  using Math = CpuMath<acc_t>;
  const ForwardExtras& e = *s.extras;
  const int64_t* lengths = lengths_ptr(s.lengths);
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  const int64_t H = s.h_prev.size(1), GH = s.gi.size(1), n_saved = saved_gate_count(s.mode) * H;
  const stored_t* b_ih = reinterpret_cast<const stored_t*>(s.b_ih.data_ptr<scalar_t>());
  const stored_t* b_hh = reinterpret_cast<const stored_t*>(s.b_hh.data_ptr<scalar_t>());
  const stored_t* ln_hh = storage_data<scalar_t>(e.ln_hh_weight);
  const stored_t* ln_c_w = storage_data<scalar_t>(e.ln_cell_weight);
  const stored_t* ln_c_b = storage_data<scalar_t>(e.ln_cell_bias);
  // Per-thread rows: the inference copy of the activations, and the fresh
  // (pre-zoneout) state and output gate in the compute type.
  // Absent outputs (cell_out, fresh) go to a discarded row, so that the loops
  // store unconditionally.
  thread_local std::vector<stored_t> scratch, discarded;
  thread_local std::vector<acc_t> fresh_row, gate_o;
  scratch.resize(std::max<size_t>(scratch.size(), n_saved));
  discarded.resize(std::max<size_t>(discarded.size(), H));
  fresh_row.resize(std::max<size_t>(fresh_row.size(), H));
  gate_o.resize(std::max<size_t>(gate_o.size(), H));
  for (int64_t b = b_begin; b < b_end; ++b) {
    stored_t* gh = storage_row<scalar_t>(s.gh, b);
    const stored_t* h_prev = storage_row<scalar_t>(s.h_prev, b);
    stored_t* h_next = storage_row<scalar_t>(s.h_next, b);
    stored_t* out = storage_row<scalar_t>(s.out, b);
    stored_t* xhat_hh = storage_row<scalar_t>(e.xhat_hh, b);
    stored_t* stats = storage_row<scalar_t>(e.row_stats, b);
    stored_t* fresh = storage_row<scalar_t>(e.fresh, b);
    stored_t* cell_out = storage_row<scalar_t>(e.cell_out, b);
    const stored_t* keep_h = storage_row<scalar_t>(e.keep_h, b);
    const stored_t* keep_c = storage_row<scalar_t>(e.keep_c, b);
    const stored_t* c_prev = lstm ? storage_row<scalar_t>(s.c_prev, b) : nullptr;
    stored_t* c_next = lstm ? storage_row<scalar_t>(s.c_next, b) : nullptr;
    if (!alive(lengths, b, s.t)) {  // frozen state, zero outputs and saved rows
      if (lstm) copy_row(c_next, c_prev, H);
      copy_row(h_next, h_prev, H);
      zero_row(out, H);
      zero_row(cell_out, H);
      if (holds_row(s.saved, b)) zero_row(storage_row<scalar_t>(s.saved, b), n_saved);
      zero_row(xhat_hh, GH);
      zero_row(fresh, H);
      zero_row(stats, 3);
      continue;
    }
    const stored_t* gi = storage_row<scalar_t>(s.gi, b);
    stored_t* saved = s.saved.defined() ? storage_row<scalar_t>(s.saved, b) : scratch.data();
    if (ln_hh != nullptr) {  // gh <- gamma_hh * LN(gh), the normalised row saved
      acc_t mean, rstd;
      row_moments<acc_t>(GH, [&](int64_t k) { return widen<acc_t>(gh[k]); }, mean, rstd);
#pragma omp simd
      for (int64_t k = 0; k < GH; ++k) {
        const acc_t x_hat = (widen<acc_t>(gh[k]) - mean) * rstd;
        if (xhat_hh != nullptr) xhat_hh[k] = narrow<stored_t>(x_hat);
        gh[k] = narrow<stored_t>(widen<acc_t>(ln_hh[k]) * x_hat);
      }
      if (stats != nullptr) stats[0] = narrow<stored_t>(rstd);
    }
    auto pre = [&](int64_t k) { return widen<acc_t>(gi[k]) + widen<acc_t>(b_ih[k]) + widen<acc_t>(gh[k]) + widen<acc_t>(b_hh[k]); };
    // The state after zoneout (or the fresh one without it).
    auto zoned = [](auto zoneout_on, const stored_t* keep, int64_t j, acc_t previous, acc_t fresh_value) {
      if constexpr (decltype(zoneout_on)::value) return cells::zoneout(widen<acc_t>(keep[j]), previous, fresh_value);
      else return fresh_value;
    };
    stored_t* const cells_out = cell_out != nullptr ? cell_out : discarded.data();
    stored_t* const fresh_out = fresh != nullptr ? fresh : discarded.data();
    acc_t* c_fresh = fresh_row.data();
    if (lstm) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        cells::LstmActivations<acc_t> act;
        c_fresh[j] = cells::lstm_cell_forward<acc_t, Math>(pre(j), pre(H + j), pre(2 * H + j), pre(3 * H + j),
                                                           widen<acc_t>(c_prev[j]), act);
        gate_o[j] = act.o;
        saved[j] = narrow<stored_t>(act.i);
        saved[H + j] = narrow<stored_t>(act.f);
        saved[2 * H + j] = narrow<stored_t>(act.g);
        saved[3 * H + j] = narrow<stored_t>(act.o);
      }
      acc_t mean = 0, rstd = 1;
      if (ln_c_w != nullptr) {
        row_moments<acc_t>(H, [&](int64_t j) { return c_fresh[j]; }, mean, rstd);
        if (stats != nullptr) {
          stats[1] = narrow<stored_t>(mean);
          stats[2] = narrow<stored_t>(rstd);
        }
      }
      with_constants([&](auto cell_norm, auto zoneout_c, auto zoneout_h) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          acc_t y = c_fresh[j];
          if constexpr (decltype(cell_norm)::value) y = widen<acc_t>(ln_c_w[j]) * (y - mean) * rstd + widen<acc_t>(ln_c_b[j]);
          const acc_t h_fresh = gate_o[j] * Math::tanh(y);
          const acc_t c = zoned(zoneout_c, keep_c, j, widen<acc_t>(c_prev[j]), c_fresh[j]);
          const acc_t h = zoned(zoneout_h, keep_h, j, widen<acc_t>(h_prev[j]), h_fresh);
          const stored_t c_stored = narrow<stored_t>(c), h_stored = narrow<stored_t>(h);
          c_next[j] = c_stored;
          cells_out[j] = c_stored;
          fresh_out[j] = narrow<stored_t>(c_fresh[j]);
          h_next[j] = h_stored;
          out[j] = h_stored;
        }
      }, ln_c_w != nullptr, keep_c != nullptr, keep_h != nullptr);
    } else if (gru) {
      auto in = [&](int64_t k) { return widen<acc_t>(gi[k]) + widen<acc_t>(b_ih[k]); };
      auto rec = [&](int64_t k) { return widen<acc_t>(gh[k]) + widen<acc_t>(b_hh[k]); };
      with_constants([&](auto zoneout_h) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          cells::GruActivations<acc_t> act;
          const acc_t h_fresh = cells::gru_forward<acc_t, Math>(in(j), in(H + j), in(2 * H + j), rec(j), rec(H + j),
                                                                rec(2 * H + j), widen<acc_t>(h_prev[j]), act);
          const stored_t h_stored = narrow<stored_t>(zoned(zoneout_h, keep_h, j, widen<acc_t>(h_prev[j]), h_fresh));
          h_next[j] = h_stored;
          out[j] = h_stored;
          saved[j] = narrow<stored_t>(act.r);
          saved[H + j] = narrow<stored_t>(act.z);
          saved[2 * H + j] = narrow<stored_t>(act.n);
          saved[3 * H + j] = narrow<stored_t>(act.gh_n);
        }
      }, keep_h != nullptr);
    } else {
      const bool tanh_mode = s.mode == Mode::RnnTanh;
      with_constants([&](auto zoneout_h) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const acc_t h_fresh = tanh_mode ? cells::rnn_tanh_forward<acc_t, Math>(pre(j)) : cells::rnn_relu_forward<acc_t>(pre(j));
          const stored_t h_stored = narrow<stored_t>(zoned(zoneout_h, keep_h, j, widen<acc_t>(h_prev[j]), h_fresh));
          h_next[j] = h_stored;
          out[j] = h_stored;
          fresh_out[j] = narrow<stored_t>(h_fresh);
        }
      }, keep_h != nullptr);
    }
  }
}

template <typename scalar_t>
RK_ALWAYS_INLINE void backward_rows_extended(const BackwardStep& s, int64_t b_begin, int64_t b_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using stored_t = storage_of<scalar_t>;
  using Math = CpuMath<acc_t>;
  const BackwardExtras& e = *s.extras;
  const int64_t* lengths = lengths_ptr(s.lengths);
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  const int64_t H = s.dh.size(1), GH = s.d_pre.size(1);
  const stored_t* ln_hh = storage_data<scalar_t>(e.ln_hh_weight);
  const stored_t* ln_c_w = storage_data<scalar_t>(e.ln_cell_weight);
  const stored_t* ln_c_b = storage_data<scalar_t>(e.ln_cell_bias);
  acc_t* ln_hh_sums =
      e.ln_hh_grad_sums.defined() ? e.ln_hh_grad_sums.data_ptr<acc_t>() + at::get_thread_num() * GH : nullptr;
  // Per-thread rows in the compute type: the gradient of the fresh h, the
  // part of d h_prev that skips the cell, and (lstm) the gradient of tanh's
  // argument and LN(c)'s normalised row.
  thread_local std::vector<acc_t> dh_fresh, dh_skip, dy_row, c_hat;
  for (auto* v : {&dh_fresh, &dh_skip, &dy_row, &c_hat}) v->resize(std::max<size_t>(v->size(), H));
  thread_local std::vector<stored_t> discarded;  // d_ln_cell when its gradient is not wanted
  discarded.resize(std::max<size_t>(discarded.size(), 2 * H));
  for (int64_t b = b_begin; b < b_end; ++b) {
    const stored_t* dh_carry = storage_row<scalar_t>(s.dh, b);
    stored_t* dh_prev = storage_row<scalar_t>(s.dh_prev, b);
    stored_t* d_ln_cell = storage_row<scalar_t>(e.d_ln_cell, b);
    if (!alive(lengths, b, s.t)) {  // the state passed through unchanged: so does its gradient
      copy_row(dh_prev, dh_carry, H);
      for (const at::Tensor* rows : {&s.d_pre, &s.d_gh, &e.d_gh_raw}) {
        if (holds_row(*rows, b)) zero_row(storage_row<scalar_t>(*rows, b), GH);
      }
      zero_row(d_ln_cell, 2 * H);
      continue;  // dc (lstm) stays as it is
    }
    stored_t* d_pre = storage_row<scalar_t>(s.d_pre, b);
    stored_t* d_gh = gru ? storage_row<scalar_t>(s.d_gh, b) : d_pre;  // gradient of the (normalised) h W_hh^T
    stored_t* d_gh_raw = storage_row<scalar_t>(e.d_gh_raw, b);
    const stored_t* grad_out = storage_row<scalar_t>(s.grad_out, b);
    const stored_t* saved = storage_row<scalar_t>(s.saved, b);
    const stored_t* stats = storage_row<scalar_t>(e.row_stats, b);
    const stored_t* fresh = storage_row<scalar_t>(e.fresh, b);
    const stored_t* keep_h = storage_row<scalar_t>(e.keep_h, b);
    const stored_t* keep_c = storage_row<scalar_t>(e.keep_c, b);
    const stored_t* grad_cell_out = storage_row<scalar_t>(e.grad_cell_out, b);
    // A keep factor: the mask's, or 0 without zoneout.
    auto keep = [](auto zoneout_on, const stored_t* k, int64_t j) {
      if constexpr (decltype(zoneout_on)::value) return widen<acc_t>(k[j]);
      else return acc_t(0);
    };
    with_constants([&](auto has_grad_out, auto zoneout_h) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        acc_t dh = widen<acc_t>(dh_carry[j]);
        if constexpr (decltype(has_grad_out)::value) dh += widen<acc_t>(grad_out[j]);
        const acc_t k = keep(zoneout_h, keep_h, j);
        dh_fresh[j] = (acc_t(1) - k) * dh;
        dh_skip[j] = k * dh;
      }
    }, grad_out != nullptr, keep_h != nullptr);
    if (lstm) {
      const stored_t* c_prev = storage_row<scalar_t>(s.c_prev, b);
      const stored_t* c_next = storage_row<scalar_t>(s.c_next, b);
      stored_t* dc = storage_row<scalar_t>(s.dc, b);
      const acc_t mean_c = ln_c_w != nullptr ? widen<acc_t>(stats[1]) : acc_t(0);
      const acc_t rstd_c = ln_c_w != nullptr ? widen<acc_t>(stats[2]) : acc_t(1);
      // h_fresh = o * tanh(y), y = c_fresh or LN(c_fresh): d_o and dy.
      const stored_t* c_fresh_row = fresh != nullptr ? fresh : c_next;  // c before zoneout
      with_constants([&](auto cell_norm) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const acc_t c_fresh = widen<acc_t>(c_fresh_row[j]);
          acc_t y = c_fresh;
          if constexpr (decltype(cell_norm)::value) {
            c_hat[j] = (c_fresh - mean_c) * rstd_c;
            y = widen<acc_t>(ln_c_w[j]) * c_hat[j] + widen<acc_t>(ln_c_b[j]);
          }
          acc_t d_o, dy;
          cells::lstm_output_backward<acc_t>(dh_fresh[j], widen<acc_t>(saved[3 * H + j]), Math::tanh(y), d_o, dy);
          d_pre[3 * H + j] = narrow<stored_t>(d_o);
          dy_row[j] = dy;
        }
      }, ln_c_w != nullptr);
      acc_t mean_dyg = 0, mean_dyg_c_hat = 0;
      if (ln_c_w != nullptr) {
        backward_means<acc_t>(H, [&](int64_t j) { return dy_row[j] * widen<acc_t>(ln_c_w[j]); },
                              [&](int64_t j) { return c_hat[j]; }, mean_dyg, mean_dyg_c_hat);
      }
      stored_t* const d_ln_cell_out = d_ln_cell != nullptr ? d_ln_cell : discarded.data();
      with_constants([&](auto cell_norm, auto zoneout_c, auto has_cell_grad) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const cells::LstmActivations<acc_t> act{widen<acc_t>(saved[j]), widen<acc_t>(saved[H + j]),
                                                  widen<acc_t>(saved[2 * H + j]), widen<acc_t>(saved[3 * H + j])};
          acc_t dc_from_h = dy_row[j];
          if constexpr (decltype(cell_norm)::value) {
            dc_from_h = cells::layer_norm_backward<acc_t>(dy_row[j] * widen<acc_t>(ln_c_w[j]), c_hat[j], rstd_c,
                                                          mean_dyg, mean_dyg_c_hat);
            d_ln_cell_out[j] = narrow<stored_t>(dy_row[j] * c_hat[j]);
            d_ln_cell_out[H + j] = narrow<stored_t>(dy_row[j]);
          }
          // c = keep * c_prev + (1 - keep) * c_fresh; the cell output's gradient joins c's.
          acc_t dc_total = widen<acc_t>(dc[j]);
          if constexpr (decltype(has_cell_grad)::value) dc_total += widen<acc_t>(grad_cell_out[j]);
          const acc_t k = keep(zoneout_c, keep_c, j);
          acc_t d_i, d_f, d_g, dc_prev;
          cells::lstm_cell_backward<acc_t>((acc_t(1) - k) * dc_total + dc_from_h, act, widen<acc_t>(c_prev[j]), d_i,
                                           d_f, d_g, dc_prev);
          d_pre[j] = narrow<stored_t>(d_i);
          d_pre[H + j] = narrow<stored_t>(d_f);
          d_pre[2 * H + j] = narrow<stored_t>(d_g);
          dc[j] = narrow<stored_t>(dc_prev + k * dc_total);
          dh_prev[j] = narrow<stored_t>(dh_skip[j]);
        }
      }, ln_c_w != nullptr, keep_c != nullptr, grad_cell_out != nullptr);
    } else if (gru) {
      const stored_t* h_prev = storage_row<scalar_t>(s.h_prev, b);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const cells::GruActivations<acc_t> act{widen<acc_t>(saved[j]), widen<acc_t>(saved[H + j]),
                                               widen<acc_t>(saved[2 * H + j]), widen<acc_t>(saved[3 * H + j])};
        acc_t d_r, d_z, d_n, d_hn, dh_direct;
        cells::gru_backward<acc_t>(dh_fresh[j], act, widen<acc_t>(h_prev[j]), d_r, d_z, d_n, d_hn, dh_direct);
        const stored_t d_r_stored = narrow<stored_t>(d_r), d_z_stored = narrow<stored_t>(d_z);
        d_pre[j] = d_r_stored;
        d_gh[j] = d_r_stored;
        d_pre[H + j] = d_z_stored;
        d_gh[H + j] = d_z_stored;
        d_pre[2 * H + j] = narrow<stored_t>(d_n);
        d_gh[2 * H + j] = narrow<stored_t>(d_hn);
        dh_prev[j] = narrow<stored_t>(dh_direct + dh_skip[j]);
      }
    } else {
      const stored_t* h_next = storage_row<scalar_t>(s.h_next, b);
      const bool tanh_mode = s.mode == Mode::RnnTanh;
      const stored_t* h_fresh_row = fresh != nullptr ? fresh : h_next;  // h before zoneout
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t h_fresh = widen<acc_t>(h_fresh_row[j]);
        d_pre[j] = narrow<stored_t>(tanh_mode ? cells::rnn_tanh_backward<acc_t>(dh_fresh[j], h_fresh)
                                              : cells::rnn_relu_backward<acc_t>(dh_fresh[j], h_fresh));
        dh_prev[j] = narrow<stored_t>(dh_skip[j]);
      }
    }
    if (ln_hh != nullptr) {  // back through gh = gamma_hh * LN(h W_hh^T)
      // The gain's gradient summed while the row is in cache (a pass over all
      // rows after the loop re-read (T, B, G*H) of x_hat from memory).
      layer_norm_row_backward<acc_t>(GH, d_gh, ln_hh, storage_row<scalar_t>(e.xhat_hh, b), widen<acc_t>(stats[0]),
                                     d_gh_raw, ln_hh_sums, static_cast<acc_t*>(nullptr));
    }
  }
}

// ------------------------------------------------ LayerNorm of the input side

template <typename scalar_t>
RK_ALWAYS_INLINE void layer_norm_rows(const LayerNormRows& s, int64_t r_begin, int64_t r_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using stored_t = storage_of<scalar_t>;
  const int64_t n = s.rows.size(1);
  const stored_t* gamma = storage_data<scalar_t>(s.gamma);
  stored_t* rstd_out = s.rstd.defined() ? reinterpret_cast<stored_t*>(s.rstd.data_ptr<scalar_t>()) : nullptr;
  const int64_t rstd_stride = s.rstd.defined() ? s.rstd.stride(0) : 0;
  for (int64_t r = r_begin; r < r_end; ++r) {
    stored_t* v = storage_row<scalar_t>(s.rows, r);
    stored_t* x_hat = storage_row<scalar_t>(s.x_hat, r);
    acc_t mean, rstd;
    row_moments<acc_t>(n, [&](int64_t k) { return widen<acc_t>(v[k]); }, mean, rstd);
    with_constants([&](auto keep_x_hat) {
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const acc_t normalised = (widen<acc_t>(v[k]) - mean) * rstd;
        if constexpr (decltype(keep_x_hat)::value) x_hat[k] = narrow<stored_t>(normalised);
        v[k] = narrow<stored_t>(widen<acc_t>(gamma[k]) * normalised);
      }
    }, x_hat != nullptr);
    if (rstd_out != nullptr) rstd_out[r * rstd_stride] = narrow<stored_t>(rstd);
  }
}

template <typename scalar_t>
RK_ALWAYS_INLINE void layer_norm_rows_backward(const LayerNormRowsBackward& s, int64_t r_begin, int64_t r_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using stored_t = storage_of<scalar_t>;
  const int64_t n = s.dy.size(1);
  const stored_t* gamma = storage_data<scalar_t>(s.gamma);
  const stored_t* rstd_in = reinterpret_cast<const stored_t*>(s.rstd.data_ptr<scalar_t>());
  const int64_t rstd_stride = s.rstd.stride(0);
  acc_t* sums = s.sums.defined() ? s.sums.data_ptr<acc_t>() + at::get_thread_num() * 2 * n : nullptr;
  for (int64_t r = r_begin; r < r_end; ++r) {
    layer_norm_row_backward<acc_t>(n, storage_row<scalar_t>(s.dy, r), gamma, storage_row<scalar_t>(s.x_hat, r),
                                   widen<acc_t>(rstd_in[r * rstd_stride]), storage_row<scalar_t>(s.d_rows, r), sums,
                                   sums != nullptr ? sums + n : nullptr);
  }
}

// Every kind of block, by its step's type (double's are not cloned: see below).
template <typename scalar_t>
RK_ALWAYS_INLINE void block_rows(const ForwardStep& s, int64_t b_begin, int64_t b_end) {
  if (s.extras != nullptr) forward_rows_extended<scalar_t>(s, b_begin, b_end);
  else forward_rows<scalar_t>(s, b_begin, b_end);
}
template <typename scalar_t>
RK_ALWAYS_INLINE void block_rows(const BackwardStep& s, int64_t b_begin, int64_t b_end) {
  if (s.extras != nullptr) backward_rows_extended<scalar_t>(s, b_begin, b_end);
  else backward_rows<scalar_t>(s, b_begin, b_end);
}
template <typename scalar_t>
RK_ALWAYS_INLINE void block_rows(const LayerNormRows& s, int64_t r_begin, int64_t r_end) {
  layer_norm_rows<scalar_t>(s, r_begin, r_end);
}
template <typename scalar_t>
RK_ALWAYS_INLINE void block_rows(const LayerNormRowsBackward& s, int64_t r_begin, int64_t r_end) {
  layer_norm_rows_backward<scalar_t>(s, r_begin, r_end);
}

// rows<scalar_t>(step, b0, b1): the rows of one block.
// float and bfloat16 go through the multiversioned clones: compiled for
// baseline x86-64 alone, the bfloat16 rows ran unvectorised and took half of
// a bfloat16 LSTM forward once its GEMMs ran on AMX.
#define RK_CLONED_ROWS(scalar_t, name)                                                                   \
  RK_CPU_CLONES void name(const ForwardStep& s, int64_t b0, int64_t b1) { block_rows<scalar_t>(s, b0, b1); }   \
  RK_CPU_CLONES void name(const BackwardStep& s, int64_t b0, int64_t b1) { block_rows<scalar_t>(s, b0, b1); }  \
  RK_CPU_CLONES void name(const LayerNormRows& s, int64_t b0, int64_t b1) { block_rows<scalar_t>(s, b0, b1); }  \
  RK_CPU_CLONES void name(const LayerNormRowsBackward& s, int64_t b0, int64_t b1) { block_rows<scalar_t>(s, b0, b1); }
RK_CLONED_ROWS(float, float_rows)
RK_CLONED_ROWS(c10::BFloat16, bfloat16_rows)
#undef RK_CLONED_ROWS

template <typename scalar_t, typename Step>
void rows(const Step& s, int64_t b_begin, int64_t b_end) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    float_rows(s, b_begin, b_end);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    bfloat16_rows(s, b_begin, b_end);
  } else {
    block_rows<scalar_t>(s, b_begin, b_end);
  }
}

// One step over the batch of `batch` rows (or LayerNormRows over all its
// rows): `gates` is the step's (B, G*H) gate buffer (a packed step's holds
// the running rows only), whose dtype picks the instantiation and whose row
// width sizes the thread blocks.
template <typename Step>
void run_step(const Step& step, int64_t batch, const at::Tensor& gates) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "rnnkernels_pointwise_step_cpu", [&] {
    for_each_row_block(batch, gates.size(1), [&](int64_t b0, int64_t b1) { rows<scalar_t>(step, b0, b1); });
  });
}

}  // namespace

void forward_step_cpu(const ForwardStep& step) { run_step(step, step.h_prev.size(0), step.gi); }

void backward_step_cpu(const BackwardStep& step) { run_step(step, step.dh.size(0), step.d_pre); }

void layer_norm_rows_cpu(const LayerNormRows& step) { run_step(step, step.rows.size(0), step.rows); }

void layer_norm_rows_backward_cpu(const LayerNormRowsBackward& step) { run_step(step, step.dy.size(0), step.dy); }

void commit_projection_cpu(const CommitProjection& s) {
  const int64_t* lengths = lengths_ptr(s.lengths);
  const int64_t batch = s.out.size(0), P = s.out.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, s.out.scalar_type(), "rnnkernels_commit_projection_cpu", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      if (alive(lengths, b, s.t)) {
        copy_row(row<scalar_t>(s.h_next, b), row<scalar_t>(s.out, b), P);
      } else {
        copy_row(row<scalar_t>(s.h_next, b), row<scalar_t>(s.h_prev, b), P);
        zero_row(row<scalar_t>(s.out, b), P);
      }
    }
  });
}

void gather_projected_grad_cpu(const GatherProjectedGrad& s) {
  using namespace at;
  const int64_t* lengths = lengths_ptr(s.lengths);
  const int64_t batch = s.dst.size(0), P = s.dst.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, s.dst.scalar_type(), "rnnkernels_gather_projected_grad_cpu", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      scalar_t* dst = row<scalar_t>(s.dst, b);
      if (!alive(lengths, b, s.t)) {
        zero_row(dst, P);
        continue;
      }
      const scalar_t* dh = row<scalar_t>(s.dh, b);
      const scalar_t* grad_out = row<scalar_t>(s.grad_out, b);
      for (int64_t j = 0; j < P; ++j) dst[j] = grad_out != nullptr ? scalar_t(dh[j] + grad_out[j]) : dh[j];
    }
  });
}

}  // namespace rnnkernels
