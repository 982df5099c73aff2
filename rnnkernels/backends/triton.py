"""The `triton` backend: one recurrent layer on the Triton kernels of
rnnkernels.triton_kernels (rnn.py), as torch.library custom ops with autograd
and fake kernels, so torch.compile traces them without graph breaks.

    rnnkernels::triton_rnn_layer_forward   -> out, h_n, c_n, saved, h_prev, c_prev, h_raw
    rnnkernels::triton_rnn_layer_backward  -> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr

    rnnkernels::triton_rnn_layer_forward_ext   -> out, h_n, c_n, cell_states, saved, h_prev, c_prev,
                                                  xhat_ih, xhat_hh, row_stats
    rnnkernels::triton_rnn_layer_backward_ext  -> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh,
                                                  d_ln_ih, d_ln_hh, d_ln_cell_w, d_ln_cell_b

The _ext pair is op "rnn_ext": the layer extras of
rnnkernels.reference.rnn_layer_extended (LayerNorm LSTM / GRU, zoneout of h
and c with the caller's keep masks, every step's c), always on the step
path (rnn.layer_forward_ext; `PATH` does not apply). Weight drop is applied
before the op (rnnkernels.functional), so it only sees a masked w_hh.

Custom ops cannot return None: c_n, c_prev, dc0 are empty unless mode is
lstm; db_ih, db_hh are empty without biases; h_raw, dw_hr without w_hr;
the _ext ops' buffers and gradients of absent extras likewise.

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


def check_layer_args(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, states_optional=False) -> None:
    """Raises a clear error, naming the argument, before any kernel runs.
    states_optional: h0 and (lstm) c0 may be None (zeros), as op "rnn_ext" takes them."""
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
    if mode == "lstm" and c0 is None and not states_optional:
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


# ------------------------------------------------------- layer extras (rnn_ext)


def _option_error(message: str) -> RuntimeError:
    """The CPU op's (csrc/rnn_layer.cpp check_options) error, word for word."""
    return RuntimeError(f"rnnkernels: {message}")


def check_ext_options(mode, x, w_hh, extras: reference.LayerExtras) -> None:
    """The checks of csrc/rnn_layer.cpp check_options, with its messages;
    call after check_layer_args (shapes of x and w_hh known good)."""
    lstm, gru = mode == "lstm", mode == "gru"
    T, B = x.shape[0], x.shape[1]
    H = w_hh.shape[0] // GATES[mode]
    G = GATES[mode]
    layer_norm = extras.ln_ih_weight is not None or extras.ln_hh_weight is not None
    if layer_norm and not (lstm or gru):
        raise _option_error(f"LayerNorm is for lstm and gru, got {mode}")
    if (extras.ln_ih_weight is None) != (extras.ln_hh_weight is None):
        raise _option_error("ln_ih_weight and ln_hh_weight go together (a LayerNorm layer normalises both "
                            "projections)")
    if extras.ln_cell_weight is not None and not lstm:
        raise _option_error("ln_cell_weight is for lstm only")
    if (extras.ln_cell_weight is None) != (extras.ln_cell_bias is None):
        raise _option_error("ln_cell_weight and ln_cell_bias go together")
    if extras.keep_c is not None and not lstm:
        raise _option_error("zoneout of c (keep_c) is for lstm only")
    if extras.return_cells and not lstm:
        raise _option_error(f"return_cells is for lstm only (a {'gru' if gru else 'plain rnn'} has no cell state)")
    checks = (("ln_ih_weight", extras.ln_ih_weight, (G * H,), "(gates * hidden_size,)"),
              ("ln_hh_weight", extras.ln_hh_weight, (G * H,), "(gates * hidden_size,)"),
              ("ln_cell_weight", extras.ln_cell_weight, (H,), "(hidden_size,)"),
              ("ln_cell_bias", extras.ln_cell_bias, (H,), "(hidden_size,)"),
              ("keep_h", extras.keep_h, (T, B, H), "(T, batch, hidden_size) zoneout keep factors"),
              ("keep_c", extras.keep_c, (T, B, H), "(T, batch, hidden_size) zoneout keep factors"))
    for name, tensor, shape, meaning in checks:
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise _option_error(f"{name} must be a tensor or None, got {type(tensor).__name__}")
        if tensor.device != x.device:
            raise _option_error(f"{name} must be on {x.device} like x, got {tensor.device}")
        if tensor.dtype != x.dtype:
            raise _option_error(f"{name} must have dtype {x.dtype} like x, got {tensor.dtype}")
        if tuple(tensor.shape) != shape:
            shown = f"({shape[0]},)" if len(shape) == 1 else str(shape)
            got = tuple(tensor.shape)
            got = f"({got[0]},)" if len(got) == 1 else str(got)
            raise _option_error(f"{name} must have shape {meaning} = {shown}, got {got}")


def _ext_kernel_extras(mode, ln_ih, ln_hh, ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells):
    def contiguous(t):
        return t.contiguous() if t is not None else None

    return _kernels().Extras(contiguous(ln_ih), contiguous(ln_hh), contiguous(ln_cell_w), contiguous(ln_cell_b),
                             contiguous(keep_h), contiguous(keep_c) if mode == "lstm" else None,
                             return_cells and mode == "lstm")


def _ext_saved_shapes(mode, T, B, H, ln_ih, ln_hh, ln_cell_w, return_cells):
    """Shapes and dtypes of layer_forward_ext's results after (out, h_n)."""
    lstm, GH = mode == "lstm", GATES[mode] * H
    f32, same = torch.float32, None
    any_norm = ln_ih is not None or ln_hh is not None or (lstm and ln_cell_w is not None)
    return [((B if lstm else 0, H), same), ((T if lstm and return_cells else 0, B, H), same),
            ((T, B, _NUM_SAVED[mode] * H), f32), ((T, B, H), same), ((T if lstm else 0, B, H), f32),
            ((T if ln_ih is not None else 0, B, GH), f32), ((T if ln_hh is not None else 0, B, GH), f32),
            ((T if any_norm else 0, B, 4), f32)]


@torch.library.custom_op("rnnkernels::triton_rnn_layer_forward_ext", mutates_args=())
def layer_forward_ext_op(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                         b_ih: Optional[Tensor], b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                         ln_ih: Optional[Tensor], ln_hh: Optional[Tensor], ln_cell_w: Optional[Tensor],
                         ln_cell_b: Optional[Tensor], keep_h: Optional[Tensor], keep_c: Optional[Tensor],
                         return_cells: bool
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    extras = _ext_kernel_extras(mode, ln_ih, ln_hh, ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells)
    with _on_device(x):
        return tuple(_kernels().layer_forward_ext(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                                  extras))


@layer_forward_ext_op.register_fake
def _layer_forward_ext_fake(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, ln_ih, ln_hh, ln_cell_w,
                            ln_cell_b, keep_h, keep_c, return_cells):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    rest = [x.new_empty(shape, dtype=dtype) for shape, dtype in
            _ext_saved_shapes(mode, T, B, H, ln_ih, ln_hh, ln_cell_w, return_cells)]
    return (x.new_empty(T, B, H), x.new_empty(B, H), *rest)


def _ext_grad_shapes(mode, x, w_ih, w_hh, has_bias, ln_ih, ln_hh, ln_cell_w, ln_cell_b):
    """Shapes of layer_backward_ext_op's results ((0,) for what is absent)."""
    T, B, _ = x.shape
    GH, H = w_hh.shape
    lstm = mode == "lstm"
    return [tuple(x.shape), (B, H), (B, H) if lstm else (0,), tuple(w_ih.shape), tuple(w_hh.shape),
            (GH,) if has_bias else (0,), (GH,) if has_bias else (0,), (GH,) if ln_ih is not None else (0,),
            (GH,) if ln_hh is not None else (0,), (H,) if lstm and ln_cell_w is not None else (0,),
            (H,) if lstm and ln_cell_b is not None else (0,)]


@torch.library.custom_op("rnnkernels::triton_rnn_layer_backward_ext", mutates_args=())
def layer_backward_ext_op(mode: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, has_bias: bool,
                          lengths: Optional[Tensor], reverse: bool, grad_out: Tensor, grad_h_n: Tensor,
                          grad_c_n: Optional[Tensor], grad_cells: Optional[Tensor], saved: Tensor, h_prev: Tensor,
                          c_prev: Tensor, xhat_ih: Tensor, xhat_hh: Tensor, row_stats: Tensor,
                          ln_ih: Optional[Tensor], ln_hh: Optional[Tensor], ln_cell_w: Optional[Tensor],
                          ln_cell_b: Optional[Tensor], keep_h: Optional[Tensor], keep_c: Optional[Tensor],
                          return_cells: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                       Tensor, Tensor, Tensor, Tensor]:
    extras = _ext_kernel_extras(mode, ln_ih, ln_hh, ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells)
    with _on_device(x):
        grads = _kernels().layer_backward_ext(mode, x, w_ih, w_hh, has_bias, lengths, reverse, grad_out, grad_h_n,
                                              grad_c_n, grad_cells, saved, h_prev, c_prev, xhat_ih, xhat_hh,
                                              row_stats, extras)
    shapes = _ext_grad_shapes(mode, x, w_ih, w_hh, has_bias, ln_ih, ln_hh, ln_cell_w, ln_cell_b)
    return tuple(g if g is not None else x.new_empty(shape) for g, shape in zip(grads, shapes))


@layer_backward_ext_op.register_fake
def _layer_backward_ext_fake(mode, x, w_ih, w_hh, has_bias, lengths, reverse, grad_out, grad_h_n, grad_c_n,
                             grad_cells, saved, h_prev, c_prev, xhat_ih, xhat_hh, row_stats, ln_ih, ln_hh,
                             ln_cell_w, ln_cell_b, keep_h, keep_c, return_cells):
    return tuple(x.new_empty(shape) for shape in
                 _ext_grad_shapes(mode, x, w_ih, w_hh, has_bias, ln_ih, ln_hh, ln_cell_w, ln_cell_b))


# Inputs of the forward ext op, in schema order; the differentiable ones.
_EXT_INPUTS = ("mode", "x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse", "ln_ih", "ln_hh",
               "ln_cell_w", "ln_cell_b", "keep_h", "keep_c", "return_cells")
_EXT_GRADS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_cell_w", "ln_cell_b")
_EXT_SAVED = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "ln_ih", "ln_hh", "ln_cell_w",
              "ln_cell_b", "keep_h", "keep_c")


def _ext_setup_context(ctx, inputs, output):
    args = dict(zip(_EXT_INPUTS, inputs))
    ctx.mode, ctx.reverse, ctx.return_cells = args["mode"], args["reverse"], args["return_cells"]
    tensors = [args[name] for name in _EXT_SAVED] + list(output[4:])
    ctx.present = tuple(t is not None for t in tensors)
    ctx.save_for_backward(*(t for t in tensors if t is not None))


def _ext_reference_grads(ctx, inputs, needs, grads_out):
    """create_graph (double backward): the gradients through the reference's
    math (rnnkernels.reference.rnn_layer_extended), taken on views of the
    saved inputs so that they are differentiable again (as rnn_ext_ops.py)."""
    wanted = [name for name in _EXT_GRADS if needs[name] and inputs[name] is not None]
    inputs = dict(zip(inputs, interop.local_views(list(inputs.values()))))  # see interop.local_views
    extras = reference.LayerExtras(inputs["ln_ih"], inputs["ln_hh"], inputs["ln_cell_w"], inputs["ln_cell_b"],
                                   inputs["keep_h"], inputs["keep_c"], ctx.return_cells)
    outputs = reference.rnn_layer_extended(ctx.mode, inputs["x"], inputs["h0"], inputs["c0"], inputs["w_ih"],
                                           inputs["w_hh"], inputs["b_ih"], inputs["b_hh"], inputs["lengths"],
                                           ctx.reverse, extras)
    pairs = [(o, g) for o, g in zip(outputs, grads_out) if o is not None and g is not None and o.requires_grad]
    if not pairs or not wanted:
        return {}
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[name] for name in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    return {name: g if g is not None else torch.zeros_like(inputs[name]) for name, g in zip(wanted, grads)}


def _ext_backward(ctx, grad_out, grad_h_n, grad_c_n, grad_cells, *unused_grads):
    it = iter(ctx.saved_tensors)
    values = [next(it) if present else None for present in ctx.present]
    inputs = dict(zip(_EXT_SAVED, values))
    saved, h_prev, c_prev, xhat_ih, xhat_hh, row_stats = values[len(_EXT_SAVED):]
    needs = dict(zip(_EXT_INPUTS, ctx.needs_input_grad))
    lstm = ctx.mode == "lstm"
    x, w_ih, w_hh = inputs["x"], inputs["w_ih"], inputs["w_hh"]
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable too
        grads = _ext_reference_grads(ctx, inputs, needs, (grad_out, grad_h_n, grad_c_n if lstm else None,
                                                          grad_cells if ctx.return_cells else None))
    else:
        T, B, _ = x.shape
        H = w_hh.shape[1]
        grad_out = grad_out if grad_out is not None else x.new_zeros(T, B, H)
        grad_h_n = grad_h_n if grad_h_n is not None else x.new_zeros(B, H)
        grad_c_n = (grad_c_n if grad_c_n is not None else x.new_zeros(B, H)) if lstm else None
        grad_cells = (grad_cells if grad_cells is not None else x.new_zeros(T, B, H)) \
            if lstm and ctx.return_cells else None
        result = layer_backward_ext_op(
            ctx.mode, x, w_ih, w_hh, inputs["b_ih"] is not None, inputs["lengths"], ctx.reverse, grad_out, grad_h_n,
            grad_c_n, grad_cells, saved, h_prev, c_prev, xhat_ih, xhat_hh, row_stats, inputs["ln_ih"],
            inputs["ln_hh"], inputs["ln_cell_w"], inputs["ln_cell_b"], inputs["keep_h"], inputs["keep_c"],
            ctx.return_cells)
        grads = dict(zip(_EXT_GRADS, result))
    return tuple(grads.get(name) if name in _EXT_GRADS and needs[name] and inputs.get(name) is not None else None
                 for name in _EXT_INPUTS)


layer_forward_ext_op.register_autograd(_ext_backward, setup_context=_ext_setup_context)


def rnn_layer_ext(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras):
    """The op "rnn_ext" entry point (contract: rnnkernels.reference.rnn_layer_extended):
    (out, h_n, c_n or None, cell_states or None). Every check runs before any kernel."""
    check_layer_args(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths, states_optional=True)
    check_ext_options(mode, x, w_hh, extras)
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, extras.ln_ih_weight, extras.ln_hh_weight, extras.ln_cell_weight,
               extras.ln_cell_bias)
    interop.check_no_expanded_weights(tensors)
    if interop.needs_reference(tensors):  # forward-mode AD, functorch: see rnnkernels.interop
        return reference.rnn_layer_extended(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras)
    B, H = x.shape[1], w_hh.shape[1]
    h0 = h0 if h0 is not None else x.new_zeros(B, H)
    if mode == "lstm" and c0 is None:
        c0 = x.new_zeros(B, H)
    out, h_n, c_n, cell_states = layer_forward_ext_op(
        mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras.ln_ih_weight, extras.ln_hh_weight,
        extras.ln_cell_weight, extras.ln_cell_bias, extras.keep_h, extras.keep_c, bool(extras.return_cells))[:4]
    return out, h_n, c_n if mode == "lstm" else None, cell_states if extras.return_cells else None


register("rnn_ext", "triton", rnn_layer_ext, priority={"cuda": 20}, unavailable_reason=unavailable_reason)
