// One recurrent layer in one direction, forward and backward: the sequence
// loop, device agnostic (ATen GEMMs + the per-device pointwise step of
// csrc/pointwise.h). Registered for CPU in csrc/rnn_ops.cpp; a device adds
// its pointwise steps and registers these same functions for its key.
#pragma once

#include <vector>

#include <ATen/ATen.h>

#include <tuple>

namespace rnnkernels {

// What a layer adds to torch.nn's cell (rnn_layer_forward_ext): each tensor
// undefined when its option is off. No projection (w_hr) with any of them.
struct LayerOptions {
  at::Tensor ln_ih_weight, ln_hh_weight;     // (G*H,) gains of LN(x W_ih^T), LN(h W_hh^T): lstm, gru
  at::Tensor ln_cell_weight, ln_cell_bias;   // (H,) lstm: h = o * tanh(LN(c))
  at::Tensor keep_h, keep_c;                 // (T, B, H) zoneout keep factors of h and (lstm) c
  bool return_cells = false;                 // lstm: every step's c as an output
  bool any() const {
    return ln_ih_weight.defined() || ln_hh_weight.defined() || ln_cell_weight.defined() || keep_h.defined() ||
           keep_c.defined() || return_cells;
  }
};

// Returns (output, h_n, c_n, states, cells, gates, hidden_raw); see rnn_ops.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_forward(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool reverse, bool training);

// Both directions of a bidirectional layer (no projection, no extras) at
// once, one thread each; see rnn_ops.cpp for what they return.
std::vector<at::Tensor> rnn_bidirectional_forward(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& h0_reverse, const c10::optional<at::Tensor>& c0_reverse,
    const at::Tensor& w_ih_reverse, const at::Tensor& w_hh_reverse, const c10::optional<at::Tensor>& b_ih_reverse,
    const c10::optional<at::Tensor>& b_hh_reverse, const c10::optional<at::Tensor>& lengths, bool training);
std::vector<at::Tensor> rnn_bidirectional_backward(
    c10::string_view mode, const c10::optional<at::Tensor>& grad_output, const c10::optional<at::Tensor>& grad_h_n,
    const c10::optional<at::Tensor>& grad_c_n, const c10::optional<at::Tensor>& grad_output_reverse,
    const c10::optional<at::Tensor>& grad_h_n_reverse, const c10::optional<at::Tensor>& grad_c_n_reverse,
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_ih_reverse,
    const at::Tensor& w_hh_reverse, const c10::optional<at::Tensor>& lengths, const at::Tensor& states,
    const at::Tensor& cells, const at::Tensor& gates, const at::Tensor& states_reverse,
    const at::Tensor& cells_reverse, const at::Tensor& gates_reverse, bool has_bias, bool input_grad,
    bool weight_grad);

// Returns (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rnn_layer_backward(c10::string_view mode, const c10::optional<at::Tensor>& grad_output,
                   const c10::optional<at::Tensor>& grad_h_n, const c10::optional<at::Tensor>& grad_c_n,
                   const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                   const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool reverse,
                   const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates,
                   const at::Tensor& hidden_raw, bool has_bias, bool input_grad, bool weight_grad);

// (output, h_n, c_n, cell_states, states, cells, gates, x_hat, row_stats, fresh); see rnn_ops.cpp.
using ExtendedForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor>;
// (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_ln_ih_weight,
//  grad_ln_hh_weight, grad_ln_cell_weight, grad_ln_cell_bias).
using ExtendedBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

ExtendedForward rnn_layer_forward_ext(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& lengths, bool reverse, bool training, const c10::optional<at::Tensor>& ln_ih,
    const c10::optional<at::Tensor>& ln_hh, const c10::optional<at::Tensor>& ln_cell_w,
    const c10::optional<at::Tensor>& ln_cell_b, const c10::optional<at::Tensor>& keep_h,
    const c10::optional<at::Tensor>& keep_c, bool return_cells);

// rnn_layer_backward without lengths or projection, and with the gate
// gradients in place of the weights'; see rnn_ops.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_gate_grads(
    c10::string_view mode, const c10::optional<at::Tensor>& grad_output, const c10::optional<at::Tensor>& grad_h_n,
    const c10::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    bool reverse, const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates, bool input_grad);

ExtendedBackward rnn_layer_backward_ext(
    c10::string_view mode, const c10::optional<at::Tensor>& grad_output, const c10::optional<at::Tensor>& grad_h_n,
    const c10::optional<at::Tensor>& grad_c_n, const c10::optional<at::Tensor>& grad_cell_states, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates, const at::Tensor& x_hat,
    const at::Tensor& row_stats, const at::Tensor& fresh, bool has_bias, bool input_grad, bool weight_grad,
    const c10::optional<at::Tensor>& ln_ih, const c10::optional<at::Tensor>& ln_hh,
    const c10::optional<at::Tensor>& ln_cell_w, const c10::optional<at::Tensor>& ln_cell_b,
    const c10::optional<at::Tensor>& keep_h, const c10::optional<at::Tensor>& keep_c, bool return_cells);

}  // namespace rnnkernels
