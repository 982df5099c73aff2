// Op schemas of the attention kernels (implementations: csrc/cpu/attention.cpp;
// autograd and fake kernels: rnnkernels/attention_ops.py).
//
// attention_forward  -> (context (B, H, Tq, Dv), lse (B, H, Tq), weights (B, H, Tq, Tk), or (0,) when not asked)
//   lse is the log-sum-exp of each row's visible scaled scores, -inf for a row that sees no key.
// attention_backward -> (grad_query, grad_key, grad_value); grad_weights is the
//   upstream gradient of the returned weights (None when they were not returned or not used).
#include <torch/extension.h>

TORCH_LIBRARY_FRAGMENT(rnnkernels, m) {
  m.def("attention_forward(Tensor query, Tensor key, Tensor value, Tensor? key_lengths, bool causal, float scale, "
        "bool return_weights) -> (Tensor, Tensor, Tensor)");
  m.def("attention_backward(Tensor grad_context, Tensor? grad_weights, Tensor query, Tensor key, Tensor value, "
        "Tensor context, Tensor lse, Tensor? weights, Tensor? key_lengths, bool causal, float scale) "
        "-> (Tensor, Tensor, Tensor)");
}
