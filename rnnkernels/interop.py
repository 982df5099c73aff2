"""How the recurrent layers meet torch's transforms and modes, so that every
path gives torch's numbers or a clear error.

What the compiled layer ops (rnnkernels.rnn_ops: C++ on CPU and CUDA;
rnnkernels.backends.triton) share beyond their fast kernels:

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

What the modules share (rnnkernels.modules, rnnkernels.cells):

- autocast (`autocast_plan`): torch's policy for its recurrent ops is
  lower_precision_fp (CPU: bfloat16, as torch.nn.LSTM runs under
  torch.autocast("cpu"); CUDA: float16 or bfloat16, as cuDNN's RNNs do): the
  float32 and float16 / bfloat16 tensors of a call are cast to the autocast
  dtype, float64 ones are left alone.
"""
import sys
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from . import backends, reference

_EXPANDED_WEIGHTS_MODULE = "torch.nn.utils._expanded_weights.expanded_weights_impl"


def needs_reference(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether a layer call must run the reference: inside a functorch
    transform, or with forward-mode tangents on some input. Never while
    torch.compile traces (it supports neither; the op must be traced)."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
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


def local_views(tensors: Sequence[Optional[Tensor]]) -> list:
    """A fresh view of each tensor that requires grad, for a backward's
    recompute to take and its autograd.grad to ask gradients of. Asked of the
    saved tensors themselves, autograd.grad would also follow every path
    through their history: where a saved state came from a step with the same
    weights (a decoder's cell, one call per step), that step's weight
    gradients would be added a second time. The views still lead back to the
    tensors, so the gradients stay functions of them (double backward)."""
    with torch.enable_grad():
        return [t.view_as(t) if t is not None and t.requires_grad else t for t in tensors]


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
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = local_views((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
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


class AutocastPlan(NamedTuple):
    compute: torch.dtype  # the dtype the kernels run in
    output: torch.dtype   # the dtype the call returns
    backend: str          # the backend that runs it, resolved once for the whole call


# One C call: is any autocast on at all (every module call asks).
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def any_autocast() -> bool:
    """Whether some autocast may be on (always True on a torch without the query)."""
    return _any_autocast()


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for `device_type`, or None (torch >= 2.4 API, older one as fallback)."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # pragma: no cover - torch < 2.4
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return None


def autocast_plan(requested_backend: Optional[str], x: Tensor, op: str = "rnn") -> Optional[AutocastPlan]:
    """None outside autocast (or for float64 input); else how to run the call.

    The backend is the one a float32 call would run on. When it has no kernel
    for the autocast dtype (the C++ kernels have none for float16), it computes
    in float32 and the outputs are cast: the caller sees autocast's dtype either
    way, never a silent switch to a slower backend."""
    if not _any_autocast() or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    target = _autocast_dtype(x.device.type)
    if target is None:
        return None
    name, _ = backends.resolve(requested_backend, x.device, op, torch.float32)
    runs_in_target = backends.unavailable_reason(name, x.device, op, target) is None
    return AutocastPlan(target if runs_in_target else torch.float32, target, name)


def autocast_cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """t in `dtype` if autocast would cast it (floating, not float64), else t."""
    if t is None or not t.is_floating_point() or t.dtype == torch.float64 or t.dtype == dtype:
        return t
    return t.to(dtype)
