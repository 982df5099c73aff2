// The batch order of a layer with uneven lengths: sorted by length, longest
// first (stable). The shared sequence loop (csrc/rnn_layer.cpp) and the CUDA
// persistent passes (csrc/cuda/rnn_cuda.cpp) both run the batch in this order
// and save their activations in it, so either backward reads what either
// forward saved.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace rnnkernels {

struct SortedBatch {
  at::Tensor order;         // (B,) sorted row i is the caller's row order[i], on x's device; undefined: as given
  at::Tensor lengths;       // (B,) sorted lengths on x's device; undefined: every row runs all T steps
  at::Tensor host_lengths;  // (B,) the same sorted lengths on the CPU; undefined likewise

  // unsorted_host_lengths: (B,) int64 on the CPU, or undefined when every row
  // runs all T steps.
  SortedBatch(const at::Tensor& unsorted_host_lengths, const at::Tensor& x) {
    if (!unsorted_host_lengths.defined()) return;
    at::Tensor indices;
    std::tie(host_lengths, indices) = unsorted_host_lengths.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true);
    if (!indices.equal(at::arange(indices.size(0), indices.options()))) order = indices.to(x.device());
    lengths = host_lengths.to(x.device());
  }
  // `t` with its batch dimension `dim` in sorted order, and back.
  at::Tensor sort(const at::Tensor& t, int64_t dim) const {
    return order.defined() && t.defined() ? t.index_select(dim, order) : t;
  }
  at::Tensor unsort(const at::Tensor& t, int64_t dim) const {
    if (!order.defined() || !t.defined()) return t;
    return at::empty_like(t).index_copy_(dim, order, t);
  }
};

}  // namespace rnnkernels
