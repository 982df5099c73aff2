// Op schemas of the recurrent layers, and their CPU registration.
//
// rnn_layer_forward: one layer, one direction; mode is "rnn_tanh",
// "rnn_relu", "lstm" or "gru" (one op, so there is one copy of the loop).
//   x (T, B, I); h0 (B, P) or None (zeros); c0 (B, H) lstm only, or None;
//   w_ih (G*H, I); w_hh (G*H, P); b_ih, b_hh (G*H,) or None;
//   w_hr (P, H) lstm projection or None; lengths (B,) int64 CPU or None;
//   reverse: walk t = T-1..0 (each sequence starts at its own last step);
//   training: save what backward needs (else the last four are empty).
//   -> output (T, B, P), h_n (B, P), c_n (B, H) (lstm; else empty),
//      states, cells, gates, hidden_raw: saved activations, layout in rnn_layer.cpp.
// rnn_layer_backward: gradients from a training forward's saved tensors.
//   grad_output, grad_h_n, grad_c_n may be None (no gradient flows there);
//   input_grad / weight_grad: whether to compute grad_x / the weight and
//   bias gradients (else empty); has_bias: whether biases were given.
//   -> grad_x, grad_h0, grad_c0 (lstm; else empty), grad_w_ih, grad_w_hh,
//      grad_b_ih, grad_b_hh, grad_w_hr (empty when absent or not asked for).
// rnn_layer_gate_grads: rnn_layer_backward (no lengths, no projection)
//   returning, instead of the weight and bias gradients, the gate gradients
//   they are sums of: d_gi (T, B, G*H) of x W_ih^T + b_ih, d_gh of
//   h W_hh^T + b_hh (gru; empty for the others, where it is d_gi), for a
//   caller that sums the weight gradients of many calls in one product
//   (rnnkernels.rnn_ops.GatheredWeightGrads: a decoder's cell, step by step)
//   -> grad_x, grad_h0, grad_c0, d_gi, d_gh.
// rnn_bidirectional_forward / rnn_bidirectional_backward: both directions of
//   a bidirectional layer (no projection, no extras) at once, each on a
//   thread of its own: on 2 cores two single-threaded loops beat one
//   two-threaded loop after the other wherever a step is too small to split
//   well. Arguments as rnn_layer_forward's (then the reverse direction's h0,
//   c0, w_ih, w_hh, b_ih, b_hh; the lengths are shared)
//   -> [output, h_n, c_n, states, cells, gates] of the forward direction, then
//   of the reverse one. The backward takes each direction's incoming
//   gradients, weights and saved tensors -> [grad_x, grad_h0, grad_c0,
//   grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh] of each (grad_x of the layer
//   is their sum).
// rnn_layer_forward_ext / rnn_layer_backward_ext: the same loop with what a
// layer adds to torch.nn's cell (no projection):
//   ln_ih_weight, ln_hh_weight (G*H,): gates from gamma_ih LN(x W_ih^T) +
//     gamma_hh LN(h W_hh^T) + biases (lstm, gru; both or neither);
//   ln_cell_weight, ln_cell_bias (H,): lstm h = o * tanh(LN(c));
//   keep_h, keep_c (T, B, H): zoneout, state = keep * previous + (1 - keep) * fresh
//     (Bernoulli draws in training, the probability itself in evaluation);
//   return_cells: lstm, every step's c -> cell_states (T, B, H), zero past each end.
//   Saved besides the plain op's: x_hat (2, T, B, G*H) LayerNorm's normalised
//   projections, row_stats (T, B, 4) rstd of LN(h W_hh^T), mean and rstd of
//   LN(c), rstd of LN(x W_ih^T); fresh (T, B, H) the pre-zoneout c (lstm) or h (rnn).
// Autograd and fake kernels are registered in rnnkernels/rnn_ops.py.
#include <torch/library.h>

#include "rnn_layer.h"

TORCH_LIBRARY_FRAGMENT(rnnkernels, m) {
  m.def(
      "rnn_layer_forward(str mode, Tensor x, Tensor? h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool reverse, bool training) -> (Tensor output, Tensor h_n, "
      "Tensor c_n, Tensor states, Tensor cells, Tensor gates, Tensor hidden_raw)");
  m.def(
      "rnn_layer_backward(str mode, Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? lengths, bool reverse, Tensor states, Tensor cells, "
      "Tensor gates, Tensor hidden_raw, bool has_bias, bool input_grad, bool weight_grad) -> (Tensor grad_x, "
      "Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, "
      "Tensor grad_w_hr)");
  m.def(
      "rnn_layer_gate_grads(str mode, Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, "
      "Tensor w_ih, Tensor w_hh, bool reverse, Tensor states, Tensor cells, Tensor gates, bool input_grad) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_c0, Tensor d_gi, Tensor d_gh)");
  m.def(
      "rnn_bidirectional_forward(str mode, Tensor x, Tensor? h0, Tensor? c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? h0_reverse, Tensor? c0_reverse, Tensor w_ih_reverse, "
      "Tensor w_hh_reverse, Tensor? b_ih_reverse, Tensor? b_hh_reverse, Tensor? lengths, bool training) -> Tensor[]");
  m.def(
      "rnn_bidirectional_backward(str mode, Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor? grad_output_reverse, Tensor? grad_h_n_reverse, Tensor? grad_c_n_reverse, Tensor x, Tensor w_ih, "
      "Tensor w_hh, Tensor w_ih_reverse, Tensor w_hh_reverse, Tensor? lengths, Tensor states, Tensor cells, "
      "Tensor gates, Tensor states_reverse, Tensor cells_reverse, Tensor gates_reverse, bool has_bias, "
      "bool input_grad, bool weight_grad) -> Tensor[]");
  m.def(
      "rnn_layer_forward_ext(str mode, Tensor x, Tensor? h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? lengths, bool reverse, bool training, Tensor? ln_ih_weight, Tensor? ln_hh_weight, "
      "Tensor? ln_cell_weight, Tensor? ln_cell_bias, Tensor? keep_h, Tensor? keep_c, bool return_cells) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor cell_states, Tensor states, Tensor cells, Tensor gates, "
      "Tensor x_hat, Tensor row_stats, Tensor fresh)");
  m.def(
      "rnn_layer_backward_ext(str mode, Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor? grad_cell_states, Tensor x, Tensor w_ih, Tensor w_hh, Tensor? lengths, bool reverse, Tensor states, "
      "Tensor cells, Tensor gates, Tensor x_hat, Tensor row_stats, Tensor fresh, bool has_bias, bool input_grad, "
      "bool weight_grad, Tensor? ln_ih_weight, Tensor? ln_hh_weight, Tensor? ln_cell_weight, Tensor? ln_cell_bias, "
      "Tensor? keep_h, Tensor? keep_c, bool return_cells) -> (Tensor grad_x, Tensor grad_h0, Tensor grad_c0, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_ln_ih_weight, "
      "Tensor grad_ln_hh_weight, Tensor grad_ln_cell_weight, Tensor grad_ln_cell_bias)");
}

TORCH_LIBRARY_IMPL(rnnkernels, CPU, m) {
  m.impl("rnn_layer_forward", &rnnkernels::rnn_layer_forward);
  m.impl("rnn_layer_backward", &rnnkernels::rnn_layer_backward);
  m.impl("rnn_layer_gate_grads", &rnnkernels::rnn_layer_gate_grads);
  m.impl("rnn_bidirectional_forward", &rnnkernels::rnn_bidirectional_forward);
  m.impl("rnn_bidirectional_backward", &rnnkernels::rnn_bidirectional_backward);
  m.impl("rnn_layer_forward_ext", &rnnkernels::rnn_layer_forward_ext);
  m.impl("rnn_layer_backward_ext", &rnnkernels::rnn_layer_backward_ext);
}
