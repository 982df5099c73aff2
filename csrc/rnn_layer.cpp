// The sequence loop of one recurrent layer in one direction (see rnn_layer.h).
//
// Forward:  gi (T, B, G*H) = x W_ih^T                one GEMM for all steps
//           per step: gh = h W_hh^T                   one GEMM
//                     pointwise step (adds biases)     cells.h, per device
// Backward: per step, in reverse processing order:
//                     pointwise step -> d_pre[t]
//                     dh = dh_prev + d_pre[t] W_hh    one GEMM
//           then dx, dW_ih, dW_hh, biases, dW_hr as GEMMs over all steps.
//
// Saved for backward (training only; empty tensors otherwise), B batch,
// H hidden, P = proj_size or H:
//   states      (T+1, B, P)  every state h, in time order: the state entering
//                            step t is states[t] going forward and
//                            states[t+1] in reverse; h0 at one end, h_n at
//                            the other. The GEMM reads and the step writes it
//                            in place, so it costs no copies.
//   cells       (T+1, B, H)  lstm: c, laid out like states; else empty
//   gates       (T, B, 4H)   lstm: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
//                            (on the CPU, written over gi's storage);
//                            gru: r, z, n, (h W_hh^T + b_hh)_n; rnn: empty
//   hidden_raw  (T, B, H)    lstm with projection: h before W_hr; else empty
// Rows past a sequence's end hold the frozen state (states, cells) or zeros.
// With uneven lengths the batch rows of all four are in BatchOrder's sorted
// order (longest first, stable), which backward recomputes from `lengths`.
#include "rnn_layer.h"

#include <c10/util/irange.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <ATen/ThreadLocalState.h>

#include "cells.h"
#include "cpu/gemm.h"
#include "pointwise.h"
#include "sorted_batch.h"

namespace rnnkernels {
namespace {

Mode parse_mode(c10::string_view mode) {
  if (mode == "rnn_tanh") return Mode::RnnTanh;
  if (mode == "rnn_relu") return Mode::RnnRelu;
  if (mode == "lstm") return Mode::Lstm;
  if (mode == "gru") return Mode::Gru;
  TORCH_CHECK(false, "rnnkernels: mode must be one of 'rnn_tanh', 'rnn_relu', 'lstm', 'gru', got '",
              std::string(mode), "'");
}

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "(";
  for (const auto i : c10::irange(shape.size())) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// `tensor` must have `shape` and x's dtype and device.
void check_arg(const at::Tensor& tensor, const char* name, at::IntArrayRef shape, const at::Tensor& x,
               const char* meaning) {
  TORCH_CHECK(tensor.device() == x.device(), "rnnkernels: ", name, " must be on ", x.device(),
              " like x, got ", tensor.device());
  TORCH_CHECK(tensor.scalar_type() == x.scalar_type(), "rnnkernels: ", name, " must have dtype ",
              x.scalar_type(), " like x, got ", tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == shape, "rnnkernels: ", name, " must have shape ", meaning, " = ", shape_str(shape),
              ", got ", shape_str(tensor.sizes()));
}

at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? *t : at::Tensor();
}

// Sizes of one layer, validated against every argument.
struct LayerShape {
  Mode mode;
  int64_t T, B, I, H, P, G;
};

LayerShape check_layer(c10::string_view mode_name, const at::Tensor& x, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, const at::Tensor& w_hr) {
  LayerShape s;
  s.mode = parse_mode(mode_name);
  s.G = gate_count(s.mode);
  TORCH_CHECK(x.dim() == 3, "rnnkernels: x must be 3-D (T, B, input_size), got shape ", shape_str(x.sizes()));
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "rnnkernels: x must be float32, float64 or bfloat16, got ", dtype);
  s.T = x.size(0);
  s.B = x.size(1);
  s.I = x.size(2);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % s.G == 0 && w_ih.size(0) > 0,
              "rnnkernels: w_ih must have shape (", s.G, " * hidden_size, input_size) for ", std::string(mode_name),
              ", got ", shape_str(w_ih.sizes()));
  s.H = w_ih.size(0) / s.G;
  TORCH_CHECK(s.mode == Mode::Lstm || !w_hr.defined(), "rnnkernels: w_hr (projection) is only for lstm, got one for ",
              std::string(mode_name));
  TORCH_CHECK(!w_hr.defined() || w_hr.dim() == 2, "rnnkernels: w_hr must have shape (proj_size, hidden_size), got ",
              shape_str(w_hr.sizes()));
  s.P = w_hr.defined() ? w_hr.size(0) : s.H;
  check_arg(w_ih, "w_ih", {s.G * s.H, s.I}, x, "(gates * hidden_size, input_size)");
  check_arg(w_hh, "w_hh", {s.G * s.H, s.P}, x, w_hr.defined() ? "(gates * hidden_size, proj_size)"
                                                               : "(gates * hidden_size, hidden_size)");
  if (w_hr.defined()) check_arg(w_hr, "w_hr", {s.P, s.H}, x, "(proj_size, hidden_size)");
  return s;
}

// lengths: (B,) int64 on the CPU with values in [0, T]. Returns them
// (contiguous), or undefined when every sequence runs all T steps.
at::Tensor check_lengths(const at::Tensor& lengths, const LayerShape& s) {
  if (!lengths.defined()) return lengths;
  TORCH_CHECK(lengths.device().is_cpu(), "rnnkernels: lengths must be on the CPU, got ", lengths.device());
  TORCH_CHECK(lengths.scalar_type() == at::kLong, "rnnkernels: lengths must be int64, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == s.B, "rnnkernels: lengths must have shape (", s.B,
              ",) (one length per sequence), got ", shape_str(lengths.sizes()));
  const auto host = lengths.contiguous();
  const int64_t* len = host.data_ptr<int64_t>();
  bool all_full = true;
  for (const auto b : c10::irange(s.B)) {
    TORCH_CHECK(len[b] >= 0 && len[b] <= s.T, "rnnkernels: lengths must lie in [0, ", s.T,
                "] (the number of time steps), got lengths[", b, "] = ", len[b]);
    all_full = all_full && len[b] == s.T;
  }
  return all_full ? at::Tensor() : host;
}

// A tensor of `sizes` and `strides` at `offset` in t's storage, made without
// the dispatcher. The loop's per-step tensors (a step's rows of gi, the
// states, the gradients) are such views; through select / narrow each cost
// about a microsecond of dispatch and allocation, which at batch 1 was about
// a tenth of a step (perf, AMD EPYC Zen 4). Only for the loop's own
// tensors, which no autograd graph sees: the view shares no version counter
// with t.
at::Tensor plain_view(const at::Tensor& t, at::IntArrayRef sizes, at::IntArrayRef strides, int64_t offset) {
  auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(t.storage()), t.key_set(), t.dtype());
  impl->set_sizes_and_strides(sizes, strides, offset);
  return at::Tensor(std::move(impl));
}

// Rows [first, first + count) of t's first dimension.
at::Tensor row_block(const at::Tensor& t, int64_t first, int64_t count) {
  c10::SmallVector<int64_t, 4> sizes(t.sizes().begin(), t.sizes().end());
  sizes[0] = count;
  return plain_view(t, sizes, t.strides(), t.storage_offset() + first * t.stride(0));
}

// t[i], one index of its first dimension.
at::Tensor index_of(const at::Tensor& t, int64_t i) {
  return plain_view(t, t.sizes().slice(1), t.strides().slice(1), t.storage_offset() + i * t.stride(0));
}

// With uneven lengths the batch runs sorted by length, longest first (stable;
// csrc/sorted_batch.h), so the rows still running at time t are the first
// alive[t] rows and every per-step GEMM shrinks to them: the saving
// PackedSequence gets from packing, on padded input. Saved activations stay in
// this sorted order.
//
// Packed rows go further, on the CPU: the running rows of every step, step
// after step, as a PackedSequence holds them (N = sum(lengths) rows). The
// products over all steps (input projection, dx, dW_ih, dW_hh) then run on
// about N rows instead of T * B, padding left out; step t's rows are
// first_row[t] .. first_row[t] + alive[t] of a (T * B, n) buffer, whose
// rows past N are zeros or unused (its shape stays the static one the fake
// kernels give).
struct BatchOrder : SortedBatch {
  std::vector<int64_t> alive;      // (T,) rows running at time t
  std::vector<int64_t> first_row;  // (T + 1,) packed row of step t's first; first_row[T] = N

  BatchOrder(const at::Tensor& unsorted_host_lengths, const LayerShape& s, const at::Tensor& x)
      : SortedBatch(unsorted_host_lengths, x), alive(s.T, s.B), first_row(s.T + 1, 0), T_(s.T), B_(s.B) {
    if (host_lengths.defined()) {
      const int64_t* len = host_lengths.data_ptr<int64_t>();
      for (const auto t : c10::irange(s.T)) {
        alive[t] = 0;
        while (alive[t] < s.B && len[alive[t]] > t) ++alive[t];
      }
    }
    for (const auto t : c10::irange(s.T)) first_row[t + 1] = first_row[t] + alive[t];
  }

  int64_t packed_rows() const { return first_row[T_]; }
  // The rows those products run on: N rounded up to a multiple of 32 (at
  // most T * B), the rows past N zero in their operands. oneDNN makes a
  // primitive per shape, and N is new with nearly every batch: with fresh
  // lengths each call, (35, 20, 200, 200) fwd+bwd, 7.5 ms against 6.2-7.0 ms
  // with the same lengths every call (AMD EPYC Zen 4).
  int64_t product_rows() const { return std::min(T_ * B_, (packed_rows() + 31) / 32 * 32); }

  // (product_rows, n): the packed rows of `steps` (T, B, n), which is in
  // sorted batch order, or in the caller's with `callers_order` (x itself),
  // then zero rows.
  at::Tensor pack(const at::Tensor& steps, bool callers_order) const {
    const int64_t N = packed_rows();
    at::Tensor packed = at::empty({product_rows(), steps.size(2)}, steps.options());
    at::Tensor packed_part = packed.narrow(0, 0, N);
    at::index_select_out(packed_part, steps.reshape({T_ * B_, steps.size(2)}), 0, flat_rows(callers_order));
    packed.narrow(0, N, product_rows() - N).zero_();
    return packed;
  }
  // (T, B, n) in the caller's batch order of packed rows (N or more, n), padding zero.
  at::Tensor unpack(const at::Tensor& packed) const {
    return at::zeros({T_ * B_, packed.size(1)}, packed.options())
        .index_copy_(0, flat_rows(/*callers_order=*/true), packed.narrow(0, 0, packed_rows()))
        .view({T_, B_, packed.size(1)});
  }
  // Step t's rows (alive[t], n) of a (T, B, n) buffer holding packed rows.
  std::vector<at::Tensor> packed_steps(const at::Tensor& buffer) const {
    if (!buffer.defined() || buffer.dim() < 2) return {};
    const at::Tensor flat = buffer.view({T_ * B_, buffer.size(2)});
    std::vector<at::Tensor> steps;
    for (const auto t : c10::irange(T_)) steps.push_back(row_block(flat, first_row[t], alive[t]));
    return steps;
  }

 private:
  // (N,) the row t * B + b of (T * B, n) that each packed row comes from: b
  // the sorted row, or the caller's row order[b].
  at::Tensor flat_rows(bool callers_order) const {
    at::Tensor rows = at::empty({packed_rows()}, at::kLong);
    int64_t* row = rows.data_ptr<int64_t>();
    const at::Tensor host_order = callers_order && order.defined() ? order.cpu() : at::Tensor();
    const int64_t* caller = host_order.defined() ? host_order.data_ptr<int64_t>() : nullptr;
    for (const auto t : c10::irange(T_)) {
      for (const auto b : c10::irange(alive[t])) *row++ = t * B_ + (caller ? caller[b] : b);
    }
    return rows;
  }

  int64_t T_, B_;
};

void forward_step(const ForwardStep& step, const at::Tensor& x) {
  if (x.is_cpu()) return forward_step_cpu(step);
#ifdef RNNKERNELS_WITH_CUDA
  if (x.is_cuda()) return forward_step_cuda(step);
#endif
  TORCH_CHECK(false, "rnnkernels: no pointwise step for device ", x.device());
}

void backward_step(const BackwardStep& step, const at::Tensor& x) {
  if (x.is_cpu()) return backward_step_cpu(step);
#ifdef RNNKERNELS_WITH_CUDA
  if (x.is_cuda()) return backward_step_cuda(step);
#endif
  TORCH_CHECK(false, "rnnkernels: no pointwise step for device ", x.device());
}

void commit_projection(const CommitProjection& step, const at::Tensor& x) {
  if (x.is_cpu()) return commit_projection_cpu(step);
#ifdef RNNKERNELS_WITH_CUDA
  if (x.is_cuda()) return commit_projection_cuda(step);
#endif
  TORCH_CHECK(false, "rnnkernels: no pointwise step for device ", x.device());
}

void gather_projected_grad(const GatherProjectedGrad& step, const at::Tensor& x) {
  if (x.is_cpu()) return gather_projected_grad_cpu(step);
#ifdef RNNKERNELS_WITH_CUDA
  if (x.is_cuda()) return gather_projected_grad_cuda(step);
#endif
  TORCH_CHECK(false, "rnnkernels: no pointwise step for device ", x.device());
}

// Whether the steps' GEMMs, (B, P) x (P, G*H), are too small for two threads
// to beat one (measured on the 2-core box: B = 1, H = 128 is; B = 8, H = 256
// is not). Not for a single step (a cell): there the second thread halves the
// GEMV that reads W_hh, which is most of the call (torch.nn's LSTMCell at
// B = 1, H = 256 gains ~1.4x from it).
constexpr int64_t kTinyStepMacs = 1 << 18;

bool tiny_steps(const at::Tensor& x, int64_t T, int64_t B, int64_t GH, int64_t P) {
  return x.is_cpu() && T > 1 && B * GH * P <= kTinyStepMacs;
}

// Per-step views (plain_view) made once per call.
std::vector<at::Tensor> steps_of(const at::Tensor& t) {
  std::vector<at::Tensor> steps;
  if (t.defined() && t.dim() > 1) {
    for (const auto i : c10::irange(t.size(0))) steps.push_back(index_of(t, i));
  }
  return steps;
}

// The first n rows of a (B, ...) tensor: the rows still running.
at::Tensor running(const at::Tensor& t, int64_t n) { return n == t.size(0) ? t : row_block(t, 0, n); }

// x (T, B, I) (or the states entering each step) in sorted batch order with
// every row past its sequence's end zeroed: a weight gradient sums d_pre x
// over all rows, and d_pre = 0 there does not cancel a NaN or Inf the caller
// padded with (0 * NaN = NaN).
at::Tensor without_padding(const at::Tensor& x, const BatchOrder& batch) {
  if (!batch.lengths.defined()) return x;
  at::Tensor copy = x.clone();
  for (const auto t : c10::irange(x.size(0))) {
    const int64_t alive = batch.alive[t];
    if (alive < x.size(1)) copy[t].narrow(0, alive, x.size(1) - alive).zero_();
  }
  return copy;
}

// Which slice of `states` / `cells` holds the state before the k-th processed
// step (k = 0..T) in training; see the layout at the top.
struct StateSlots {
  int64_t T;
  bool reverse;
  int64_t operator()(int64_t k) const { return reverse ? T - k : k; }
};

// The state (h, or lstm's c) entering each processed step k = 0..T of the
// forward. Training keeps all T + 1 in one buffer (`saved`, for backward),
// the initial state copied in. Inference reads the initial state where it is,
// never writing it, and alternates two (B, n) buffers so that the last step
// writes the one returned: no copy in and no clone out (at T = 1, a cell's
// step, those were a tenth of the call).
class StateSequence {
 public:
  StateSequence(const at::Tensor& initial, int64_t T, int64_t B, int64_t n, bool reverse, bool training,
                const at::TensorOptions& opts)
      : T_(T), slot_{T, reverse}, training_(training) {
    if (training) {
      saved_ = at::empty({T + 1, B, n}, opts);
      if (initial.defined()) saved_[slot_(0)].copy_(initial); else saved_[slot_(0)].zero_();
      views_ = steps_of(saved_);
      return;
    }
    views_.push_back(initial.defined() ? initial.contiguous() : at::zeros({B, n}, opts));
    if (T >= 1) views_.push_back(at::empty({B, n}, opts));  // written by the last step
    if (T >= 2) views_.push_back(at::empty({B, n}, opts));
  }

  const at::Tensor& before(int64_t k) const {
    if (training_) return views_[slot_(k)];
    return k == 0 ? views_[0] : views_[(T_ - k) % 2 == 0 ? 1 : 2];
  }
  // The state after the last step, possibly a view of saved() or the caller's initial state.
  const at::Tensor& last() const { return before(T_); }
  // The same as a tensor of its own.
  at::Tensor final_state() const { return training_ || T_ == 0 ? last().clone() : last(); }
  // What backward reads: every state in training, else an empty tensor.
  at::Tensor saved(const at::TensorOptions& opts) const { return training_ ? saved_ : at::empty({0}, opts); }

 private:
  int64_t T_;
  StateSlots slot_;
  bool training_;
  at::Tensor saved_;
  std::vector<at::Tensor> views_;
};

// ---- LayerOptions, checked and put in sorted batch order

struct Extras {
  at::Tensor ln_ih, ln_hh, ln_cell_w, ln_cell_b;  // contiguous gains and bias, or undefined
  at::Tensor keep_h, keep_c;                      // (T, B, H) sorted, contiguous, or undefined
  bool return_cells = false;
  bool any() const {
    return ln_ih.defined() || ln_hh.defined() || ln_cell_w.defined() || keep_h.defined() || keep_c.defined() ||
           return_cells;
  }
  bool per_step() const {  // anything the step rows must do (LN of gi runs on all steps at once)
    return ln_hh.defined() || ln_cell_w.defined() || keep_h.defined() || keep_c.defined() || return_cells;
  }
};

Extras check_options(const LayerOptions& o, const LayerShape& s, const at::Tensor& x, bool projected,
                     const BatchOrder& batch) {
  Extras e;
  if (!o.any()) return e;
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  TORCH_CHECK(!projected, "rnnkernels: LayerNorm, zoneout and return_cells do not take proj_size (w_hr)");
  const bool layer_norm = o.ln_ih_weight.defined() || o.ln_hh_weight.defined();
  TORCH_CHECK(!layer_norm || lstm || gru, "rnnkernels: LayerNorm is for lstm and gru, got ", s.mode == Mode::RnnTanh
              ? "rnn_tanh" : "rnn_relu");
  TORCH_CHECK(o.ln_ih_weight.defined() == o.ln_hh_weight.defined(),
              "rnnkernels: ln_ih_weight and ln_hh_weight go together (a LayerNorm layer normalises both projections)");
  TORCH_CHECK(!o.ln_cell_weight.defined() || lstm, "rnnkernels: ln_cell_weight is for lstm only");
  TORCH_CHECK(o.ln_cell_weight.defined() == o.ln_cell_bias.defined(),
              "rnnkernels: ln_cell_weight and ln_cell_bias go together");
  TORCH_CHECK(!o.keep_c.defined() || lstm, "rnnkernels: zoneout of c (keep_c) is for lstm only");
  TORCH_CHECK(!o.return_cells || lstm, "rnnkernels: return_cells is for lstm only (a ", s.mode == Mode::Gru ? "gru" :
              "plain rnn", " has no cell state)");
  if (o.ln_ih_weight.defined()) {
    check_arg(o.ln_ih_weight, "ln_ih_weight", {s.G * s.H}, x, "(gates * hidden_size,)");
    check_arg(o.ln_hh_weight, "ln_hh_weight", {s.G * s.H}, x, "(gates * hidden_size,)");
    e.ln_ih = o.ln_ih_weight.contiguous();
    e.ln_hh = o.ln_hh_weight.contiguous();
  }
  if (o.ln_cell_weight.defined()) {
    check_arg(o.ln_cell_weight, "ln_cell_weight", {s.H}, x, "(hidden_size,)");
    check_arg(o.ln_cell_bias, "ln_cell_bias", {s.H}, x, "(hidden_size,)");
    e.ln_cell_w = o.ln_cell_weight.contiguous();
    e.ln_cell_b = o.ln_cell_bias.contiguous();
  }
  if (o.keep_h.defined()) {
    check_arg(o.keep_h, "keep_h", {s.T, s.B, s.H}, x, "(T, batch, hidden_size) zoneout keep factors");
    e.keep_h = batch.sort(o.keep_h, 1).contiguous();
  }
  if (o.keep_c.defined()) {
    check_arg(o.keep_c, "keep_c", {s.T, s.B, s.H}, x, "(T, batch, hidden_size) zoneout keep factors");
    e.keep_c = batch.sort(o.keep_c, 1).contiguous();
  }
  e.return_cells = o.return_cells;
  // The per-step extras run in the extended step rows of csrc/cpu/ and csrc/cuda/.
#ifdef RNNKERNELS_WITH_CUDA
  const bool has_extended_steps = x.is_cpu() || x.is_cuda();
#else
  const bool has_extended_steps = x.is_cpu();
#endif
  TORCH_CHECK(!e.per_step() || has_extended_steps, "rnnkernels: LayerNorm of h W_hh^T and of c, zoneout and "
              "return_cells run on the CPU and CUDA kernels only; on ", x.device(), " use the reference backend");
  return e;
}

// (threads, n) zeros of x's accumulation type: a row per thread that a CPU
// pass over rows may run on (csrc/pointwise.h), the caller's own among them.
at::Tensor per_thread_sums(int64_t n, const at::Tensor& x) {
  const int64_t threads = std::max<int64_t>(at::get_num_threads(), at::get_thread_num() + 1);
  return at::zeros({threads, n}, x.options().dtype(at::toOpMathType(x.scalar_type())));
}

// x_hat and rstd of LayerNorm over the last dim of gi (rows, G*H), all rows at once.
std::tuple<at::Tensor, at::Tensor> normalise_rows(const at::Tensor& rows) {
  auto [x_hat, mean, rstd] = at::native_layer_norm(rows, {rows.size(-1)}, c10::nullopt, c10::nullopt,
                                                    cells::kLayerNormEps);
  (void)mean;
  return {x_hat, rstd.view({rows.size(0)})};
}

// Whether a layer runs on packed rows (BatchOrder): uneven lengths on the
// CPU (the CUDA kernels index every step's rows by batch row).
bool packs_rows(const BatchOrder& batch, const at::Tensor& x) { return batch.lengths.defined() && x.is_cpu(); }

struct LayerForward {
  at::Tensor out, h_n, c_n, cell_states, states, cells, gates, hidden_raw;
  at::Tensor x_hat, row_stats, fresh;  // saved by the extras (see rnn_ops.cpp)
};

// The checks of a forward's arguments but lengths and options (forward_impl,
// and rnn_bidirectional_forward for both directions before either runs).
LayerShape check_forward(c10::string_view mode_name, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                         const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
                         const at::Tensor& b_hh, const at::Tensor& w_hr) {
  const LayerShape s = check_layer(mode_name, x, w_ih, w_hh, w_hr);
  if (h0.defined()) check_arg(h0, "h0", {s.B, s.P}, x, w_hr.defined() ? "(batch, proj_size)" : "(batch, hidden_size)");
  TORCH_CHECK(s.mode == Mode::Lstm || !c0.defined(), "rnnkernels: c0 is only for lstm, got one for ",
              std::string(mode_name));
  if (c0.defined()) check_arg(c0, "c0", {s.B, s.H}, x, "(batch, hidden_size)");
  if (b_ih.defined()) check_arg(b_ih, "b_ih", {s.G * s.H}, x, "(gates * hidden_size,)");
  if (b_hh.defined()) check_arg(b_hh, "b_hh", {s.G * s.H}, x, "(gates * hidden_size,)");
  return s;
}

// The loop's per-step tensors (views of gi, out, the state buffers) are
// its own and never reach autograd, yet each view() / select() went through
// ADInplaceOrView and built a DifferentiableViewMeta (libtorch_cpu's share
// of a batch-1 LSTM forward, (200, 1, 64, 128), fell from 5.9% to 5.0% of
// the samples without it; perf, AMD EPYC Zen 4). Below that key they are
// plain views (storage shared, no autograd
// metadata); every output is a fresh tensor or one of these buffers, and
// nothing here writes into a caller's tensor, so no version counter is
// skipped that autograd reads.
using BelowAutogradViews = at::AutoDispatchBelowADInplaceOrView;

LayerForward forward_impl(c10::string_view mode_name, const at::Tensor& x_in, const c10::optional<at::Tensor>& h0_opt,
                          const c10::optional<at::Tensor>& c0_opt, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
                          const c10::optional<at::Tensor>& b_ih_opt, const c10::optional<at::Tensor>& b_hh_opt,
                          const c10::optional<at::Tensor>& w_hr_opt, const c10::optional<at::Tensor>& lengths_opt,
                          bool reverse, bool training, const LayerOptions& options) {
  const BelowAutogradViews below_autograd_views;
  // ---- validate everything before any work
  at::Tensor w_hr = defined_or_empty(w_hr_opt);
  at::Tensor h0 = defined_or_empty(h0_opt), c0 = defined_or_empty(c0_opt);
  at::Tensor b_ih = defined_or_empty(b_ih_opt), b_hh = defined_or_empty(b_hh_opt);
  const LayerShape s = check_forward(mode_name, x_in, h0, c0, w_ih_in, w_hh_in, b_ih, b_hh, w_hr);
  const bool lstm = s.mode == Mode::Lstm;
  const BatchOrder batch(check_lengths(defined_or_empty(lengths_opt), s), s, x_in);
  const Extras extras = check_options(options, s, x_in, w_hr.defined(), batch);
  const at::Tensor& lengths = batch.lengths;
  const bool packed = packs_rows(batch, x_in);

  // x (T, B, I) in sorted batch order, or its packed rows (product_rows, I).
  const at::Tensor x = packed ? batch.pack(x_in, /*callers_order=*/true) : batch.sort(x_in, 1).contiguous();
  const at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  h0 = batch.sort(h0, 0);
  c0 = batch.sort(c0, 0);
  if (w_hr.defined()) w_hr = w_hr.contiguous();
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, GH = s.G * s.H;
  const auto opts = x.options();
  const bool steps_extended = extras.per_step();

  // gi (T, B, G*H) = x W_ih^T for all steps in one GEMM, on W_ih's
  // transposed view: with MKL a contiguous copy made it 1.04-1.8x slower (one
  // big GEMM, unlike the per-step ones of StepWeight). Biases go to the
  // pointwise step.
  // A float32 LSTM on the CPU adds each step's h W_hh^T into gi (the GEMM's
  // C += A B): the vector rows then read one product, not two. Forward on the
  // 2-core Xeon (family 6 model 167), the suite's 1-layer shapes, against
  // the separate gh interleaved in one process: 1.00-1.05x. Not for GRU (r
  // multiplies gh's n part alone), LayerNorm (normalises h W_hh^T alone) or
  // RNN, whose scalar rows gained nothing (0.97-1.03x), nor float64.
  const bool gh_into_gi = x.is_cpu() && lstm && x.scalar_type() == at::kFloat && !steps_extended;
  const gemm::StepWeight w_hh_t(w_hh, /*transpose=*/true, B, /*accumulate=*/gh_into_gi, T);  // (P, G*H)
  at::Tensor gi = at::empty({T, B, GH}, opts);
  // gi's rows in use, and those the product writes (packed: N, then up to product_rows).
  const int64_t rows = packed ? batch.packed_rows() : T * B, product_rows = packed ? batch.product_rows() : T * B;
  const at::Tensor gi_rows = gi.view({T * B, GH}).narrow(0, 0, rows);
  // LN(gi) normalises every row, padding included unless packed: padding must be finite.
  gemm::matmul(gi.view({T * B, GH}).narrow(0, 0, product_rows),
               (extras.ln_ih.defined() && !packed ? without_padding(x, batch) : x).view({product_rows, s.I}), w_ih.t());
  // LayerNorm: x_hat (2, T, B, G*H) of gi and of h W_hh^T; row_stats
  // (T, B, 4): rstd of LN(h W_hh^T), mean and rstd of LN(c), rstd of LN(gi).
  // The gi parts, x_hat[0] and row_stats[..., 3], are indexed like gi: by
  // packed row when packed.
  const bool layer_norm = extras.ln_ih.defined();
  at::Tensor x_hat = training && layer_norm ? at::empty({2, T, B, GH}, opts) : at::empty({0}, opts);
  at::Tensor row_stats = training && (layer_norm || extras.ln_cell_w.defined()) ? at::zeros({T, B, 4}, opts)
                                                                               : at::empty({0}, opts);
  if (layer_norm && x.is_cpu()) {  // gi <- gamma_ih * LN(gi), for all steps at once
    layer_norm_rows_cpu({gi_rows, extras.ln_ih, training ? x_hat[0].view({T * B, GH}).narrow(0, 0, rows) : at::Tensor(),
                         training ? row_stats.select(2, 3).view({T * B}).narrow(0, 0, rows) : at::Tensor()});
  } else if (layer_norm) {
    auto [gi_hat, rstd] = normalise_rows(gi.view({T * B, GH}));
    if (training) {
      x_hat[0].copy_(gi_hat.view({T, B, GH}));
      row_stats.select(2, 3).copy_(rstd.view({T, B}));
    }
    at::mul_out(gi, gi_hat.view({T, B, GH}), extras.ln_ih);
  }
  const at::Tensor zero_bias = (b_ih.defined() && b_hh.defined()) ? at::Tensor() : at::zeros({GH}, opts);
  const at::Tensor bias_ih = b_ih.defined() ? b_ih.contiguous() : zero_bias;
  const at::Tensor bias_hh = b_hh.defined() ? b_hh.contiguous() : zero_bias;

  const StateSequence h_states(h0, T, B, P, reverse, training, opts);
  const std::optional<StateSequence> c_states =
      lstm ? std::make_optional<StateSequence>(c0, T, B, H, reverse, training, opts) : std::nullopt;
  // LSTM on the CPU saves its activations over gi: each step writes them over
  // the pre-activations it has just read, so no second (T, B, 4H) buffer is
  // faulted in and filled. At (64, 32, 256, 256) the forward pointwise pass
  // went from 27-77 to 22-44 us a step (the range is the allocator's state).
  // Not on CUDA yet: its kernel has never run with the two aliased.
  const bool gates_over_gi = lstm && x.is_cpu();
  at::Tensor gates = !training || !saved_gate_count(s.mode) ? at::empty({0}, opts)
                     : gates_over_gi ? gi
                     : at::empty({T, B, saved_gate_count(s.mode) * H}, opts);
  // Packed, the rows past the N written are zeroed: the saved activations
  // are an output, the same on every call (opcheck compares them).
  if (packed) {
    auto zero_unused = [&](const at::Tensor& buffer) { buffer.view({T * B, -1}).narrow(0, rows, T * B - rows).zero_(); };
    if (gates.numel() > 0) zero_unused(gates);
    if (x_hat.numel() > 0) zero_unused(x_hat[0]);
  }
  // h before projection: saved for backward, else one step's scratch.
  at::Tensor hidden_raw = w_hr.defined() ? at::empty({training ? T : 1, B, H}, opts) : at::empty({0}, opts);
  const auto w_hr_t = w_hr.defined() ? std::make_unique<gemm::StepWeight>(w_hr, /*transpose=*/true, B, false, T)
                                      : nullptr;  // (H, P)
  at::Tensor gh = gh_into_gi ? at::Tensor() : at::empty({B, GH}, opts);  // (B, G*H) h_prev W_hh^T of this step
  at::Tensor out = at::empty({T, B, P}, opts);
  // Zoneout: the fresh (pre-zoneout) c (lstm) or h (rnn) that backward needs.
  const bool save_fresh = training && ((lstm && extras.keep_c.defined()) ||
                                       (!lstm && s.mode != Mode::Gru && extras.keep_h.defined()));
  at::Tensor fresh = save_fresh ? at::empty({T, B, H}, opts) : at::empty({0}, opts);
  at::Tensor cell_states = extras.return_cells ? at::empty({T, B, H}, opts) : at::empty({0}, opts);

  auto step_views = [&](const at::Tensor& t) { return packed ? batch.packed_steps(t) : steps_of(t); };
  const auto gi_at = step_views(gi), out_at = steps_of(out);
  const auto x_hat_hh_at = layer_norm && training ? steps_of(x_hat[1]) : std::vector<at::Tensor>();
  const auto stats_at = steps_of(row_stats), fresh_at = steps_of(fresh), cell_out_at = steps_of(cell_states);
  const auto keep_h_at = steps_of(extras.keep_h), keep_c_at = steps_of(extras.keep_c);
  const gemm::SingleThreaded one_thread(tiny_steps(x, T, B, GH, P));
  const auto saved_at = step_views(gates), raw_at = steps_of(hidden_raw);
  ForwardExtras step_extras;
  step_extras.ln_hh_weight = extras.ln_hh;
  step_extras.ln_cell_weight = extras.ln_cell_w;
  step_extras.ln_cell_bias = extras.ln_cell_b;
  for (const auto k : c10::irange(T)) {
    const int64_t t = reverse ? T - 1 - k : k;
    ForwardStep step;
    step.mode = s.mode;
    step.t = t;
    step.lengths = lengths;
    step.gi = gi_at[t];
    if (!gh_into_gi) step.gh = gh;
    step.b_ih = bias_ih;
    step.b_hh = bias_hh;
    step.h_prev = h_states.before(k);
    step.h_next = h_states.before(k + 1);
    const int64_t n = batch.alive[t];  // rows still running: the GEMMs skip the rest
    w_hh_t.multiply(running(gh_into_gi ? step.gi : gh, n), running(step.h_prev, n));
    if (lstm) {
      step.c_prev = c_states->before(k);
      step.c_next = c_states->before(k + 1);
    }
    step.out = out_at[t];
    if (w_hr.defined()) step.h_raw = raw_at[training ? t : 0];
    if (gates.numel() > 0) step.saved = saved_at[t];
    if (steps_extended) {
      step_extras.xhat_hh = x_hat_hh_at.empty() ? at::Tensor() : x_hat_hh_at[t];
      step_extras.row_stats = stats_at.empty() ? at::Tensor() : stats_at[t];
      step_extras.keep_h = keep_h_at.empty() ? at::Tensor() : keep_h_at[t];
      step_extras.keep_c = keep_c_at.empty() ? at::Tensor() : keep_c_at[t];
      step_extras.fresh = fresh_at.empty() ? at::Tensor() : fresh_at[t];
      step_extras.cell_out = cell_out_at.empty() ? at::Tensor() : cell_out_at[t];
      step.extras = &step_extras;
    }
    forward_step(step, x);
    if (w_hr.defined()) {
      w_hr_t->multiply(running(step.out, n), running(step.h_raw, n));
      commit_projection({t, lengths, step.out, step.h_prev, step.h_next}, x);
    }
  }
  LayerForward result;
  // The final states in the caller's batch order (unsort gathers: a new tensor).
  auto final_of = [&](const StateSequence& states) {
    return batch.order.defined() ? batch.unsort(states.last(), 0) : states.final_state();
  };
  result.h_n = final_of(h_states);
  result.c_n = lstm ? final_of(*c_states) : at::empty({0}, opts);
  result.out = batch.unsort(out, 1);
  result.cell_states = extras.return_cells ? batch.unsort(cell_states, 1) : cell_states;
  if (!training) hidden_raw = at::empty({0}, opts);  // nothing to save
  result.states = h_states.saved(opts);
  result.cells = lstm ? c_states->saved(opts) : at::empty({0}, opts);
  result.gates = gates;
  result.hidden_raw = hidden_raw;
  result.x_hat = x_hat;
  result.row_stats = row_stats;
  result.fresh = fresh;
  return result;
}

struct LayerGrads {
  at::Tensor x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_cell_w, ln_cell_b;
  // (rows, G*H): what dW_ih and dW_hh are products of, the gradients of
  // x W_ih^T and of h W_hh^T (the same tensor but for gru). In the forward's
  // row order: the caller's without lengths.
  at::Tensor d_gi, d_gh;
};

LayerGrads backward_impl(c10::string_view mode_name, const c10::optional<at::Tensor>& grad_output_opt,
                         const c10::optional<at::Tensor>& grad_h_n_opt, const c10::optional<at::Tensor>& grad_c_n_opt,
                         const c10::optional<at::Tensor>& grad_cells_opt, const at::Tensor& x_in,
                         const at::Tensor& w_ih_in, const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& w_hr_opt,
                         const c10::optional<at::Tensor>& lengths_opt, bool reverse, const at::Tensor& states,
                         const at::Tensor& cells, const at::Tensor& gates, const at::Tensor& hidden_raw, bool has_bias,
                         bool input_grad, bool weight_grad, const LayerOptions& options, const at::Tensor& x_hat,
                         const at::Tensor& row_stats, const at::Tensor& fresh) {
  const BelowAutogradViews below_autograd_views;
  at::Tensor w_hr = defined_or_empty(w_hr_opt);
  const LayerShape s = check_layer(mode_name, x_in, w_ih_in, w_hh_in, w_hr);
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, P = s.P, GH = s.G * s.H;
  at::Tensor grad_output = defined_or_empty(grad_output_opt);
  at::Tensor grad_h_n = defined_or_empty(grad_h_n_opt), grad_c_n = defined_or_empty(grad_c_n_opt);
  at::Tensor grad_cells = defined_or_empty(grad_cells_opt);
  if (grad_output.defined()) check_arg(grad_output, "grad_output", {T, B, P}, x_in, "(T, batch, out_size)");
  if (grad_h_n.defined()) check_arg(grad_h_n, "grad_h_n", {B, P}, x_in, "(batch, out_size)");
  TORCH_CHECK(lstm || !grad_c_n.defined() || grad_c_n.numel() == 0,
              "rnnkernels: grad_c_n is only for lstm");
  if (!lstm) grad_c_n = at::Tensor();
  if (grad_c_n.defined()) check_arg(grad_c_n, "grad_c_n", {B, H}, x_in, "(batch, hidden_size)");
  check_arg(states, "states", {T + 1, B, P}, x_in, "(T + 1, batch, out_size) saved by a training forward");
  if (lstm) check_arg(cells, "cells", {T + 1, B, H}, x_in, "(T + 1, batch, hidden_size)");
  if (saved_gate_count(s.mode)) check_arg(gates, "gates", {T, B, saved_gate_count(s.mode) * H}, x_in, "(T, batch, 4 * hidden_size)");
  if (w_hr.defined()) check_arg(hidden_raw, "hidden_raw", {T, B, H}, x_in, "(T, batch, hidden_size)");
  const BatchOrder batch(check_lengths(defined_or_empty(lengths_opt), s), s, x_in);
  const Extras extras = check_options(options, s, x_in, w_hr.defined(), batch);
  const bool layer_norm = extras.ln_ih.defined(), ln_cell = extras.ln_cell_w.defined();
  if (grad_cells.defined()) {
    TORCH_CHECK(extras.return_cells, "rnnkernels: grad_cell_states is only for a forward with return_cells");
    check_arg(grad_cells, "grad_cell_states", {T, B, H}, x_in, "(T, batch, hidden_size)");
  }
  if (layer_norm) check_arg(x_hat, "x_hat", {2, T, B, GH}, x_in, "(2, T, batch, gates * hidden_size) saved");
  if (layer_norm || ln_cell) check_arg(row_stats, "row_stats", {T, B, 4}, x_in, "(T, batch, 4) saved");
  const at::Tensor& lengths = batch.lengths;

  const bool packed = packs_rows(batch, x_in);  // as the forward did

  // Into the forward's sorted batch order (see BatchOrder), or its packed rows (product_rows, I).
  const at::Tensor x = packed ? batch.pack(x_in, /*callers_order=*/true) : batch.sort(x_in, 1).contiguous();
  const at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  if (w_hr.defined()) w_hr = w_hr.contiguous();
  if (grad_output.defined()) grad_output = batch.sort(grad_output, 1).contiguous();
  if (grad_cells.defined()) grad_cells = batch.sort(grad_cells, 1).contiguous();
  grad_h_n = batch.sort(grad_h_n, 0);
  grad_c_n = batch.sort(grad_c_n, 0);
  const auto opts = x.options();
  const StateSlots slot{T, reverse};

  // d_pre (T, B, G*H): gradient of the input-side pre-activations; gru also
  // d_gh (T, B, 3H) for the recurrent side (they differ in the n part). With
  // LayerNorm, d_gh_raw (T, B, G*H): the gradient of h W_hh^T before it.
  at::Tensor d_pre = at::empty({T, B, GH}, opts);
  at::Tensor d_gh_all = gru ? at::empty({T, B, GH}, opts) : d_pre;
  at::Tensor d_gh_raw = layer_norm ? at::empty({T, B, GH}, opts) : d_gh_all;
  at::Tensor d_ln_cell = ln_cell ? at::empty({T, B, 2 * H}, opts) : at::Tensor();
  at::Tensor dh = grad_h_n.defined() ? grad_h_n.contiguous().clone() : at::zeros({B, P}, opts);  // (B, P) carry
  at::Tensor dh_prev = at::empty({B, P}, opts);
  at::Tensor dc;  // (B, H) lstm carry, updated in place
  if (lstm) dc = grad_c_n.defined() ? grad_c_n.contiguous().clone() : at::zeros({B, H}, opts);
  // With projection: d of the projected h per step (T, B, P) and of h_raw (B, H).
  at::Tensor d_proj = w_hr.defined() ? at::empty({T, B, P}, opts) : at::Tensor();
  at::Tensor dh_raw = w_hr.defined() ? at::empty({B, H}, opts) : at::Tensor();

  auto step_views = [&](const at::Tensor& t) { return packed ? batch.packed_steps(t) : steps_of(t); };
  const auto state_at = steps_of(states), cell_at = steps_of(cells), saved_at = step_views(gates);
  const auto d_pre_at = step_views(d_pre), d_gh_at = step_views(d_gh_all), d_proj_at = steps_of(d_proj);
  const auto d_gh_raw_at = step_views(d_gh_raw), d_ln_cell_at = steps_of(d_ln_cell);
  const auto x_hat_hh_at = layer_norm ? steps_of(x_hat[1]) : std::vector<at::Tensor>();
  const auto stats_at = steps_of(row_stats), fresh_at = steps_of(fresh), grad_cells_at = steps_of(grad_cells);
  const auto keep_h_at = steps_of(extras.keep_h), keep_c_at = steps_of(extras.keep_c);
  BackwardExtras step_extras;
  step_extras.ln_hh_weight = extras.ln_hh;
  step_extras.ln_cell_weight = extras.ln_cell_w;
  step_extras.ln_cell_bias = extras.ln_cell_b;
  // The CPU rows sum the gain of LN(h W_hh^T)'s gradient as they go.
  const at::Tensor ln_hh_grad_sums = layer_norm && weight_grad && x.is_cpu() ? per_thread_sums(GH, x) : at::Tensor();
  step_extras.ln_hh_grad_sums = ln_hh_grad_sums;
  {  // The step loop; the GEMMs over all steps below use every thread.
    const gemm::SingleThreaded one_thread(tiny_steps(x, T, B, GH, P));
    const gemm::StepWeight w_hh_step(w_hh, /*transpose=*/false, B, /*accumulate=*/true, T);  // (G*H, P)
    const auto w_hr_step = w_hr.defined() ? std::make_unique<gemm::StepWeight>(w_hr, /*transpose=*/false, B, false, T)
                                          : nullptr;  // (P, H)
    const auto grad_out_at = steps_of(grad_output);
    auto at_or_none = [](const std::vector<at::Tensor>& v, int64_t t) { return v.empty() ? at::Tensor() : v[t]; };
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t t = reverse ? T - 1 - k : k;
      BackwardStep step;
      step.mode = s.mode;
      step.t = t;
      step.lengths = lengths;
      step.dh = dh;
      const int64_t n = batch.alive[t];  // rows still running: the GEMMs skip the rest
      if (w_hr.defined()) {
        gather_projected_grad({t, lengths, dh, grad_output.defined() ? grad_out_at[t] : at::Tensor(), d_proj_at[t]}, x);
        w_hr_step->multiply(running(dh_raw, n), running(d_proj_at[t], n));
        step.dh_raw = dh_raw;
      } else if (grad_output.defined()) {
        step.grad_out = grad_out_at[t];
      }
      step.dc = dc;
      if (gates.numel() > 0) step.saved = saved_at[t];
      step.h_prev = state_at[slot(k)];
      step.h_next = state_at[slot(k + 1)];
      if (lstm) {
        step.c_prev = cell_at[slot(k)];
        step.c_next = cell_at[slot(k + 1)];
      }
      step.d_pre = d_pre_at[t];
      if (gru) step.d_gh = d_gh_at[t];
      step.dh_prev = dh_prev;
      if (extras.any()) {
        step_extras.xhat_hh = at_or_none(x_hat_hh_at, t);
        step_extras.row_stats = at_or_none(stats_at, t);
        step_extras.keep_h = at_or_none(keep_h_at, t);
        step_extras.keep_c = at_or_none(keep_c_at, t);
        step_extras.fresh = at_or_none(fresh_at, t);
        step_extras.grad_cell_out = at_or_none(grad_cells_at, t);
        step_extras.d_gh_raw = layer_norm ? d_gh_raw_at[t] : at::Tensor();
        step_extras.d_ln_cell = at_or_none(d_ln_cell_at, t);
        step.extras = &step_extras;
      }
      backward_step(step, x);
      w_hh_step.multiply(running(dh_prev, n), running(d_gh_raw_at[t], n));  // += (n, G*H) @ (G*H, P)
      std::swap(dh, dh_prev);
    }
  }

  // Everything below is one GEMM (or reduction) over all T*B rows, or over
  // the packed ones: the N the steps wrote, then zeros up to product_rows.
  const int64_t rows = packed ? batch.packed_rows() : T * B, product_rows = packed ? batch.product_rows() : T * B;
  for (const at::Tensor& written : {d_pre, d_gh_all, d_gh_raw}) {
    written.view({T * B, GH}).narrow(0, rows, product_rows - rows).zero_();
  }
  const at::Tensor d_pre_2d = d_pre.view({T * B, GH}).narrow(0, 0, product_rows);
  const at::Tensor d_gh_2d = d_gh_all.view({T * B, GH}).narrow(0, 0, product_rows);
  LayerGrads grads;
  // gi = gamma_ih * LN(x W_ih^T): back through the LayerNorm, all rows at once.
  at::Tensor d_gi_raw = d_pre_2d;
  if (layer_norm && x.is_cpu()) {
    // One pass per row: d gi over d_pre's storage, and per thread the sums of
    // gamma_ih's and the input bias's gradients (csrc/pointwise.h); gamma_hh's
    // were summed by the step rows.
    const at::Tensor sums = weight_grad ? per_thread_sums(2 * GH, x) : at::Tensor();
    const at::Tensor d_pre_used = d_pre_2d.narrow(0, 0, rows);
    layer_norm_rows_backward_cpu({d_pre_used, x_hat[0].view({T * B, GH}).narrow(0, 0, rows),
                                  row_stats.select(2, 3).view({T * B}).narrow(0, 0, rows), extras.ln_ih, d_pre_used,
                                  sums});
    if (weight_grad) {
      const at::Tensor total = sums.sum(0).view({2, GH}).to(x.scalar_type());
      grads.ln_ih = total[0];
      grads.ln_hh = ln_hh_grad_sums.sum(0).to(x.scalar_type());
      if (has_bias) {
        grads.b_ih = total[1];
        grads.b_hh = gru ? d_gh_2d.sum(0) : grads.b_ih.clone();
      }
    }
  } else {
    if (weight_grad && has_bias) {
      grads.b_ih = d_pre_2d.sum(0);
      grads.b_hh = gru ? d_gh_2d.sum(0) : grads.b_ih.clone();
    }
    if (layer_norm) {
      const at::Tensor gi_hat = x_hat[0].view({T * B, GH}), rstd = row_stats.select(2, 3).reshape({T * B, 1});
      // ATen's fused LayerNorm backward, handed x_hat itself as its input with
      // mean 0 and rstd 1, gives rstd_gi^-1 * d gi and the gain's gradient.
      const at::Tensor unit_mean = at::zeros({T * B, 1}, opts), unit_rstd = at::ones({T * B, 1}, opts);
      auto [d_gi_unscaled, d_ln_ih, unused] = at::native_layer_norm_backward(
          d_pre_2d, gi_hat, {GH}, unit_mean, unit_rstd, extras.ln_ih, c10::nullopt, {true, weight_grad, false});
      (void)unused;
      if (weight_grad) {
        grads.ln_ih = d_ln_ih;
        // The gain's gradient, sum over rows of d_gh * x_hat_hh, by the same kernel.
        grads.ln_hh = std::get<1>(at::native_layer_norm_backward(d_gh_2d, x_hat[1].view({T * B, GH}), {GH}, unit_mean,
                                                                 unit_rstd, extras.ln_hh, c10::nullopt,
                                                                 {false, true, false}));
      }
      d_gi_raw = d_gi_unscaled.mul_(rstd);
    }
  }
  if (ln_cell && weight_grad) {
    const at::Tensor sums = d_ln_cell.view({T * B, 2 * H}).sum(0);
    grads.ln_cell_w = sums.narrow(0, 0, H);
    grads.ln_cell_b = sums.narrow(0, H, H);
  }
  auto product = [&](const at::Tensor& a, const at::Tensor& b) {
    at::Tensor out = at::empty({a.size(0), b.size(1)}, opts);
    gemm::matmul(out, a, b);
    return out;
  };
  if (input_grad) {
    const at::Tensor dx = product(d_gi_raw, w_ih);
    grads.x = packed ? batch.unpack(dx) : batch.unsort(dx.view({T, B, I}), 1);
  }
  if (weight_grad) {
    grads.w_ih = product(d_gi_raw.t(), packed ? x : without_padding(x, batch).view({T * B, I}));
    // The state entering step t, for all t: states[0:T] forward, states[1:T+1]
    // in reverse; a frozen one past its sequence's end zeroed like x (an Inf
    // state at the end would otherwise meet the zero d_gh there) or left out.
    const at::Tensor entering = states.narrow(0, reverse ? 1 : 0, T);
    const at::Tensor h_entering = packed ? batch.pack(entering, /*callers_order=*/false)
                                         : without_padding(entering, batch).reshape({T * B, P});
    grads.w_hh = product(d_gh_raw.view({T * B, GH}).narrow(0, 0, product_rows).t(), h_entering);
    if (w_hr.defined()) grads.w_hr = product(d_proj.view({T * B, P}).t(), hidden_raw.view({T * B, H}));
  }
  grads.d_gi = d_gi_raw;
  grads.d_gh = d_gh_raw.view({T * B, GH}).narrow(0, 0, product_rows);
  grads.h0 = batch.unsort(dh, 0);
  grads.c0 = batch.unsort(dc, 0);
  return grads;
}

// Gradients not asked for (or of absent arguments) are empty tensors.
at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_forward(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool reverse, bool training) {
  LayerForward r = forward_impl(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training, {});
  return {r.out, r.h_n, r.c_n, r.states, r.cells, r.gates, r.hidden_raw};
}

namespace {

// run(false) and run(true), the two directions of a bidirectional layer, at
// once, one OpenMP thread each: inside the region at::parallel_for runs
// inline and MKL and oneDNN run sequentially (nested regions get one
// thread), so each loop is single-threaded. A team of one runs both. The
// caller's thread-local state (grad mode, dispatch keys) goes with the other
// thread, as at::launch passes it. Rethrows a direction's failure.
template <typename Run>
void on_two_threads(const Run& run) {
  gemm::gemm_engine();  // a first call measures the engines on the caller's threads, before the split
  std::exception_ptr failures[2];
  const at::ThreadLocalState caller_state;
#pragma omp parallel num_threads(2)
  {
    const at::ThreadLocalStateGuard state(caller_state);
    const int thread = omp_get_thread_num(), team = omp_get_num_threads();
    for (int direction = thread; direction < 2; direction += team) {
      try {
        run(direction == 1);
      } catch (...) {
        failures[direction] = std::current_exception();
      }
    }
  }
  for (const auto& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
}

}  // namespace

std::vector<at::Tensor> rnn_bidirectional_forward(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& h0_reverse, const c10::optional<at::Tensor>& c0_reverse,
    const at::Tensor& w_ih_reverse, const at::Tensor& w_hh_reverse, const c10::optional<at::Tensor>& b_ih_reverse,
    const c10::optional<at::Tensor>& b_hh_reverse, const c10::optional<at::Tensor>& lengths, bool training) {
  TORCH_CHECK(x.is_cpu(), "rnnkernels.rnn_bidirectional_forward: CPU tensors only, got ", x.device());
  const at::Tensor none;
  for (const bool reverse : {false, true}) {
    const LayerShape s = check_forward(mode, x, defined_or_empty(reverse ? h0_reverse : h0),
                                       defined_or_empty(reverse ? c0_reverse : c0), reverse ? w_ih_reverse : w_ih,
                                       reverse ? w_hh_reverse : w_hh, defined_or_empty(reverse ? b_ih_reverse : b_ih),
                                       defined_or_empty(reverse ? b_hh_reverse : b_hh), none);
    check_lengths(defined_or_empty(lengths), s);
  }
  LayerForward results[2];
  on_two_threads([&](bool reverse) {
    results[reverse] = reverse ? forward_impl(mode, x, h0_reverse, c0_reverse, w_ih_reverse, w_hh_reverse,
                                              b_ih_reverse, b_hh_reverse, c10::nullopt, lengths, true, training, {})
                               : forward_impl(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, c10::nullopt, lengths, false,
                                              training, {});
  });
  std::vector<at::Tensor> outputs;
  for (const LayerForward& r : results) {
    for (const at::Tensor& t : {r.out, r.h_n, r.c_n, r.states, r.cells, r.gates}) outputs.push_back(t);
  }
  return outputs;
}

std::vector<at::Tensor> rnn_bidirectional_backward(
    c10::string_view mode, const c10::optional<at::Tensor>& grad_output, const c10::optional<at::Tensor>& grad_h_n,
    const c10::optional<at::Tensor>& grad_c_n, const c10::optional<at::Tensor>& grad_output_reverse,
    const c10::optional<at::Tensor>& grad_h_n_reverse, const c10::optional<at::Tensor>& grad_c_n_reverse,
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_ih_reverse,
    const at::Tensor& w_hh_reverse, const c10::optional<at::Tensor>& lengths, const at::Tensor& states,
    const at::Tensor& cells, const at::Tensor& gates, const at::Tensor& states_reverse,
    const at::Tensor& cells_reverse, const at::Tensor& gates_reverse, bool has_bias, bool input_grad,
    bool weight_grad) {
  TORCH_CHECK(x.is_cpu(), "rnnkernels.rnn_bidirectional_backward: CPU tensors only, got ", x.device());
  const at::Tensor none;
  LayerGrads grads[2];
  on_two_threads([&](bool reverse) {
    grads[reverse] =
        reverse ? backward_impl(mode, grad_output_reverse, grad_h_n_reverse, grad_c_n_reverse, c10::nullopt, x,
                                w_ih_reverse, w_hh_reverse, c10::nullopt, lengths, true, states_reverse,
                                cells_reverse, gates_reverse, none, has_bias, input_grad, weight_grad, {}, none, none,
                                none)
                : backward_impl(mode, grad_output, grad_h_n, grad_c_n, c10::nullopt, x, w_ih, w_hh, c10::nullopt,
                                lengths, false, states, cells, gates, none, has_bias, input_grad, weight_grad, {},
                                none, none, none);
  });
  std::vector<at::Tensor> outputs;
  for (const LayerGrads& g : grads) {
    for (const at::Tensor& t : {g.x, g.h0, g.c0, g.w_ih, g.w_hh, g.b_ih, g.b_hh}) outputs.push_back(or_empty(t, x));
  }
  return outputs;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rnn_layer_backward(c10::string_view mode, const c10::optional<at::Tensor>& grad_output,
                   const c10::optional<at::Tensor>& grad_h_n, const c10::optional<at::Tensor>& grad_c_n,
                   const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                   const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool reverse,
                   const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates,
                   const at::Tensor& hidden_raw, bool has_bias, bool input_grad, bool weight_grad) {
  const at::Tensor none;
  LayerGrads g = backward_impl(mode, grad_output, grad_h_n, grad_c_n, c10::nullopt, x, w_ih, w_hh, w_hr, lengths,
                               reverse, states, cells, gates, hidden_raw, has_bias, input_grad, weight_grad, {}, none,
                               none, none);
  return {or_empty(g.x, x), g.h0, or_empty(g.c0, x), or_empty(g.w_ih, x), or_empty(g.w_hh, x),
          or_empty(g.b_ih, x), or_empty(g.b_hh, x), or_empty(g.w_hr, x)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_gate_grads(
    c10::string_view mode, const c10::optional<at::Tensor>& grad_output, const c10::optional<at::Tensor>& grad_h_n,
    const c10::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    bool reverse, const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates, bool input_grad) {
  const at::Tensor none;
  LayerGrads g = backward_impl(mode, grad_output, grad_h_n, grad_c_n, c10::nullopt, x, w_ih, w_hh, c10::nullopt,
                               c10::nullopt, reverse, states, cells, gates, none, /*has_bias=*/false, input_grad,
                               /*weight_grad=*/false, {}, none, none, none);
  const int64_t T = x.size(0), B = x.size(1), GH = w_ih.size(0);
  // An output may not alias another: d_gh is empty where it is d_gi.
  const at::Tensor d_gh = g.d_gh.data_ptr() == g.d_gi.data_ptr() ? at::empty({0}, x.options()) : g.d_gh.view({T, B, GH});
  return {or_empty(g.x, x), g.h0, or_empty(g.c0, x), g.d_gi.view({T, B, GH}), d_gh};
}

namespace {

LayerOptions options_of(const c10::optional<at::Tensor>& ln_ih, const c10::optional<at::Tensor>& ln_hh,
                        const c10::optional<at::Tensor>& ln_cell_w, const c10::optional<at::Tensor>& ln_cell_b,
                        const c10::optional<at::Tensor>& keep_h, const c10::optional<at::Tensor>& keep_c,
                        bool return_cells) {
  LayerOptions o;
  o.ln_ih_weight = defined_or_empty(ln_ih);
  o.ln_hh_weight = defined_or_empty(ln_hh);
  o.ln_cell_weight = defined_or_empty(ln_cell_w);
  o.ln_cell_bias = defined_or_empty(ln_cell_b);
  o.keep_h = defined_or_empty(keep_h);
  o.keep_c = defined_or_empty(keep_c);
  o.return_cells = return_cells;
  return o;
}

}  // namespace

ExtendedForward rnn_layer_forward_ext(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& lengths, bool reverse, bool training, const c10::optional<at::Tensor>& ln_ih,
    const c10::optional<at::Tensor>& ln_hh, const c10::optional<at::Tensor>& ln_cell_w,
    const c10::optional<at::Tensor>& ln_cell_b, const c10::optional<at::Tensor>& keep_h,
    const c10::optional<at::Tensor>& keep_c, bool return_cells) {
  LayerForward r = forward_impl(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, c10::nullopt, lengths, reverse, training,
                                options_of(ln_ih, ln_hh, ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells));
  return {r.out, r.h_n, r.c_n, r.cell_states, r.states, r.cells, r.gates, r.x_hat, r.row_stats, r.fresh};
}

ExtendedBackward rnn_layer_backward_ext(
    c10::string_view mode, const c10::optional<at::Tensor>& grad_output, const c10::optional<at::Tensor>& grad_h_n,
    const c10::optional<at::Tensor>& grad_c_n, const c10::optional<at::Tensor>& grad_cell_states, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates, const at::Tensor& x_hat,
    const at::Tensor& row_stats, const at::Tensor& fresh, bool has_bias, bool input_grad, bool weight_grad,
    const c10::optional<at::Tensor>& ln_ih, const c10::optional<at::Tensor>& ln_hh,
    const c10::optional<at::Tensor>& ln_cell_w, const c10::optional<at::Tensor>& ln_cell_b,
    const c10::optional<at::Tensor>& keep_h, const c10::optional<at::Tensor>& keep_c, bool return_cells) {
  const at::Tensor none;
  LayerGrads g = backward_impl(mode, grad_output, grad_h_n, grad_c_n, grad_cell_states, x, w_ih, w_hh, c10::nullopt,
                               lengths, reverse, states, cells, gates, none, has_bias, input_grad, weight_grad,
                               options_of(ln_ih, ln_hh, ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells), x_hat,
                               row_stats, fresh);
  return {or_empty(g.x, x),         g.h0,
          or_empty(g.c0, x),        or_empty(g.w_ih, x),
          or_empty(g.w_hh, x),      or_empty(g.b_ih, x),
          or_empty(g.b_hh, x),      or_empty(g.ln_ih, x),
          or_empty(g.ln_hh, x),     or_empty(g.ln_cell_w, x),
          or_empty(g.ln_cell_b, x)};
}

}  // namespace rnnkernels
