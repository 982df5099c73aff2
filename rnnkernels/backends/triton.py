"""The `triton` backend: one recurrent layer on the Triton kernels of
rnnkernels.triton_kernels (rnn.py), as torch.library custom ops with autograd
and fake kernels, so torch.compile traces them without graph breaks.

    rnnkernels::triton_rnn_layer_forward   -> out, h_n, c_n, saved, h_prev, c_prev, h_raw
    rnnkernels::triton_rnn_layer_backward  -> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr

Custom ops cannot return None: c_n, c_prev, dc0 are empty unless mode is
lstm; db_ih, db_hh are empty without biases; h_raw, dw_hr without w_hr.

It runs on CUDA tensors, and on CPU tensors in Triton's interpreter while
TRITON_INTERPRET=1 is set (Triton reads that variable when a kernel is
decorated, i.e. when rnnkernels.triton_kernels.rnn is first imported, lazily
at the first call, and again while launching).

Step path or sequence path: rnnkernels.triton_kernels.rnn.choose_path (hidden
size and batch; LSTM projections always take the step path); `PATH` below
forces one ("step" / "sequence") for tests and benchmarks.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import interop, reference
from ..reference import GATES, MODES
from . import register

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PATH = "auto"  # "auto" | "step" | "sequence"
_PACKAGE = "rnnkernels.triton_kernels"
_NUM_SAVED = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 4}  # as rnn_cells.NUM_SAVED; import-free for fakes


def _kernels():
    return importlib.import_module(f"{_PACKAGE}.rnn")


def _on_device(x: Tensor):
    """Triton launches on the current CUDA device: make it x's."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _triton_missing() -> Optional[str]:
    """Why Triton cannot be imported, or None, found without importing it
    (which would cost every `import rnnkernels` half a second)."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError) as exc:
        return f"Triton cannot be imported ({exc})"
    return None if spec is not None else "Triton is not installed; install it with `pip install triton`"


# Decided once, here: backend selection runs inside code that torch.compile
# traces, and an import there fails the trace.
TRITON_MISSING = _triton_missing()


def _interpreted() -> Optional[bool]:
    """Whether the kernels run in Triton's interpreter; None if not imported yet."""
    step = sys.modules.get(f"{_PACKAGE}.rnn_step")
    if step is None:
        return None
    return type(step.step_forward_kernel).__name__ == "InterpretedFunction"


def unavailable_reason(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[str]:
    if TRITON_MISSING is not None:
        return TRITON_MISSING
    if dtype is not None and dtype not in DTYPES:
        return f"the triton backend supports float32, float16 and bfloat16, not {dtype}"
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"the triton backend runs on CUDA tensors (and CPU tensors under TRITON_INTERPRET=1), not {device.type}"
    # Triton reads the variable when the kernels are decorated and again while launching.
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors (slow; for tests)"
    if _interpreted() is False:
        return ("the Triton kernels were imported without TRITON_INTERPRET=1, so they cannot run on CPU "
                "tensors; set TRITON_INTERPRET=1 before the first triton-backend call")
    return None


def check_layer_args(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths) -> None:
    """Raises a clear error, naming the argument, before any kernel runs."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if w_hr is not None and mode != "lstm":
        raise ValueError(f"w_hr (a projection) is only defined for lstm, not {mode}")
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (T, B, input_size), got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16 for the triton backend, got {x.dtype}")
    T, B, I = x.shape
    G = GATES[mode]
    P = w_hr.shape[0] if w_hr is not None and w_hr.dim() == 2 else None  # proj_size
    if w_hh.dim() != 2 or w_hh.shape[0] % G != 0 or (P is None and w_hh.shape[0] != G * w_hh.shape[1]):
        state = "P" if w_hr is not None else "H"
        raise ValueError(f"w_hh must have shape ({G}*H, {state}) for {mode}, got {tuple(w_hh.shape)}")
    H = w_hh.shape[0] // G
    P = P if P is not None else H
    expected = {"w_ih": (w_ih, (G * H, I)), "w_hh": (w_hh, (G * H, P)), "h0": (h0, (B, P)),
                "c0": (c0, (B, H)), "b_ih": (b_ih, (G * H,)), "b_hh": (b_hh, (G * H,)), "w_hr": (w_hr, (P, H))}
    if mode == "lstm" and c0 is None:
        raise ValueError("c0 is required for lstm")
    if mode != "lstm" and c0 is not None:
        raise ValueError(f"c0 must be None for {mode}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih and b_hh must both be given or both be None")
    for name, (tensor, shape) in expected.items():
        if tensor is None:
            continue
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        if tensor.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {tensor.dtype}")
        if tensor.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {tensor.device}")
    if lengths is not None:
        if lengths.dtype != torch.int64 or lengths.shape != (B,):
            raise ValueError(f"lengths must be an int64 tensor of shape ({B},), got {lengths.dtype} "
                             f"of shape {tuple(lengths.shape)}")
        if B > 0 and not torch.compiler.is_compiling():
            low, high = int(lengths.min()), int(lengths.max())
            if low < 0 or high > T:
                raise ValueError(f"lengths must lie in [0, {T}], got min {low}, max {high}")
    reason = unavailable_reason(x.device, x.dtype)
    if reason is not None:
        raise RuntimeError(f"the triton backend cannot run here: {reason}")


# ------------------------------------------------------------------ custom ops


@torch.library.custom_op("rnnkernels::triton_rnn_layer_forward", mutates_args=())
def layer_forward_op(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                     b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                     lengths: Optional[Tensor], reverse: bool, path: str
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    with _on_device(x):
        return tuple(_kernels().layer_forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                                              path))


@layer_forward_op.register_fake
def _layer_forward_fake(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, path):
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // GATES[mode], w_hh.shape[1]
    lstm, proj = mode == "lstm", w_hr is not None
    f32 = torch.float32
    return (x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B if lstm else 0, H),
            x.new_empty(T, B, _NUM_SAVED[mode] * H, dtype=f32), x.new_empty(T, B, P),
            x.new_empty(T if lstm else 0, B, H, dtype=f32), x.new_empty(T if proj else 0, B, H))


@torch.library.custom_op("rnnkernels::triton_rnn_layer_backward", mutates_args=())
def layer_backward_op(mode: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], has_bias: bool,
                      lengths: Optional[Tensor], reverse: bool, grad_out: Tensor, grad_h_n: Tensor,
                      grad_c_n: Optional[Tensor], saved: Tensor, h_prev: Tensor, c_prev: Tensor, h_raw: Tensor,
                      path: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    with _on_device(x):
        grads = _kernels().layer_backward(mode, x, w_ih, w_hh, w_hr, has_bias, lengths, reverse, grad_out,
                                          grad_h_n, grad_c_n, saved, h_prev, c_prev, h_raw, path)
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@layer_backward_op.register_fake
def _layer_backward_fake(mode, x, w_ih, w_hh, w_hr, has_bias, lengths, reverse, grad_out, grad_h_n, grad_c_n,
                         saved, h_prev, c_prev, h_raw, path):
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // GATES[mode], w_hh.shape[1]
    bias = (w_hh.shape[0],) if has_bias else (0,)
    return (torch.empty_like(x), x.new_empty(B, P), x.new_empty(B if mode == "lstm" else 0, H),
            torch.empty_like(w_ih), torch.empty_like(w_hh), x.new_empty(bias), x.new_empty(bias),
            torch.empty_like(w_hr) if w_hr is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, path = inputs
    _, _, _, saved, h_prev, c_prev, h_raw = output
    ctx.mode, ctx.reverse, ctx.path = mode, reverse, path
    ctx.has_c0, ctx.has_bias = c0 is not None, b_ih is not None
    # h0, c0 and the biases only serve a double backward's recompute.
    ctx.save_for_backward(x, h0, c0, b_ih, b_hh, w_ih, w_hh, w_hr, lengths, saved, h_prev, c_prev, h_raw)


def _backward(ctx, grad_out, grad_h_n, grad_c_n, *unused_grads):
    x, h0, c0, b_ih, b_hh, w_ih, w_hh, w_hr, lengths, saved, h_prev, c_prev, h_raw = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable too
        grads = interop.differentiable_grads(
            ctx.mode, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths), ctx.needs_input_grad[1:10],
            (grad_out, grad_h_n, grad_c_n if ctx.mode == "lstm" else None), ctx.reverse)
        return (None, *grads[:8], None, None, None)
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // GATES[ctx.mode], w_hh.shape[1]
    grad_out = grad_out if grad_out is not None else x.new_zeros(T, B, P)
    grad_h_n = grad_h_n if grad_h_n is not None else x.new_zeros(B, P)
    if ctx.mode == "lstm":
        grad_c_n = grad_c_n if grad_c_n is not None else x.new_zeros(B, H)
    else:
        grad_c_n = None
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = layer_backward_op(
        ctx.mode, x, w_ih, w_hh, w_hr, ctx.has_bias, lengths, ctx.reverse, grad_out, grad_h_n, grad_c_n,
        saved, h_prev, c_prev, h_raw, ctx.path)
    return (None, dx, dh0, dc0 if ctx.has_c0 else None, dw_ih, dw_hh,
            db_ih if ctx.has_bias else None, db_hh if ctx.has_bias else None,
            dw_hr if w_hr is not None else None, None, None, None)


layer_forward_op.register_autograd(_backward, setup_context=_setup_context)


def rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    """The backend entry point (contract: rnnkernels.reference.rnn_layer)."""
    check_layer_args(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    interop.check_no_expanded_weights(tensors)
    if interop.needs_reference(tensors):  # forward-mode AD, functorch: see rnnkernels.interop
        return reference.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    if PATH not in ("auto", "step", "sequence"):
        raise ValueError(f"rnnkernels.backends.triton.PATH must be 'auto', 'step' or 'sequence', got {PATH!r}")
    out, h_n, c_n = layer_forward_op(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, PATH)[:3]
    return out, h_n, c_n if mode == "lstm" else None


register("rnn", "triton", rnn_layer, priority={"cuda": 20}, unavailable_reason=unavailable_reason)
