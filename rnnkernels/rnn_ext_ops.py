"""Autograd formula and fake kernels of the extended layer op.

`torch.ops.rnnkernels.rnn_layer_forward_ext` / `rnn_layer_backward_ext`
(csrc/rnn_ops.cpp) run the plain layer's loop with what a layer adds to
torch.nn's cell: LayerNorm of both projections and of c, zoneout, every step's
cell state (rnnkernels.reference.LayerExtras). The backward op is the fast
path; with create_graph (double backward) the gradients are taken through the
reference's math instead, so that they are differentiable again.
Import only when the extension is loaded.
"""
import contextlib
from typing import Optional

import torch
from torch import Tensor

from . import _ext, interop
from .reference import GATES, LayerExtras, rnn_layer_extended as reference_layer

if _ext.load_error() is not None:  # pragma: no cover - guarded by the callers
    raise ImportError(_ext.load_error())

_FORWARD = "rnnkernels::rnn_layer_forward_ext"
_BACKWARD = "rnnkernels::rnn_layer_backward_ext"
_SAVED_GATES = {"lstm": 4, "gru": 4, "rnn_tanh": 0, "rnn_relu": 0}


def _saved_shapes(mode, T, B, H, training, ln_ih, ln_cell_w, keep_h, keep_c):
    """Shapes of (states, cells, gates, x_hat, row_stats, fresh) the forward saves."""
    G, lstm = GATES[mode], mode == "lstm"
    if not training:
        return [(0,)] * 6
    states = (T + 1, B, H)
    cells = (T + 1, B, H) if lstm else (0,)
    gates = (T, B, _SAVED_GATES[mode] * H) if _SAVED_GATES[mode] else (0,)
    x_hat = (2, T, B, G * H) if ln_ih is not None else (0,)
    row_stats = (T, B, 4) if ln_ih is not None or ln_cell_w is not None else (0,)
    fresh = (T, B, H) if (lstm and keep_c is not None) or (mode.startswith("rnn") and keep_h is not None) else (0,)
    return [states, cells, gates, x_hat, row_stats, fresh]


@torch.library.register_fake(_FORWARD)
def _forward_fake(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training, ln_ih, ln_hh, ln_cell_w,
                  ln_cell_b, keep_h, keep_c, return_cells):
    T, B = x.shape[0], x.shape[1]
    H = w_ih.shape[0] // GATES[mode]
    lstm = mode == "lstm"
    out, h_n = x.new_empty((T, B, H)), x.new_empty((B, H))
    c_n = x.new_empty((B, H)) if lstm else x.new_empty((0,))
    cell_states = x.new_empty((T, B, H)) if return_cells else x.new_empty((0,))
    saved = [x.new_empty(shape) for shape in _saved_shapes(mode, T, B, H, training, ln_ih, ln_cell_w, keep_h, keep_c)]
    return (out, h_n, c_n, cell_states, *saved)


@torch.library.register_fake(_BACKWARD)
def _backward_fake(mode, grad_output, grad_h_n, grad_c_n, grad_cell_states, x, w_ih, w_hh, lengths, reverse, states,
                   cells, gates, x_hat, row_stats, fresh, has_bias, input_grad, weight_grad, ln_ih, ln_hh, ln_cell_w,
                   ln_cell_b, keep_h, keep_c, return_cells):
    T, B, I = x.shape
    GH = w_ih.shape[0]
    H = GH // GATES[mode]

    def maybe(shape, wanted):
        return x.new_empty(shape if wanted else (0,))

    return (maybe((T, B, I), input_grad), x.new_empty((B, H)), maybe((B, H), mode == "lstm"),
            maybe((GH, I), weight_grad), maybe((GH, H), weight_grad), maybe((GH,), weight_grad and has_bias),
            maybe((GH,), weight_grad and has_bias), maybe((GH,), weight_grad and ln_ih is not None),
            maybe((GH,), weight_grad and ln_hh is not None), maybe((H,), weight_grad and ln_cell_w is not None),
            maybe((H,), weight_grad and ln_cell_b is not None))


# Inputs of the forward op, in schema order.
_INPUTS = ("mode", "x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse", "training", "ln_ih",
           "ln_hh", "ln_cell_w", "ln_cell_b", "keep_h", "keep_c", "return_cells")
_DIFFERENTIABLE = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_cell_w", "ln_cell_b")


def _setup_context(ctx, inputs, output):
    args = dict(zip(_INPUTS, inputs))
    ctx.mode, ctx.reverse, ctx.training, ctx.return_cells = args["mode"], args["reverse"], args["training"], \
        args["return_cells"]
    tensors = [args[name] for name in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "ln_ih", "ln_hh",
                                       "ln_cell_w", "ln_cell_b", "keep_h", "keep_c")]
    saved = tensors + list(output[4:])
    ctx.saved_present = tuple(t is not None for t in saved)
    ctx.save_for_backward(*(t for t in saved if t is not None))
    ctx.mark_non_differentiable(*output[4:])
    if args["mode"] != "lstm":
        ctx.mark_non_differentiable(output[2])
    if not args["return_cells"]:
        ctx.mark_non_differentiable(output[3])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_output, grad_h_n, grad_c_n, grad_cell_states, *_saved_grads):
    if not ctx.training:
        raise RuntimeError(
            "rnnkernels.rnn_layer_forward_ext was called with training=False, so it saved nothing for backward; "
            "call it with training=True when gradients are needed")
    tensors = iter(ctx.saved_tensors)
    saved = [next(tensors) if present else None for present in ctx.saved_present]
    (x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, ln_ih, ln_hh, ln_cell_w, ln_cell_b, keep_h, keep_c, states, cells,
     gates, x_hat, row_stats, fresh) = saved
    needs = dict(zip(_INPUTS, ctx.needs_input_grad))
    grads_out = (grad_output, grad_h_n, grad_c_n if ctx.mode == "lstm" else None,
                 grad_cell_states if ctx.return_cells else None)
    inputs = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, ln_ih=ln_ih, ln_hh=ln_hh,
                  ln_cell_w=ln_cell_w, ln_cell_b=ln_cell_b)
    if torch.is_grad_enabled():  # create_graph: differentiable gradients from the reference's math
        grads = _reference_gradients(ctx, inputs, needs, grads_out, lengths, keep_h, keep_c)
    else:
        weight_grad = any(needs[name] for name in ("w_ih", "w_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_cell_w",
                                                   "ln_cell_b"))
        result = torch.ops.rnnkernels.rnn_layer_backward_ext(
            ctx.mode, *grads_out, x, w_ih, w_hh, lengths, ctx.reverse, states, cells, gates, x_hat, row_stats,
            fresh, b_ih is not None or b_hh is not None, needs["x"], weight_grad, ln_ih, ln_hh, ln_cell_w, ln_cell_b,
            keep_h, keep_c, ctx.return_cells)
        grads = dict(zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_cell_w",
                          "ln_cell_b"), result))
    return tuple(grads.get(name) if name in _DIFFERENTIABLE and needs[name] and inputs.get(name) is not None
                 else None for name in _INPUTS)


def _reference_gradients(ctx, inputs, needs, grads_out, lengths, keep_h, keep_c):
    """The gradients through the reference's math, taken on views of the saved
    inputs (not detached copies), so that they are functions of them and of
    the incoming gradients: what double backward differentiates."""
    wanted = [name for name in _DIFFERENTIABLE if needs[name] and inputs[name] is not None]
    inputs = dict(zip(inputs, interop.local_views(list(inputs.values()))))  # see interop.local_views
    x, w_hh = inputs["x"], inputs["w_hh"]
    h0 = inputs["h0"] if inputs["h0"] is not None else x.new_zeros(x.shape[1], w_hh.shape[1])
    c0 = inputs["c0"] if inputs["c0"] is not None or ctx.mode != "lstm" else x.new_zeros(x.shape[1], w_hh.shape[1])
    extras = LayerExtras(inputs["ln_ih"], inputs["ln_hh"], inputs["ln_cell_w"], inputs["ln_cell_b"], keep_h, keep_c,
                         ctx.return_cells)
    outputs = reference_layer(ctx.mode, x, h0, c0, inputs["w_ih"], w_hh, inputs["b_ih"], inputs["b_hh"], lengths,
                              ctx.reverse, extras)
    pairs = [(o, g) for o, g in zip(outputs, grads_out) if o is not None and g is not None]
    if not pairs or not wanted:
        return {}
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[name] for name in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    return {name: (g if g is not None else torch.zeros_like(inputs[name])) for name, g in zip(wanted, grads)}


torch.library.register_autograd(_FORWARD, _backward, setup_context=_setup_context)


_OP = torch.ops.rnnkernels.rnn_layer_forward_ext.default
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", contextlib.nullcontext)


class _LayerFunction(torch.autograd.Function):
    """The op with its registered formula minus torch's per-call Python
    overhead (see rnnkernels.rnn_ops._LayerFunction)."""

    @staticmethod
    def forward(ctx, *inputs):
        with _below_autograd():
            output = _OP(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_backward)


def rnn_layer_extended(mode: str, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                       b_ih: Optional[Tensor], b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                       extras: LayerExtras):
    """The backend contract of rnnkernels.reference.rnn_layer_extended on the
    compiled op: (out, h_n, c_n or None, cell_states or None). Forward-mode AD
    and functorch transforms run the reference (rnnkernels.interop)."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, extras.ln_ih_weight, extras.ln_hh_weight, extras.ln_cell_weight,
               extras.ln_cell_bias)
    interop.check_no_expanded_weights(tensors)
    if interop.needs_reference(tensors):
        return reference_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras)
    tracing = torch.jit.is_tracing()
    # A trace bakes `training` in and re-runs under no_grad for its check: always save.
    training = tracing or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
    args = (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training, extras.ln_ih_weight,
            extras.ln_hh_weight, extras.ln_cell_weight, extras.ln_cell_bias, extras.keep_h, extras.keep_c,
            extras.return_cells)
    if tracing or torch.compiler.is_compiling():
        out, h_n, c_n, cell_states, *_ = torch.ops.rnnkernels.rnn_layer_forward_ext(*args)
    elif training:
        out, h_n, c_n, cell_states, *_ = _LayerFunction.apply(*args)
    else:
        with _below_autograd():
            out, h_n, c_n, cell_states, *_ = _OP(*args)
    return out, h_n, (c_n if mode == "lstm" else None), (cell_states if extras.return_cells else None)
