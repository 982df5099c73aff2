// The fused pointwise pass of one time step, per device.
//
// csrc/rnn_layer.cpp owns the sequence loop (GEMMs through ATen, device
// agnostic) and calls these once per step; each device implements them with
// the gate math of csrc/cells.h: csrc/cpu/pointwise_cpu.cpp (at::parallel_for
// over batch rows), csrc/cuda/ for CUDA.
//
// Shapes: B batch, H hidden, P = proj_size or H, G gates (1 rnn, 4 lstm, 3 gru).
// Every tensor is contiguous, of x's dtype and device, except `lengths`.
// A row b is alive at time t when lengths is undefined or t < lengths[b];
// a dead row keeps its state, outputs zero and passes gradients through.
// A packed step (the CPU loop with uneven lengths: csrc/rnn_layer.cpp) hands
// gi, saved, d_pre and d_gh with only the running rows, the first n of its
// sorted batch; the dead rows after them touch none of the four.
#pragma once

#include <ATen/ATen.h>

namespace rnnkernels {

enum class Mode { RnnTanh, RnnRelu, Lstm, Gru };

inline int64_t gate_count(Mode mode) {
  return mode == Mode::Lstm ? 4 : mode == Mode::Gru ? 3 : 1;
}

// Floats saved per hidden unit for backward: lstm i,f,g,o; gru r,z,n,gh_n.
inline int64_t saved_gate_count(Mode mode) {
  return mode == Mode::Lstm || mode == Mode::Gru ? 4 : 0;
}

// What a layer adds to torch.nn's cell, per step (csrc/rnn_layer.cpp's
// LayerOptions): each tensor is this step's (B, n) view or undefined when the
// option is off. A step with extras runs the extended rows (LayerNorm
// reductions inside the per-row pass); one without runs the plain ones.
struct ForwardExtras {
  at::Tensor ln_hh_weight;    // (G*H,) gain of LN(h W_hh^T); gh is normalised in place
  at::Tensor xhat_hh;         // (B, G*H) out: LN's normalised h W_hh^T (training), or undefined
  at::Tensor ln_cell_weight;  // (H,) lstm: gain and bias of LN(c) before tanh
  at::Tensor ln_cell_bias;    // (H,)
  at::Tensor row_stats;       // (B, 3) out: rstd of LN(h W_hh^T), mean and rstd of LN(c)
  at::Tensor keep_h;          // (B, H) zoneout: h = keep * h_prev + (1 - keep) * fresh h
  at::Tensor keep_c;          // (B, H) lstm zoneout of c
  at::Tensor fresh;           // (B, H) out: lstm c, rnn h before zoneout (training with zoneout)
  at::Tensor cell_out;        // (B, H) out: lstm c after the step, zero past the end (return_cells)
};

struct BackwardExtras {
  at::Tensor ln_hh_weight, xhat_hh;   // as in ForwardExtras (xhat_hh saved)
  at::Tensor ln_cell_weight, ln_cell_bias;  // (H,)
  at::Tensor row_stats;               // (B, 3) saved
  at::Tensor keep_h, keep_c, fresh;   // as in ForwardExtras (fresh saved)
  at::Tensor grad_cell_out;           // (B, H) gradient of cell_out, or undefined
  at::Tensor d_gh_raw;                // (B, G*H) out with LN(h W_hh^T): gradient of h W_hh^T itself
  at::Tensor d_ln_cell;               // (B, 2H) out with LN(c): dy * c_hat and dy, summed into the
                                      //         gradients of its gain and bias after the loop
  at::Tensor ln_hh_grad_sums;         // (threads, G*H) of the accumulation type, or undefined: thread i
                                      //         adds d_gh * xhat_hh of its rows, the gain's gradient
};

struct ForwardStep {
  Mode mode;
  int64_t t;           // time index of this step
  at::Tensor lengths;  // (B,) int64 on x's device, or undefined: every row alive
  at::Tensor gi;       // (B, G*H) x[t] W_ih^T (no bias)
  at::Tensor gh;       // (B, G*H) h_prev W_hh^T (no bias), or undefined: the CPU loop added it into gi
                       // (lstm and rnn, without per-step extras: see rnn_layer.cpp)
  at::Tensor b_ih;     // (G*H,) biases (zeros when the layer has none), added here so
  at::Tensor b_hh;     //        that both GEMMs write their outputs without a bias copy
  at::Tensor h_prev;   // (B, P)
  at::Tensor h_next;   // (B, P) state after the step; unused with projection (see commit_projection)
  at::Tensor c_prev;   // (B, H) lstm only
  at::Tensor c_next;   // (B, H) lstm only
  at::Tensor out;      // (B, P) output at t; unused with projection
  at::Tensor h_raw;    // (B, H) lstm with projection: h before projection, or undefined
  at::Tensor saved;    // (B, saved_gate_count*H) activations for backward, or undefined (inference);
                       // lstm may pass gi itself: unit j's gates are stored after its gi is read
  const ForwardExtras* extras = nullptr;  // LayerNorm, zoneout, cell outputs; null: none
};

struct BackwardStep {
  Mode mode;
  int64_t t;
  at::Tensor lengths;   // as in ForwardStep
  at::Tensor grad_out;  // (B, P) gradient of the output at t, or undefined (none, or projection)
  at::Tensor dh;        // (B, P) gradient of the state after the step (from later steps and h_n)
  at::Tensor dh_raw;    // (B, H) lstm with projection: gradient of h before projection, else undefined
  at::Tensor dc;        // (B, H) lstm: gradient of c after the step; updated in place to that of c_prev
  at::Tensor saved;     // (B, saved_gate_count*H) from forward
  at::Tensor h_prev;    // (B, P) gru
  at::Tensor h_next;    // (B, P) rnn
  at::Tensor c_prev;    // (B, H) lstm
  at::Tensor c_next;    // (B, H) lstm
  at::Tensor d_pre;     // (B, G*H) out: gradient of the input-side pre-activations (zero on dead rows)
  at::Tensor d_gh;      // (B, 3H) out, gru only: gradient of h W_hh^T + b_hh
  at::Tensor dh_prev;   // (B, P) out: the part of d h_prev not through W_hh (dead rows: dh)
  const BackwardExtras* extras = nullptr;
};

// LSTM with projection, forward: `out` holds h_raw W_hr^T. Alive rows:
// h_next = out; dead rows: h_next = h_prev, out = 0.
struct CommitProjection {
  int64_t t;
  at::Tensor lengths, out, h_prev, h_next;  // (B,), (B, P) x3
};

// LSTM with projection, backward: dst = alive ? dh + grad_out : 0 (grad_out may be undefined).
struct GatherProjectedGrad {
  int64_t t;
  at::Tensor lengths, dh, grad_out, dst;  // (B,), (B, P) x3
};

// LayerNorm LSTM/GRU, the input side for all steps at once: rows (N, G*H)
// <- gamma * LN(rows), in place, each row in one cache-hot pass (ATen's
// layer_norm, a copy and a multiply made three passes and a temporary of the
// whole (T, B, G*H)). x_hat (N, G*H): the normalised rows, or undefined
// (not kept); rstd (N,) strided: each row's rstd, or undefined.
struct LayerNormRows {
  at::Tensor rows, gamma, x_hat, rstd;
};

// Its backward, all rows at once, each row in one pass: d_rows (N, G*H) <- the
// gradient of the rows before LN from dy (N, G*H), the gradient of
// gamma * LN(rows), which it may overwrite (d_rows and dy the same tensor).
// x_hat and rstd as the forward saved them. With sums (threads, 2, G*H) of
// the accumulation type, zeroed: thread i adds dy * x_hat (gamma's gradient)
// and dy (the bias's) of its rows, and the caller adds up the threads. ATen's
// LayerNorm backward, a rescale and a sum took four passes over the rows and
// a temporary of their size.
struct LayerNormRowsBackward {
  at::Tensor dy, x_hat, rstd, gamma, d_rows, sums;
};

void forward_step_cpu(const ForwardStep& step);
void layer_norm_rows_cpu(const LayerNormRows& step);
void layer_norm_rows_backward_cpu(const LayerNormRowsBackward& step);
void backward_step_cpu(const BackwardStep& step);
void commit_projection_cpu(const CommitProjection& step);
void gather_projected_grad_cpu(const GatherProjectedGrad& step);

#ifdef RNNKERNELS_WITH_CUDA
void forward_step_cuda(const ForwardStep& step);
void backward_step_cuda(const BackwardStep& step);
void commit_projection_cuda(const CommitProjection& step);
void gather_projected_grad_cuda(const GatherProjectedGrad& step);
#endif

}  // namespace rnnkernels
