// One recurrent layer in one direction, forward and backward: the sequence
// loop, device agnostic (ATen GEMMs + the per-device pointwise step of
// csrc/pointwise.h). Registered for CPU in csrc/rnn_ops.cpp; a device adds
// its pointwise steps and registers these same functions for its key.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace rnnkernels {

// Returns (output, h_n, c_n, states, cells, gates, hidden_raw); see rnn_ops.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_forward(
    c10::string_view mode, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool reverse, bool training);

// Returns (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rnn_layer_backward(c10::string_view mode, const c10::optional<at::Tensor>& grad_output,
                   const c10::optional<at::Tensor>& grad_h_n, const c10::optional<at::Tensor>& grad_c_n,
                   const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                   const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool reverse,
                   const at::Tensor& states, const at::Tensor& cells, const at::Tensor& gates,
                   const at::Tensor& hidden_raw, bool has_bias, bool input_grad, bool weight_grad);

}  // namespace rnnkernels
