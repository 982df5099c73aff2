// Launchers of the CUDA kernels of the recurrent layers, over raw device
// pointers and a cudaStream_t. No torch headers here or in the .cu files, so
// nvcc compiles them alone; csrc/cuda/rnn_cuda.cpp is the at::Tensor glue.
//
// Every launcher validates nothing (the glue does, before any launch) and
// returns the first CUDA error it meets, including the launch error of every
// kernel it starts (RK_CUDA_RETURN_IF_ERROR); cudaSuccess otherwise.
//
// Shapes: B batch, H hidden, P = proj_size or H, G gates (1 rnn, 4 lstm,
// 3 gru). Every (B, n) buffer is contiguous with row stride n. A row b is
// alive at step t when lengths == nullptr or t < lengths[b] (lengths: device
// int64). T is the storage type (float, double, __half, __nv_bfloat16); the
// math is done in float (double for double).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

// Returns the error of a CUDA runtime call (or of the last launch) from the
// enclosing function, which returns cudaError_t.
#define RK_CUDA_RETURN_IF_ERROR(expr)             \
  do {                                            \
    const cudaError_t rk_status_ = (expr);        \
    if (rk_status_ != cudaSuccess) return rk_status_; \
  } while (0)

namespace rnnkernels {
namespace cuda {

enum class Cell { RnnTanh, RnnRelu, Lstm, Gru };

// One step's fused pointwise pass, forward (mirrors rnnkernels::ForwardStep).
template <typename T>
struct ForwardStepArgs {
  Cell cell;
  int64_t t, B, H, P;
  const int64_t* lengths;  // (B,) or nullptr
  const T* gi;             // (B, G*H) x[t] W_ih^T (no bias)
  const T* gh;             // (B, G*H) h_prev W_hh^T (no bias)
  const T* b_ih;           // (G*H,) (zeros when the layer has none)
  const T* b_hh;           // (G*H,)
  const T* h_prev;         // (B, P)
  T* h_next;               // (B, P); unused with projection
  const T* c_prev;         // (B, H) lstm
  T* c_next;               // (B, H) lstm
  T* out;                  // (B, P); unused with projection
  T* h_raw;                // (B, H) lstm with projection, else nullptr
  T* saved;                // (B, 4H) lstm/gru activations for backward, or nullptr
};

// One step's fused pointwise pass, backward (mirrors rnnkernels::BackwardStep).
template <typename T>
struct BackwardStepArgs {
  Cell cell;
  int64_t t, B, H, P;
  const int64_t* lengths;
  const T* grad_out;  // (B, P) or nullptr
  const T* dh;        // (B, P) gradient of the state after the step
  const T* dh_raw;    // (B, H) lstm with projection, else nullptr
  T* dc;              // (B, H) lstm: d c_next in, d c_prev out (in place)
  const T* saved;     // (B, 4H) lstm/gru
  const T* h_prev;    // (B, P) gru
  const T* h_next;    // (B, P) rnn
  const T* c_prev;    // (B, H) lstm
  const T* c_next;    // (B, H) lstm
  T* d_pre;           // (B, G*H) out
  T* d_gh;            // (B, 3H) out, gru
  T* dh_prev;         // (B, P) out: part of d h_prev not through W_hh (dead rows: dh)
};

template <typename T>
cudaError_t launch_forward_step(const ForwardStepArgs<T>& args, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward_step(const BackwardStepArgs<T>& args, cudaStream_t stream);

// ------------------------------------------------- extended step rows
// What a layer adds to torch.nn's cell (mirrors rnnkernels::ForwardExtras /
// BackwardExtras; csrc/cuda/pointwise_ext_kernels.cu): LayerNorm of h W_hh^T
// and of c, zoneout, per-step cell outputs. Run with the step's plain args
// (no projection: P == H, h_raw and dh_raw nullptr). One thread block per
// batch row. Every pointer may be nullptr when its option is off, except
// where noted. float, double and __nv_bfloat16 storage.

template <typename T>
struct ForwardExtrasArgs {
  T* gh;                     // (B, G*H) the step's gh (ForwardStepArgs::gh, writable): with
                             //          ln_hh_weight normalised in place, gh <- gamma_hh * x_hat
  const T* ln_hh_weight;     // (G*H,) gain of LN(h W_hh^T) (lstm, gru)
  T* xhat_hh;                // (B, G*H) out: x_hat of LN(h W_hh^T) (training)
  const T* ln_cell_weight;   // (H,) lstm: gain of LN(c), h = o * tanh(LN(c))
  const T* ln_cell_bias;     // (H,) lstm: its bias (set with ln_cell_weight)
  T* row_stats;              // (B, stats_stride) out, columns 0..2 only: rstd of LN(h W_hh^T),
                             //                   mean and rstd of LN(c) (training)
  int64_t stats_stride;      // row stride of row_stats (4: column 3 is LN(gi)'s rstd, not ours)
  const T* keep_h;           // (B, H) zoneout: h = keep * h_prev + (1 - keep) * fresh h
  const T* keep_c;           // (B, H) lstm zoneout of c
  T* fresh;                  // (B, H) out: lstm c, rnn h before zoneout (training with zoneout)
  T* cell_out;               // (B, H) out: lstm c after the step, zero past the end (return_cells)
};

template <typename T>
struct BackwardExtrasArgs {
  const T* ln_hh_weight;     // (G*H,) as in ForwardExtrasArgs
  const T* xhat_hh;          // (B, G*H) saved; required with ln_hh_weight
  const T* ln_cell_weight;   // (H,)
  const T* ln_cell_bias;     // (H,)
  const T* row_stats;        // (B, stats_stride) saved; required with either LayerNorm
  int64_t stats_stride;
  const T* keep_h;           // (B, H)
  const T* keep_c;           // (B, H) lstm
  const T* fresh;            // (B, H) saved (lstm with keep_c, rnn with keep_h), else nullptr
  const T* grad_cell_out;    // (B, H) lstm: gradient of cell_out
  T* d_gh_raw;               // (B, G*H) out, required with ln_hh_weight: gradient of h W_hh^T
                             //          before its LayerNorm
  T* d_ln_cell;              // (B, 2H) out with ln_cell_weight: dy * c_hat and dy
};

// Dynamic shared memory of one block of the extended step kernels (per-warp
// partial sums; lstm: two (H,) rows in the compute type), and whether the
// current device can give it to one block.
template <typename T>
size_t ext_step_shared_bytes(Cell cell, int64_t H);
template <typename T>
cudaError_t ext_step_fits(Cell cell, int64_t H, bool* fits);

template <typename T>
cudaError_t launch_forward_step_ext(const ForwardStepArgs<T>& args, const ForwardExtrasArgs<T>& extras,
                                    cudaStream_t stream);
template <typename T>
cudaError_t launch_backward_step_ext(const BackwardStepArgs<T>& args, const BackwardExtrasArgs<T>& extras,
                                     cudaStream_t stream);

// LSTM with projection. Forward: alive rows h_next = out, dead rows
// h_next = h_prev and out = 0. Backward: dst = alive ? dh + grad_out : 0.
template <typename T>
cudaError_t launch_commit_projection(int64_t t, int64_t B, int64_t P, const int64_t* lengths, T* out,
                                     const T* h_prev, T* h_next, cudaStream_t stream);
template <typename T>
cudaError_t launch_gather_projected_grad(int64_t t, int64_t B, int64_t P, const int64_t* lengths, const T* dh,
                                         const T* grad_out, T* dst, cudaStream_t stream);

// ---------------------------------------------- persistent forward/backward
// The whole sequence of an lstm or gru layer (no projection) in one
// cooperative kernel: block i keeps the part of W_hh that its hidden units
// [i*U, (i+1)*U) need (forward: their rows of all G gates; backward: their
// columns) in shared memory for every step, exchanges the state (forward: h;
// backward: the gate gradients) with the other blocks through L2 and meets
// them at one grid.sync() per step. The LSTM cell state (and the gradients
// of h and c in backward) of its units stays in shared memory in float
// between steps. See csrc/cuda/persistent_kernels.cu.

struct PersistentPlan {
  bool fits = false;        // a co-resident grid holds all of W_hh on chip
  int units_per_block = 0;  // U = ceil(H / SMs): one block per SM
  int blocks = 0;           // ceil(H / U) <= SMs
  int threads = 0;
  int max_batch = 0;        // the kernel's batch tile (>= B)
  size_t shared_bytes = 0;  // dynamic shared memory per block
};

// Whether and how the persistent forward (backward == false) or backward
// kernel runs B x H on the current device.
template <typename T>
cudaError_t plan_persistent(Cell cell, int B, int H, bool backward, PersistentPlan* plan);

template <typename T>
struct PersistentForwardArgs {
  Cell cell;  // Lstm or Gru
  int steps, B, H;
  bool reverse, training;
  const int64_t* lengths;  // (B,) or nullptr
  const T* gi;             // (steps, B, G*H) x W_ih^T (no bias)
  const T* w_hh;           // (G*H, H)
  const T* b_ih;           // (G*H,) or nullptr (no bias)
  const T* b_hh;           // (G*H,) or nullptr
  T* states;               // (slots, B, H) with the initial state in its slot (layout: rnn_layer.cpp)
  T* cells;                // (slots, B, H) lstm, initial cell state in its slot
  T* out;                  // (steps, B, H)
  T* gates;                // (steps, B, 4H) saved activations, or nullptr
};

template <typename T>
cudaError_t launch_persistent_forward(const PersistentForwardArgs<T>& args, const PersistentPlan& plan,
                                      cudaStream_t stream);

// Gradients of the recurrence from a training forward's saved activations
// (layout of csrc/rnn_layer.cpp); the weight and input gradients are GEMMs
// over d_pre done by the caller.
template <typename T>
struct PersistentBackwardArgs {
  Cell cell;  // Lstm or Gru
  int steps, B, H;
  bool reverse;
  const int64_t* lengths;  // (B,) or nullptr
  const T* grad_output;    // (steps, B, H) or nullptr
  const T* grad_h_n;       // (B, H) or nullptr
  const T* grad_c_n;       // (B, H) lstm, or nullptr
  const T* w_hh;           // (G*H, H)
  const T* states;         // (steps + 1, B, H)
  const T* cells;          // (steps + 1, B, H) lstm
  const T* gates;          // (steps, B, 4H)
  T* d_pre;                // (steps, B, G*H) out: gradient of the input-side pre-activations
  T* d_gh;                 // (steps, B, 3H) out, gru: of h W_hh^T + b_hh (lstm: nullptr, same as d_pre)
  T* grad_h0;              // (B, H) out
  T* grad_c0;              // (B, H) out, lstm
};

template <typename T>
cudaError_t launch_persistent_backward(const PersistentBackwardArgs<T>& args, const PersistentPlan& plan,
                                       cudaStream_t stream);

}  // namespace cuda
}  // namespace rnnkernels
