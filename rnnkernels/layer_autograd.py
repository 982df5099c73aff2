"""What the compiled recurrent-layer ops (rnnkernels.rnn_ops: C++ on CPU and
CUDA; rnnkernels.backends.triton) share beyond their fast kernels, so that
every autograd path gives torch's numbers or a clear error:

- double backward: their backward ops have no derivative of their own, so a
  backward run with create_graph=True recomputes the layer with the pure-PyTorch
  reference (rnnkernels.reference.rnn_layer, the same math) under autograd and
  returns gradients that are differentiable again (`differentiable_grads`);
- forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) and the other
  functorch transforms (torch.func.grad, vmap, jacrev, ...): a custom op has
  no rule for them, so such calls run the reference (`needs_reference`);
- ExpandedWeights (torch.nn.utils._per_sample_grad, Opacus-style per-sample
  gradients) are refused before any work (`check_no_expanded_weights`); the
  modules hand them to torch.nn's own forward, whose decomposition supports them.
"""
import sys
from typing import Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from . import reference

_EXPANDED_WEIGHTS_MODULE = "torch.nn.utils._expanded_weights.expanded_weights_impl"


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None:
        return active()
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)  # torch < 2.1
    return peek is not None and peek() is not None


def needs_reference(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether a layer call must run the reference: inside a functorch
    transform, or with forward-mode tangents on some input. Never while
    torch.compile traces (it supports neither; the op must be traced)."""
    if torch.compiler.is_compiling():
        return False
    if _functorch_active():
        return True
    if forward_ad._current_level < 0:  # outside every forward_ad.dual_level()
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def expanded_weights_in(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether some tensor is an ExpandedWeight (none can exist before its module is imported)."""
    module = sys.modules.get(_EXPANDED_WEIGHTS_MODULE)
    expanded = getattr(module, "ExpandedWeight", None)
    return expanded is not None and any(isinstance(t, expanded) for t in tensors)


def check_no_expanded_weights(tensors: Sequence[Optional[Tensor]]) -> None:
    if not torch.compiler.is_compiling() and expanded_weights_in(tensors):
        raise RuntimeError(
            "rnnkernels: the layer op got ExpandedWeights (per-sample gradients); it cannot compute them. "
            "Call the module (rnnkernels.LSTM / GRU / RNN, which hands ExpandedWeights to torch.nn's "
            "decomposition), or compute per-sample gradients with torch.func.vmap over torch.func.grad"
        )


def differentiable_grads(mode: str, inputs: Tuple[Optional[Tensor], ...], needs: Sequence[bool],
                         grad_outputs: Sequence[Optional[Tensor]], reverse: bool) -> Tuple[Optional[Tensor], ...]:
    """Gradients of one layer's (out, h_n, c_n) that autograd can differentiate again.

    inputs: (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths) as the forward got
    them (h0 None: zeros); needs: for each of them, whether its gradient is
    wanted; grad_outputs: the incoming (grad_out, grad_h_n, grad_c_n), None where
    nothing flows. Returns one gradient (or None) per input."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths = inputs
    if h0 is None:
        out_size = w_hr.shape[0] if w_hr is not None else w_hh.shape[1]
        h0 = x.new_zeros((x.shape[1], out_size))
    with torch.enable_grad():
        outputs = reference.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    flowing = [(o, g) for o, g in zip(outputs, grad_outputs) if o is not None and g is not None]
    differentiable = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    wanted = [i for i, t in enumerate(differentiable) if needs[i] and t is not None and t.requires_grad]
    result: list = [None] * len(inputs)
    if not flowing or not wanted:
        return tuple(result)
    grads = torch.autograd.grad([o for o, _ in flowing], [differentiable[i] for i in wanted],
                                [g for _, g in flowing], create_graph=True, allow_unused=True)
    for i, grad in zip(wanted, grads):
        result[i] = grad
    return tuple(result)
