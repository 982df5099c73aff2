// The CUDA side of the recurrent-layer ops: at::Tensor glue from the step
// structs of csrc/pointwise.h to the raw-pointer launchers of
// csrc/cuda/launchers.h, the persistent small-batch forward, and the
// registration of rnn_layer_forward / rnn_layer_backward (schemas in
// csrc/rnn_ops.cpp) for the CUDA dispatch key.
//
// The sequence loop is csrc/rnn_layer.cpp's, shared with the CPU: its GEMMs
// go through ATen (cuBLAS on the current stream) and its pointwise steps come
// here. Every launch is preceded by checks of the buffers it touches and
// followed by a check of its CUDA error (RK_CUDA_CHECK).
//
// Which path runs (rnn_layer_forward_cuda, rnn_layer_backward_cuda):
//   persistent kernel  lstm or gru, no projection, float32 or bfloat16,
//                      1 <= B <= 32, the device supports cooperative launch,
//                      and W_hh fits in the shared memory of one block per
//                      SM (plan_persistent: U = ceil(H / SMs) hidden units
//                      per block, each block's slice of W_hh plus buffers
//                      within the opt-in shared memory per block; on an H100,
//                      132 SMs x 227 KiB, that is an fp32 LSTM up to
//                      H ~ 1200 and a bf16 one up to H ~ 1700, by a model of
//                      the search, not measured). Per step it saves a GEMM
//                      launch, a pointwise launch and the round
//                      trip of the gate pre-activations through global
//                      memory, and reads W_hh from shared memory instead of
//                      L2/HBM: what dominates a small-batch step.
//   step-kernel loop   everything else (csrc/rnn_layer.cpp): per step one
//                      cuBLAS GEMM and one fused pointwise kernel.
//   extended op        rnn_layer_forward_ext / rnn_layer_backward_ext
//                      (LayerNorm, zoneout, return_cells): always the step
//                      loop, with the extended step kernels of
//                      csrc/cuda/pointwise_ext_kernels.cu (one block per
//                      batch row, LayerNorm's row reductions in the block).
// Forward and backward decide separately; both read and write the same
// saved-activation layout, so either backward follows either forward.
// RNNKERNELS_CUDA_PERSISTENT=0 forces the step loop; =1 requires the
// persistent kernels (a well-formed call they cannot run is an error; a
// malformed one still gets the step loop's argument error): the tests use
// both to cover both paths. Where the persistent path beats the step loop
// beyond B <= 32 is for the GPU benchmarks (benchmarks/cuda_rnn_paths.py)
// to tell; the bound is a first guess, not a measurement.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <tuple>

#include "cuda/launchers.h"
#include "pointwise.h"
#include "rnn_layer.h"
#include "sorted_batch.h"

// Raises a c10::Error naming the failed operation and CUDA's message.
#define RK_CUDA_CHECK(expr, what)                                                                           \
  do {                                                                                                      \
    const cudaError_t rk_err_ = (expr);                                                                     \
    TORCH_CHECK(rk_err_ == cudaSuccess, "rnnkernels: CUDA error in ", what, ": ", cudaGetErrorString(rk_err_)); \
  } while (0)

namespace rnnkernels {
namespace {

cuda::Cell to_cell(Mode mode) {
  switch (mode) {
    case Mode::RnnTanh: return cuda::Cell::RnnTanh;
    case Mode::RnnRelu: return cuda::Cell::RnnRelu;
    case Mode::Lstm: return cuda::Cell::Lstm;
    case Mode::Gru: return cuda::Cell::Gru;
  }
  TORCH_CHECK(false, "rnnkernels: unknown cell mode");
}

// torch's scalar types -> the CUDA storage types the kernels are built for
// (bit-compatible: both are IEEE half / bfloat16).
template <typename scalar_t>
struct CudaStorage {
  using type = scalar_t;
};
template <>
struct CudaStorage<at::Half> {
  using type = __half;
};
template <>
struct CudaStorage<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
T* ptr(const at::Tensor& tensor) {
  return tensor.defined() ? reinterpret_cast<T*>(tensor.data_ptr()) : nullptr;
}

// Internal invariants of a step buffer (the layer loop built it): defined,
// contiguous, on `like`'s CUDA device with its dtype, of shape (rows, cols).
void check_buffer(const at::Tensor& t, const char* name, int64_t rows, int64_t cols, const at::Tensor& like) {
  TORCH_CHECK(t.defined(), "rnnkernels (cuda step): ", name, " is missing");
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "rnnkernels (cuda step): ", name, " must be on ",
              like.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "rnnkernels (cuda step): ", name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "rnnkernels (cuda step): ", name,
              " must have shape (", rows, ", ", cols, "), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "rnnkernels (cuda step): ", name, " must be contiguous");
}

void check_optional_buffer(const at::Tensor& t, const char* name, int64_t rows, int64_t cols,
                           const at::Tensor& like) {
  if (t.defined()) check_buffer(t, name, rows, cols, like);
}

void check_device_lengths(const at::Tensor& lengths, int64_t B, const at::Tensor& like) {
  if (!lengths.defined()) return;
  TORCH_CHECK(lengths.device() == like.device() && lengths.scalar_type() == at::kLong && lengths.dim() == 1 &&
                  lengths.size(0) == B && lengths.is_contiguous(),
              "rnnkernels (cuda step): lengths must be a contiguous (", B, ",) int64 tensor on ", like.device(),
              ", got ", lengths.scalar_type(), " ", lengths.sizes(), " on ", lengths.device());
}

const int64_t* lengths_ptr(const at::Tensor& lengths) {
  return lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The fields ForwardStepArgs and BackwardStepArgs share, from a ForwardStep or BackwardStep.
template <typename Args, typename Step>
void set_step_shape(Args& a, const Step& s, int64_t B, int64_t H, int64_t P) {
  a.cell = to_cell(s.mode);
  a.t = s.t;
  a.B = B;
  a.H = H;
  a.P = P;
  a.lengths = lengths_ptr(s.lengths);
}

// A (n,) gain or bias: check_buffer on its (1, n) view.
void check_vector(const at::Tensor& t, const char* name, int64_t n, const at::Tensor& like) {
  TORCH_CHECK(t.defined() && t.dim() == 1, "rnnkernels (cuda step): ", name, " must be a 1-D tensor of ", n,
              " values");
  check_buffer(t.view({1, -1}), name, 1, n, like);
}

void check_optional_vector(const at::Tensor& t, const char* name, int64_t n, const at::Tensor& like) {
  if (t.defined()) check_vector(t, name, n, like);
}

// row_stats: this step's (B, 4) slice of the saved (T, B, 4); the step rows
// touch its columns 0..2 (column 3 is LN(gi)'s rstd, written by the loop).
void check_row_stats(const at::Tensor& t, int64_t B, const at::Tensor& like) {
  if (!t.defined()) return;
  TORCH_CHECK(t.dim() == 2 && t.size(1) >= 3, "rnnkernels (cuda step): row_stats must be (", B,
              ", >= 3), got ", t.sizes());
  check_buffer(t, "row_stats", B, t.size(1), like);
}

// The extended kernels' shared memory (lstm: two (H,) rows per block) must fit one block.
template <typename T>
void check_ext_fits(Mode mode, int64_t H) {
  bool fits = false;
  RK_CUDA_CHECK(cuda::ext_step_fits<T>(to_cell(mode), H, &fits), "sizing the extended step kernels");
  TORCH_CHECK(fits, "rnnkernels: hidden_size ", H, " is too large for the CUDA kernels of LayerNorm, zoneout and "
              "return_cells (", cuda::ext_step_shared_bytes<T>(to_cell(mode), H), " bytes of shared memory per "
              "block); use backend='reference'");
}

// The extended rows (s.extras set): LayerNorm of h W_hh^T and of c, zoneout,
// cell outputs; no projection (csrc/rnn_layer.cpp refuses it with extras).
void forward_step_ext_cuda(const ForwardStep& s) {
  const ForwardExtras& e = *s.extras;
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  TORCH_CHECK(!s.h_raw.defined(), "rnnkernels (cuda step): LayerNorm, zoneout and return_cells take no projection");
  TORCH_CHECK(s.b_ih.defined() && s.b_hh.defined(),
              "rnnkernels (cuda step): b_ih and b_hh must be given (zeros when the layer has none)");
  const at::Tensor& like = s.gi;
  const int64_t B = s.gi.size(0), H = s.h_prev.size(1), GH = gate_count(s.mode) * H;
  check_buffer(s.gi, "gi", B, GH, like);
  check_buffer(s.gh, "gh", B, GH, like);
  check_vector(s.b_ih, "b_ih", GH, like);
  check_vector(s.b_hh, "b_hh", GH, like);
  check_buffer(s.h_prev, "h_prev", B, H, like);
  check_buffer(s.h_next, "h_next", B, H, like);
  check_buffer(s.out, "out", B, H, like);
  if (lstm) {
    check_buffer(s.c_prev, "c_prev", B, H, like);
    check_buffer(s.c_next, "c_next", B, H, like);
  }
  if (lstm || gru) check_optional_buffer(s.saved, "saved", B, 4 * H, like);
  TORCH_CHECK(!e.ln_hh_weight.defined() || lstm || gru, "rnnkernels (cuda step): LayerNorm is for lstm and gru");
  TORCH_CHECK(e.ln_cell_weight.defined() == e.ln_cell_bias.defined() && (!e.ln_cell_weight.defined() || lstm),
              "rnnkernels (cuda step): ln_cell_weight and ln_cell_bias go together, lstm only");
  TORCH_CHECK(lstm || (!e.keep_c.defined() && !e.cell_out.defined()),
              "rnnkernels (cuda step): keep_c and cell_out are for lstm only");
  check_optional_vector(e.ln_hh_weight, "ln_hh_weight", GH, like);
  check_optional_buffer(e.xhat_hh, "xhat_hh", B, GH, like);
  check_optional_vector(e.ln_cell_weight, "ln_cell_weight", H, like);
  check_optional_vector(e.ln_cell_bias, "ln_cell_bias", H, like);
  check_row_stats(e.row_stats, B, like);
  check_optional_buffer(e.keep_h, "keep_h", B, H, like);
  check_optional_buffer(e.keep_c, "keep_c", B, H, like);
  check_optional_buffer(e.fresh, "fresh", B, H, like);
  check_optional_buffer(e.cell_out, "cell_out", B, H, like);
  check_device_lengths(s.lengths, B, like);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, like.scalar_type(), "rnnkernels_forward_step_ext_cuda", [&] {
    using T = typename CudaStorage<scalar_t>::type;
    check_ext_fits<T>(s.mode, H);
    cuda::ForwardStepArgs<T> a;
    set_step_shape(a, s, B, H, H);
    a.gi = ptr<T>(s.gi);
    a.gh = ptr<T>(s.gh);
    a.b_ih = ptr<T>(s.b_ih);
    a.b_hh = ptr<T>(s.b_hh);
    a.h_prev = ptr<T>(s.h_prev);
    a.h_next = ptr<T>(s.h_next);
    a.c_prev = lstm ? ptr<T>(s.c_prev) : nullptr;
    a.c_next = lstm ? ptr<T>(s.c_next) : nullptr;
    a.out = ptr<T>(s.out);
    a.h_raw = nullptr;
    a.saved = lstm || gru ? ptr<T>(s.saved) : nullptr;
    cuda::ForwardExtrasArgs<T> x;
    x.gh = ptr<T>(s.gh);
    x.ln_hh_weight = ptr<T>(e.ln_hh_weight);
    x.xhat_hh = ptr<T>(e.xhat_hh);
    x.ln_cell_weight = ptr<T>(e.ln_cell_weight);
    x.ln_cell_bias = ptr<T>(e.ln_cell_bias);
    x.row_stats = ptr<T>(e.row_stats);
    x.stats_stride = e.row_stats.defined() ? e.row_stats.size(1) : 0;
    x.keep_h = ptr<T>(e.keep_h);
    x.keep_c = lstm ? ptr<T>(e.keep_c) : nullptr;
    x.fresh = ptr<T>(e.fresh);
    x.cell_out = lstm ? ptr<T>(e.cell_out) : nullptr;
    RK_CUDA_CHECK(cuda::launch_forward_step_ext<T>(a, x, current_stream()), "the extended forward step kernel");
  });
}

void backward_step_ext_cuda(const BackwardStep& s) {
  const BackwardExtras& e = *s.extras;
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  TORCH_CHECK(!s.dh_raw.defined(), "rnnkernels (cuda step): LayerNorm, zoneout and return_cells take no projection");
  const at::Tensor& like = s.d_pre;
  const int64_t B = s.d_pre.size(0), H = s.dh.size(1), GH = gate_count(s.mode) * H;
  check_buffer(s.d_pre, "d_pre", B, GH, like);
  check_buffer(s.dh, "dh", B, H, like);
  check_buffer(s.dh_prev, "dh_prev", B, H, like);
  check_optional_buffer(s.grad_out, "grad_out", B, H, like);
  if (lstm) {
    check_buffer(s.dc, "dc", B, H, like);
    check_buffer(s.c_prev, "c_prev", B, H, like);
    check_buffer(s.c_next, "c_next", B, H, like);
    check_buffer(s.saved, "saved", B, 4 * H, like);
  } else if (gru) {
    check_buffer(s.saved, "saved", B, 4 * H, like);
    check_buffer(s.h_prev, "h_prev", B, H, like);
    check_buffer(s.d_gh, "d_gh", B, GH, like);
  } else {
    check_buffer(s.h_next, "h_next", B, H, like);
  }
  TORCH_CHECK(!e.ln_hh_weight.defined() || lstm || gru, "rnnkernels (cuda step): LayerNorm is for lstm and gru");
  TORCH_CHECK(e.ln_cell_weight.defined() == e.ln_cell_bias.defined() && (!e.ln_cell_weight.defined() || lstm),
              "rnnkernels (cuda step): ln_cell_weight and ln_cell_bias go together, lstm only");
  TORCH_CHECK(lstm || (!e.keep_c.defined() && !e.grad_cell_out.defined()),
              "rnnkernels (cuda step): keep_c and grad_cell_out are for lstm only");
  check_optional_vector(e.ln_hh_weight, "ln_hh_weight", GH, like);
  if (e.ln_hh_weight.defined()) {  // what its backward reads and writes
    check_buffer(e.xhat_hh, "xhat_hh", B, GH, like);
    check_buffer(e.d_gh_raw, "d_gh_raw", B, GH, like);
  }
  check_optional_vector(e.ln_cell_weight, "ln_cell_weight", H, like);
  check_optional_vector(e.ln_cell_bias, "ln_cell_bias", H, like);
  check_optional_buffer(e.d_ln_cell, "d_ln_cell", B, 2 * H, like);
  TORCH_CHECK(e.row_stats.defined() || (!e.ln_hh_weight.defined() && !e.ln_cell_weight.defined()),
              "rnnkernels (cuda step): row_stats (saved by a training forward) is missing");
  check_row_stats(e.row_stats, B, like);
  check_optional_buffer(e.keep_h, "keep_h", B, H, like);
  check_optional_buffer(e.keep_c, "keep_c", B, H, like);
  check_optional_buffer(e.fresh, "fresh", B, H, like);
  check_optional_buffer(e.grad_cell_out, "grad_cell_out", B, H, like);
  check_device_lengths(s.lengths, B, like);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, like.scalar_type(), "rnnkernels_backward_step_ext_cuda", [&] {
    using T = typename CudaStorage<scalar_t>::type;
    check_ext_fits<T>(s.mode, H);
    cuda::BackwardStepArgs<T> a;
    set_step_shape(a, s, B, H, H);
    a.grad_out = ptr<T>(s.grad_out);
    a.dh = ptr<T>(s.dh);
    a.dh_raw = nullptr;
    a.dc = lstm ? ptr<T>(s.dc) : nullptr;
    a.saved = lstm || gru ? ptr<T>(s.saved) : nullptr;
    a.h_prev = gru ? ptr<T>(s.h_prev) : nullptr;
    a.h_next = !lstm && !gru ? ptr<T>(s.h_next) : nullptr;
    a.c_prev = lstm ? ptr<T>(s.c_prev) : nullptr;
    a.c_next = lstm ? ptr<T>(s.c_next) : nullptr;
    a.d_pre = ptr<T>(s.d_pre);
    a.d_gh = gru ? ptr<T>(s.d_gh) : nullptr;
    a.dh_prev = ptr<T>(s.dh_prev);
    cuda::BackwardExtrasArgs<T> x;
    x.ln_hh_weight = ptr<T>(e.ln_hh_weight);
    x.xhat_hh = e.ln_hh_weight.defined() ? ptr<T>(e.xhat_hh) : nullptr;
    x.ln_cell_weight = ptr<T>(e.ln_cell_weight);
    x.ln_cell_bias = ptr<T>(e.ln_cell_bias);
    x.row_stats = ptr<T>(e.row_stats);
    x.stats_stride = e.row_stats.defined() ? e.row_stats.size(1) : 0;
    x.keep_h = ptr<T>(e.keep_h);
    x.keep_c = lstm ? ptr<T>(e.keep_c) : nullptr;
    x.fresh = ptr<T>(e.fresh);
    x.grad_cell_out = lstm ? ptr<T>(e.grad_cell_out) : nullptr;
    x.d_gh_raw = e.ln_hh_weight.defined() ? ptr<T>(e.d_gh_raw) : nullptr;
    x.d_ln_cell = e.ln_cell_weight.defined() ? ptr<T>(e.d_ln_cell) : nullptr;
    RK_CUDA_CHECK(cuda::launch_backward_step_ext<T>(a, x, current_stream()), "the extended backward step kernel");
  });
}

}  // namespace

// ----------------------------------------------- steps of csrc/pointwise.h

void forward_step_cuda(const ForwardStep& s) {
  if (s.extras != nullptr) return forward_step_ext_cuda(s);
  const bool lstm = s.mode == Mode::Lstm, projected = s.h_raw.defined();
  TORCH_CHECK(s.b_ih.defined() && s.b_hh.defined() && s.b_ih.dim() == 1 && s.b_hh.dim() == 1,
              "rnnkernels (cuda step): b_ih and b_hh must be 1-D (zeros when the layer has none)");
  const at::Tensor& like = s.gi;
  const int64_t B = s.gi.size(0), P = s.h_prev.size(1), H = lstm ? s.c_prev.size(1) : P, GH = gate_count(s.mode) * H;
  check_buffer(s.gi, "gi", B, GH, like);
  check_buffer(s.gh, "gh", B, GH, like);
  check_buffer(s.b_ih.view({1, -1}), "b_ih", 1, GH, like);
  check_buffer(s.b_hh.view({1, -1}), "b_hh", 1, GH, like);
  check_buffer(s.h_prev, "h_prev", B, P, like);
  TORCH_CHECK(projected || P == H, "rnnkernels (cuda step): without projection h has hidden_size columns");
  TORCH_CHECK(!projected || lstm, "rnnkernels (cuda step): h_raw is only for lstm with projection");
  if (projected) {
    check_buffer(s.h_raw, "h_raw", B, H, like);
  } else {
    check_buffer(s.h_next, "h_next", B, P, like);
    check_buffer(s.out, "out", B, P, like);
  }
  if (lstm) {
    check_buffer(s.c_prev, "c_prev", B, H, like);
    check_buffer(s.c_next, "c_next", B, H, like);
  }
  if (saved_gate_count(s.mode)) check_optional_buffer(s.saved, "saved", B, 4 * H, like);
  check_device_lengths(s.lengths, B, like);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "rnnkernels_forward_step_cuda", [&] {
    using T = typename CudaStorage<scalar_t>::type;
    cuda::ForwardStepArgs<T> a;
    set_step_shape(a, s, B, H, P);
    a.gi = ptr<T>(s.gi);
    a.gh = ptr<T>(s.gh);
    a.b_ih = ptr<T>(s.b_ih);
    a.b_hh = ptr<T>(s.b_hh);
    a.h_prev = ptr<T>(s.h_prev);
    a.h_next = projected ? nullptr : ptr<T>(s.h_next);
    a.c_prev = lstm ? ptr<T>(s.c_prev) : nullptr;
    a.c_next = lstm ? ptr<T>(s.c_next) : nullptr;
    a.out = projected ? nullptr : ptr<T>(s.out);
    a.h_raw = projected ? ptr<T>(s.h_raw) : nullptr;
    a.saved = saved_gate_count(s.mode) ? ptr<T>(s.saved) : nullptr;
    RK_CUDA_CHECK(cuda::launch_forward_step<T>(a, current_stream()), "the forward step kernel");
  });
}

void backward_step_cuda(const BackwardStep& s) {
  if (s.extras != nullptr) return backward_step_ext_cuda(s);
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  const at::Tensor& like = s.d_pre;
  const int64_t B = s.d_pre.size(0), P = s.dh.size(1), H = lstm ? s.dc.size(1) : P;
  check_buffer(s.d_pre, "d_pre", B, gate_count(s.mode) * H, like);
  check_buffer(s.dh, "dh", B, P, like);
  check_buffer(s.dh_prev, "dh_prev", B, P, like);
  check_optional_buffer(s.grad_out, "grad_out", B, P, like);
  check_optional_buffer(s.dh_raw, "dh_raw", B, H, like);
  TORCH_CHECK(s.dh_raw.defined() || P == H, "rnnkernels (cuda step): without projection h has hidden_size columns");
  if (lstm) {
    check_buffer(s.dc, "dc", B, H, like);
    check_buffer(s.c_prev, "c_prev", B, H, like);
    check_buffer(s.c_next, "c_next", B, H, like);
    check_buffer(s.saved, "saved", B, 4 * H, like);
  } else if (gru) {
    check_buffer(s.saved, "saved", B, 4 * H, like);
    check_buffer(s.h_prev, "h_prev", B, P, like);
    check_buffer(s.d_gh, "d_gh", B, 3 * H, like);
  } else {
    check_buffer(s.h_next, "h_next", B, P, like);
  }
  check_device_lengths(s.lengths, B, like);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "rnnkernels_backward_step_cuda", [&] {
    using T = typename CudaStorage<scalar_t>::type;
    cuda::BackwardStepArgs<T> a;
    set_step_shape(a, s, B, H, P);
    a.grad_out = ptr<T>(s.grad_out);
    a.dh = ptr<T>(s.dh);
    a.dh_raw = ptr<T>(s.dh_raw);
    a.dc = lstm ? ptr<T>(s.dc) : nullptr;
    a.saved = lstm || gru ? ptr<T>(s.saved) : nullptr;
    a.h_prev = gru ? ptr<T>(s.h_prev) : nullptr;
    a.h_next = !lstm && !gru ? ptr<T>(s.h_next) : nullptr;
    a.c_prev = lstm ? ptr<T>(s.c_prev) : nullptr;
    a.c_next = lstm ? ptr<T>(s.c_next) : nullptr;
    a.d_pre = ptr<T>(s.d_pre);
    a.d_gh = gru ? ptr<T>(s.d_gh) : nullptr;
    a.dh_prev = ptr<T>(s.dh_prev);
    RK_CUDA_CHECK(cuda::launch_backward_step<T>(a, current_stream()), "the backward step kernel");
  });
}

void commit_projection_cuda(const CommitProjection& s) {
  const int64_t B = s.out.size(0), P = s.out.size(1);
  check_buffer(s.out, "out", B, P, s.out);
  check_buffer(s.h_prev, "h_prev", B, P, s.out);
  check_buffer(s.h_next, "h_next", B, P, s.out);
  check_device_lengths(s.lengths, B, s.out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.out.scalar_type(), "rnnkernels_commit_projection_cuda",
                                  [&] {
                                    using T = typename CudaStorage<scalar_t>::type;
                                    RK_CUDA_CHECK(cuda::launch_commit_projection<T>(
                                                      s.t, B, P, lengths_ptr(s.lengths), ptr<T>(s.out),
                                                      ptr<T>(s.h_prev), ptr<T>(s.h_next), current_stream()),
                                                  "the commit-projection kernel");
                                  });
}

void gather_projected_grad_cuda(const GatherProjectedGrad& s) {
  const int64_t B = s.dst.size(0), P = s.dst.size(1);
  check_buffer(s.dst, "dst", B, P, s.dst);
  check_buffer(s.dh, "dh", B, P, s.dst);
  check_optional_buffer(s.grad_out, "grad_out", B, P, s.dst);
  check_device_lengths(s.lengths, B, s.dst);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, s.dst.scalar_type(), "rnnkernels_gather_projected_grad_cuda", [&] {
        using T = typename CudaStorage<scalar_t>::type;
        RK_CUDA_CHECK(cuda::launch_gather_projected_grad<T>(s.t, B, P, lengths_ptr(s.lengths), ptr<T>(s.dh),
                                                            ptr<T>(s.grad_out), ptr<T>(s.dst), current_stream()),
                      "the gather-projected-grad kernel");
      });
}

// ---------------------------------------------- persistent forward/backward

namespace {

using ForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined() ? *t : at::Tensor(); }

// A call the persistent kernels may take. It is built only from arguments
// that are already well formed: anything unexpected sends the call to the
// shared loop of csrc/rnn_layer.cpp, whose checks raise the user-facing
// error. `why_not` says why a well-formed call cannot take the persistent path.
struct PersistentCall {
  bool well_formed = false;
  bool excluded_kind = false;  // rnn_tanh / rnn_relu, or lstm with projection: the step loop's alone
  std::string why_not;
  Mode mode = Mode::Lstm;
  int64_t T = 0, B = 0, I = 0, H = 0;
  at::Tensor host_lengths;  // (B,) int64 on the CPU, or undefined when every row runs all T steps
  cuda::PersistentPlan plan;
};

// The storage types the persistent kernels are built for: fn(float{}) or fn(__nv_bfloat16{}).
template <typename F>
void dispatch_persistent_dtype(at::ScalarType dtype, const F& fn) {
  if (dtype == at::kFloat) return fn(float{});
  TORCH_CHECK(dtype == at::kBFloat16, "rnnkernels: the persistent kernels run float32 and bfloat16, got ", dtype);
  return fn(__nv_bfloat16{});
}

bool same_place(const at::Tensor& t, const at::Tensor& x, at::IntArrayRef shape) {
  return t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.sizes() == shape;
}

bool absent_or_same_place(const at::Tensor& t, const at::Tensor& x, at::IntArrayRef shape) {
  return !t.defined() || same_place(t, x, shape);
}

// The arguments both passes share: mode, x, w_ih, w_hh, w_hr, lengths.
// Returns with well_formed false at the first thing that is not as expected;
// the caller checks its own arguments and then calls decide_persistent.
PersistentCall inspect_common(c10::string_view mode_name, const at::Tensor& x, const at::Tensor& w_ih,
                              const at::Tensor& w_hh, const at::Tensor& w_hr, const at::Tensor& lengths) {
  PersistentCall call;
  if (mode_name != "lstm" && mode_name != "gru") {
    call.excluded_kind = true;
    call.why_not = "only lstm and gru have a persistent kernel";
    return call;
  }
  call.mode = mode_name == "lstm" ? Mode::Lstm : Mode::Gru;
  const int64_t G = gate_count(call.mode);
  const auto dtype = x.scalar_type();
  if (!x.is_cuda() || x.dim() != 3 || w_ih.dim() != 2 || w_ih.size(0) % G != 0 || w_ih.size(0) == 0) return call;
  if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kBFloat16) return call;
  call.T = x.size(0);
  call.B = x.size(1);
  call.I = x.size(2);
  call.H = w_ih.size(0) / G;
  const int64_t GH = G * call.H;
  if (!same_place(w_ih, x, {GH, call.I})) return call;
  if (w_hr.defined()) {
    call.excluded_kind = true;
    call.why_not = "lstm with projection (proj_size > 0) runs the step loop";
    return call;
  }
  if (!same_place(w_hh, x, {GH, call.H})) return call;
  if (lengths.defined()) {
    if (!lengths.device().is_cpu() || lengths.scalar_type() != at::kLong || lengths.dim() != 1 ||
        lengths.size(0) != call.B)
      return call;
    const at::Tensor host = lengths.contiguous();
    const int64_t* len = host.data_ptr<int64_t>();
    bool all_full = true;
    for (int64_t b = 0; b < call.B; ++b) {
      if (len[b] < 0 || len[b] > call.T) return call;
      all_full = all_full && len[b] == call.T;
    }
    if (!all_full) call.host_lengths = host;
  }
  call.well_formed = true;
  return call;
}

// Sets why_not, or the plan when the persistent kernel of this pass can run.
void decide_persistent(PersistentCall& call, at::ScalarType dtype, bool backward) {
  if (!call.well_formed) return;
  const int64_t B = call.B, H = call.H;
  if (dtype == at::kDouble) {
    call.why_not = "float64 runs the step loop (the persistent kernels are float32 and bfloat16)";
  } else if (call.T == 0 || B == 0) {
    call.why_not = "an empty sequence or batch runs the step loop";
  } else if (B > 32) {
    call.why_not = "batch " + std::to_string(B) + " > 32 runs the step loop";
  } else if (H > (int64_t(1) << 20)) {
    call.why_not = "hidden size " + std::to_string(H) + " is too large";
  } else {
    dispatch_persistent_dtype(dtype, [&](auto type_tag) {
      using T = decltype(type_tag);
      RK_CUDA_CHECK(cuda::plan_persistent<T>(to_cell(call.mode), int(B), int(H), backward, &call.plan),
                    "planning the persistent kernel");
    });
    if (!call.plan.fits) {
      call.why_not = "W_hh of hidden size " + std::to_string(H) +
                     " does not fit in the shared memory of a co-resident grid on this device "
                     "(or the device has no cooperative launch)";
    }
  }
}

bool takes_persistent(const PersistentCall& call) { return call.well_formed && call.why_not.empty(); }

// The fields PersistentForwardArgs and PersistentBackwardArgs share.
template <typename Args>
void set_persistent_shape(Args& a, const PersistentCall& call, bool reverse, const SortedBatch& batch) {
  a.cell = to_cell(call.mode);
  a.steps = int(call.T);
  a.B = int(call.B);
  a.H = int(call.H);
  a.reverse = reverse;
  a.lengths = lengths_ptr(batch.lengths);
}

ForwardResult persistent_forward(const PersistentCall& call, const at::Tensor& x_in, const at::Tensor& h0_in,
                                 const at::Tensor& c0_in, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
                                 const at::Tensor& b_ih, const at::Tensor& b_hh, bool reverse, bool training) {
  const bool lstm = call.mode == Mode::Lstm;
  const int64_t T = call.T, B = call.B, H = call.H, GH = gate_count(call.mode) * H;
  // In the batch order csrc/rnn_layer.cpp runs and saves (csrc/sorted_batch.h).
  const SortedBatch batch(call.host_lengths, x_in);
  const at::Tensor x = batch.sort(x_in, 1).contiguous(), h0 = batch.sort(h0_in, 0), c0 = batch.sort(c0_in, 0);
  const at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const auto opts = x.options();
  // gi (T, B, G*H) = x W_ih^T for all steps in one GEMM; the kernel adds both
  // biases in float (as the step loop does).
  at::Tensor gi = at::empty({T, B, GH}, opts);
  at::Tensor gi_2d = gi.view({T * B, GH});
  at::mm_out(gi_2d, x.view({T * B, call.I}), w_ih.t());
  const at::Tensor bias_ih = b_ih.defined() ? b_ih.contiguous() : at::Tensor();
  const at::Tensor bias_hh = b_hh.defined() ? b_hh.contiguous() : at::Tensor();
  // Saved-activation layout of csrc/rnn_layer.cpp: slot of the state before
  // the k-th processed step; two alternating slots without training.
  auto slot = [&](int64_t k) { return training ? (reverse ? T - k : k) : k % 2; };
  const int64_t slots = training ? T + 1 : 2;
  at::Tensor states = at::empty({slots, B, H}, opts);
  at::Tensor cells = lstm ? at::empty({slots, B, H}, opts) : at::empty({0}, opts);
  at::Tensor gates = training ? at::empty({T, B, 4 * H}, opts) : at::empty({0}, opts);
  at::Tensor out = at::empty({T, B, H}, opts);
  if (h0.defined()) states[slot(0)].copy_(h0); else states[slot(0)].zero_();
  if (lstm) {
    if (c0.defined()) cells[slot(0)].copy_(c0); else cells[slot(0)].zero_();
  }
  dispatch_persistent_dtype(x.scalar_type(), [&](auto type_tag) {
    using S = decltype(type_tag);
    cuda::PersistentForwardArgs<S> a;
    set_persistent_shape(a, call, reverse, batch);
    a.training = training;
    a.gi = ptr<S>(gi);
    a.w_hh = ptr<S>(w_hh);
    a.b_ih = ptr<S>(bias_ih);
    a.b_hh = ptr<S>(bias_hh);
    a.states = ptr<S>(states);
    a.cells = lstm ? ptr<S>(cells) : nullptr;
    a.out = ptr<S>(out);
    a.gates = training ? ptr<S>(gates) : nullptr;
    RK_CUDA_CHECK(cuda::launch_persistent_forward<S>(a, call.plan, current_stream()),
                  "the persistent forward kernel");
  });
  // Back into the caller's batch order (the saved activations stay sorted).
  at::Tensor h_n = batch.order.defined() ? batch.unsort(states[slot(T)], 0) : states[slot(T)].clone();
  at::Tensor c_n = !lstm ? at::empty({0}, opts)
                         : batch.order.defined() ? batch.unsort(cells[slot(T)], 0) : cells[slot(T)].clone();
  out = batch.unsort(out, 1);
  if (!training) {
    states = at::empty({0}, opts);
    cells = at::empty({0}, opts);
  }
  return {out, h_n, c_n, states, cells, gates, at::empty({0}, opts)};
}

// The recurrence runs in the persistent kernel; the input and weight
// gradients are the same GEMMs over all T*B rows as csrc/rnn_layer.cpp's
// (no projection here).
BackwardResult persistent_backward(const PersistentCall& call, const at::Tensor& grad_output,
                                   const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& x_in,
                                   const at::Tensor& w_ih_in, const at::Tensor& w_hh_in, bool reverse,
                                   const at::Tensor& states_in, const at::Tensor& cells_in,
                                   const at::Tensor& gates_in, bool has_bias, bool input_grad, bool weight_grad) {
  const bool lstm = call.mode == Mode::Lstm, gru = call.mode == Mode::Gru;
  const int64_t T = call.T, B = call.B, I = call.I, H = call.H, GH = gate_count(call.mode) * H;
  // Into the forward's sorted batch order (see SortedBatch); the saved tensors are in it.
  const SortedBatch batch(call.host_lengths, x_in);
  const at::Tensor x = batch.sort(x_in, 1).contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor states = states_in.contiguous(), gates = gates_in.contiguous();
  const at::Tensor cells = lstm ? cells_in.contiguous() : at::Tensor();
  const at::Tensor g_out = grad_output.defined() ? batch.sort(grad_output, 1).contiguous() : at::Tensor();
  const at::Tensor g_h_n = grad_h_n.defined() ? batch.sort(grad_h_n, 0).contiguous() : at::Tensor();
  const at::Tensor g_c_n = lstm && grad_c_n.defined() ? batch.sort(grad_c_n, 0).contiguous() : at::Tensor();
  const auto opts = x.options();
  at::Tensor d_pre = at::empty({T, B, GH}, opts);                 // input side
  at::Tensor d_gh_all = gru ? at::empty({T, B, GH}, opts) : d_pre;  // recurrent side
  at::Tensor grad_h0 = at::empty({B, H}, opts);
  at::Tensor grad_c0 = lstm ? at::empty({B, H}, opts) : at::empty({0}, opts);
  dispatch_persistent_dtype(x.scalar_type(), [&](auto type_tag) {
    using S = decltype(type_tag);
    cuda::PersistentBackwardArgs<S> a;
    set_persistent_shape(a, call, reverse, batch);
    a.grad_output = ptr<S>(g_out);
    a.grad_h_n = ptr<S>(g_h_n);
    a.grad_c_n = ptr<S>(g_c_n);
    a.w_hh = ptr<S>(w_hh);
    a.states = ptr<S>(states);
    a.cells = ptr<S>(cells);
    a.gates = ptr<S>(gates);
    a.d_pre = ptr<S>(d_pre);
    a.d_gh = gru ? ptr<S>(d_gh_all) : nullptr;
    a.grad_h0 = ptr<S>(grad_h0);
    a.grad_c0 = lstm ? ptr<S>(grad_c0) : nullptr;
    RK_CUDA_CHECK(cuda::launch_persistent_backward<S>(a, call.plan, current_stream()),
                  "the persistent backward kernel");
  });
  const at::Tensor d_pre_2d = d_pre.view({T * B, GH}), d_gh_2d = d_gh_all.view({T * B, GH});
  auto empty = [&] { return at::empty({0}, opts); };
  at::Tensor grad_x = input_grad ? batch.unsort(at::mm(d_pre_2d, w_ih).view({T, B, I}), 1) : empty();
  at::Tensor grad_w_ih = empty(), grad_w_hh = empty(), grad_b_ih = empty(), grad_b_hh = empty();
  if (weight_grad) {
    grad_w_ih = at::mm(d_pre_2d.t(), x.view({T * B, I}));
    // The state entering step t, for all t: states[0:T] forward, states[1:T+1] in reverse.
    grad_w_hh = at::mm(d_gh_2d.t(), states.narrow(0, reverse ? 1 : 0, T).reshape({T * B, H}));
    if (has_bias) {
      grad_b_ih = d_pre_2d.sum(0);
      grad_b_hh = gru ? d_gh_2d.sum(0) : grad_b_ih.clone();
    }
  }
  return {grad_x,    batch.unsort(grad_h0, 0), lstm ? batch.unsort(grad_c0, 0) : grad_c0, grad_w_ih, grad_w_hh,
          grad_b_ih, grad_b_hh, empty()};
}

enum class PersistentPolicy { Auto, Never, Always };

PersistentPolicy persistent_policy() {
  const char* value = std::getenv("RNNKERNELS_CUDA_PERSISTENT");
  if (value == nullptr || std::string(value).empty() || std::string(value) == "auto") return PersistentPolicy::Auto;
  if (std::string(value) == "0") return PersistentPolicy::Never;
  TORCH_CHECK(std::string(value) == "1", "rnnkernels: RNNKERNELS_CUDA_PERSISTENT must be 0, 1 or auto, got '",
              value, "'");
  return PersistentPolicy::Always;
}

// With RNNKERNELS_CUDA_PERSISTENT=1 a valid call that cannot take the
// persistent path is an error, never a silent fallback.
void check_policy(PersistentPolicy policy, const PersistentCall& call, const char* pass) {
  const bool refused = call.excluded_kind || (call.well_formed && !takes_persistent(call));
  TORCH_CHECK(policy != PersistentPolicy::Always || !refused, "rnnkernels: RNNKERNELS_CUDA_PERSISTENT=1 asks for the "
              "persistent ", pass, " kernel, but it cannot run this call: ", call.why_not);
}

// Custom ops get no device guard from the dispatcher: run on x's device.
c10::optional<c10::Device> cuda_device_of(const at::Tensor& x) {
  return x.is_cuda() ? c10::optional<c10::Device>(x.device()) : c10::nullopt;
}

ForwardResult rnn_layer_forward_cuda(c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
                                     const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                     const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
                                     const c10::optional<at::Tensor>& lengths, bool reverse, bool training) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(x));
  const PersistentPolicy policy = persistent_policy();
  if (policy != PersistentPolicy::Never) {
    PersistentCall call = inspect_common(mode, x, w_ih, w_hh, given(w_hr), given(lengths));
    const int64_t GH = gate_count(call.mode) * call.H;
    call.well_formed = call.well_formed && absent_or_same_place(given(b_ih), x, {GH}) &&
                       absent_or_same_place(given(b_hh), x, {GH}) &&
                       absent_or_same_place(given(h0), x, {call.B, call.H}) &&
                       (!given(c0).defined() || (call.mode == Mode::Lstm && same_place(given(c0), x, {call.B, call.H})));
    decide_persistent(call, x.scalar_type(), /*backward=*/false);
    if (takes_persistent(call)) {
      return persistent_forward(call, x, given(h0), given(c0), w_ih, w_hh, given(b_ih), given(b_hh), reverse,
                                training);
    }
    check_policy(policy, call, "forward");
  }
  return rnn_layer_forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training);
}

BackwardResult rnn_layer_backward_cuda(c10::string_view mode, const c10::optional<at::Tensor>& grad_output,
                                       const c10::optional<at::Tensor>& grad_h_n,
                                       const c10::optional<at::Tensor>& grad_c_n, const at::Tensor& x,
                                       const at::Tensor& w_ih, const at::Tensor& w_hh,
                                       const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths,
                                       bool reverse, const at::Tensor& states, const at::Tensor& cells,
                                       const at::Tensor& gates, const at::Tensor& hidden_raw, bool has_bias,
                                       bool input_grad, bool weight_grad) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(x));
  const PersistentPolicy policy = persistent_policy();
  if (policy != PersistentPolicy::Never) {
    PersistentCall call = inspect_common(mode, x, w_ih, w_hh, given(w_hr), given(lengths));
    const bool lstm = call.mode == Mode::Lstm;
    const int64_t T = call.T, B = call.B, H = call.H;
    const at::Tensor g_c_n = given(grad_c_n);
    call.well_formed = call.well_formed && absent_or_same_place(given(grad_output), x, {T, B, H}) &&
                       absent_or_same_place(given(grad_h_n), x, {B, H}) &&
                       (lstm ? absent_or_same_place(g_c_n, x, {B, H}) : (!g_c_n.defined() || g_c_n.numel() == 0)) &&
                       same_place(states, x, {T + 1, B, H}) && (!lstm || same_place(cells, x, {T + 1, B, H})) &&
                       same_place(gates, x, {T, B, 4 * H});
    decide_persistent(call, x.scalar_type(), /*backward=*/true);
    if (takes_persistent(call)) {
      return persistent_backward(call, given(grad_output), given(grad_h_n), g_c_n, x, w_ih, w_hh, reverse, states,
                                 cells, gates, has_bias, input_grad, weight_grad);
    }
    check_policy(policy, call, "backward");
  }
  return rnn_layer_backward(mode, grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, lengths, reverse, states,
                            cells, gates, hidden_raw, has_bias, input_grad, weight_grad);
}

// The extended op (LayerNorm, zoneout, return_cells) runs the step loop of
// csrc/rnn_layer.cpp with the extended step kernels: no persistent kernel
// has its extras, so RNNKERNELS_CUDA_PERSISTENT=1 refuses it.
void check_extended_policy(const char* pass) {
  TORCH_CHECK(persistent_policy() != PersistentPolicy::Always, "rnnkernels: RNNKERNELS_CUDA_PERSISTENT=1 asks for "
              "the persistent ", pass, " kernel, but it cannot run this call: LayerNorm, zoneout and return_cells "
              "(rnn_layer_", pass, "_ext) run the step loop");
}

ExtendedForward rnn_layer_forward_ext_cuda(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& lengths, bool reverse, bool training, const c10::optional<at::Tensor>& ln_ih,
    const c10::optional<at::Tensor>& ln_hh, const c10::optional<at::Tensor>& ln_cell_w,
    const c10::optional<at::Tensor>& ln_cell_b, const c10::optional<at::Tensor>& keep_h,
    const c10::optional<at::Tensor>& keep_c, bool return_cells) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(x));
  check_extended_policy("forward");
  return rnn_layer_forward_ext(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training, ln_ih, ln_hh,
                               ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells);
}

ExtendedBackward rnn_layer_backward_ext_cuda(
    c10::string_view mode, const c10::optional<at::Tensor>& grad_output, const c10::optional<at::Tensor>& grad_h_n,
    const c10::optional<at::Tensor>& grad_c_n, const c10::optional<at::Tensor>& grad_cell_states, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates, const at::Tensor& x_hat,
    const at::Tensor& row_stats, const at::Tensor& fresh, bool has_bias, bool input_grad, bool weight_grad,
    const c10::optional<at::Tensor>& ln_ih, const c10::optional<at::Tensor>& ln_hh,
    const c10::optional<at::Tensor>& ln_cell_w, const c10::optional<at::Tensor>& ln_cell_b,
    const c10::optional<at::Tensor>& keep_h, const c10::optional<at::Tensor>& keep_c, bool return_cells) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(x));
  check_extended_policy("backward");
  return rnn_layer_backward_ext(mode, grad_output, grad_h_n, grad_c_n, grad_cell_states, x, w_ih, w_hh, lengths,
                                reverse, states, cells, gates, x_hat, row_stats, fresh, has_bias, input_grad,
                                weight_grad, ln_ih, ln_hh, ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells);
}

}  // namespace
}  // namespace rnnkernels

TORCH_LIBRARY_IMPL(rnnkernels, CUDA, m) {
  m.impl("rnn_layer_forward", &rnnkernels::rnn_layer_forward_cuda);
  m.impl("rnn_layer_backward", &rnnkernels::rnn_layer_backward_cuda);
  m.impl("rnn_layer_forward_ext", &rnnkernels::rnn_layer_forward_ext_cuda);
  m.impl("rnn_layer_backward_ext", &rnnkernels::rnn_layer_backward_ext_cuda);
}
