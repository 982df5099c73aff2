"""Autograd formulas and fake (meta) kernels of the compiled recurrent-layer ops.

`torch.ops.rnnkernels.rnn_layer_forward` / `rnn_layer_backward` are defined in
csrc/rnn_ops.cpp (schemas and the saved-activation layout are documented
there and in csrc/rnn_layer.cpp). Importing this module registers, for them,
the autograd formula (forward saves activations, backward is the second op;
with create_graph=True a differentiable recompute, see interop) and the
fake kernels that let torch.compile trace them without running them.

Eager calls skip the registered (Python) autograd kernel, which a one-step
cell call notices: torch's fill_defaults rebuilds the schema's argument list
per call, ~3x the kernel of a small step. Calls that need gradients go through
`_LayerFunction`, an autograd.Function with the very same setup_context and
backward; the others dispatch below autograd. Traced calls (torch.compile,
torch.jit.trace, export) use the op and its registration.
Import it only when the extension is loaded (rnnkernels._ext.load_error() is None).
"""
import contextlib
import weakref
from typing import Optional

import torch
from torch import Tensor

from . import _ext, interop, reference
from .reference import GATES

if _ext.load_error() is not None:  # pragma: no cover - guarded by the callers
    raise ImportError(_ext.load_error())

_SAVED_GATES = {"lstm": 4, "gru": 4, "rnn_tanh": 0, "rnn_relu": 0}


def _sizes(mode: str, w_ih: Tensor, w_hr: Optional[Tensor]):
    hidden = w_ih.shape[0] // GATES[mode]
    return hidden, (w_hr.shape[0] if w_hr is not None else hidden)


@torch.library.register_fake("rnnkernels::rnn_layer_forward")
def _forward_fake(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training):
    T, B = x.shape[0], x.shape[1]
    H, P = _sizes(mode, w_ih, w_hr)
    lstm = mode == "lstm"

    def empty():  # a new one each time: outputs must not alias each other
        return x.new_empty((0,))

    out, h_n = x.new_empty((T, B, P)), x.new_empty((B, P))
    c_n = x.new_empty((B, H)) if lstm else empty()
    if not training:
        return out, h_n, c_n, empty(), empty(), empty(), empty()
    states = x.new_empty((T + 1, B, P))
    cells = x.new_empty((T + 1, B, H)) if lstm else empty()
    gates = x.new_empty((T, B, _SAVED_GATES[mode] * H)) if _SAVED_GATES[mode] else empty()
    hidden_raw = x.new_empty((T, B, H)) if w_hr is not None else empty()
    return out, h_n, c_n, states, cells, gates, hidden_raw


@torch.library.register_fake("rnnkernels::rnn_bidirectional_forward")
def _bidirectional_forward_fake(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, h0_r, c0_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
                                lengths, training):
    outputs = []
    for reverse in (False, True):  # rnn_layer_forward's outputs but hidden_raw (no projection here)
        outputs += _forward_fake(mode, x, None, None, w_ih, w_hh, None, None, None, lengths, reverse, training)[:6]
    return outputs


@torch.library.register_fake("rnnkernels::rnn_bidirectional_backward")
def _bidirectional_backward_fake(mode, grad_output, grad_h_n, grad_c_n, grad_output_r, grad_h_n_r, grad_c_n_r, x, w_ih,
                                 w_hh, w_ih_r, w_hh_r, lengths, states, cells, gates, states_r, cells_r, gates_r,
                                 has_bias, input_grad, weight_grad):
    outputs = []
    for reverse in (False, True):  # rnn_layer_backward's gradients but grad_w_hr
        outputs += _backward_fake(mode, None, None, None, x, w_ih, w_hh, None, lengths, reverse, states, cells, gates,
                                  x.new_empty((0,)), has_bias, input_grad, weight_grad)[:7]
    return outputs


@torch.library.register_fake("rnnkernels::rnn_layer_gate_grads")
def _gate_grads_fake(mode, grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, reverse, states, cells, gates, input_grad):
    grad_x, grad_h0, grad_c0 = _backward_fake(mode, grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, None, None, reverse,
                                              states, cells, gates, x.new_empty((0,)), False, input_grad, False)[:3]
    T, B = x.shape[0], x.shape[1]
    d_gh = x.new_empty((T, B, w_ih.shape[0])) if mode == "gru" else x.new_empty((0,))
    return grad_x, grad_h0, grad_c0, x.new_empty((T, B, w_ih.shape[0])), d_gh


@torch.library.register_fake("rnnkernels::rnn_layer_backward")
def _backward_fake(mode, grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, lengths, reverse, states, cells,
                   gates, hidden_raw, has_bias, input_grad, weight_grad):
    T, B, I = x.shape
    H, P = _sizes(mode, w_ih, w_hr)
    GH = w_ih.shape[0]

    def empty():
        return x.new_empty((0,))

    grad_x = x.new_empty((T, B, I)) if input_grad else empty()
    grad_h0 = x.new_empty((B, P))
    grad_c0 = x.new_empty((B, H)) if mode == "lstm" else empty()
    grad_w_ih = x.new_empty((GH, I)) if weight_grad else empty()
    grad_w_hh = x.new_empty((GH, P)) if weight_grad else empty()
    grad_b_ih = x.new_empty((GH,)) if weight_grad and has_bias else empty()
    grad_b_hh = x.new_empty((GH,)) if weight_grad and has_bias else empty()
    grad_w_hr = x.new_empty((P, H)) if weight_grad and w_hr is not None else empty()
    return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr


def _setup_context(ctx, inputs, output):
    mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training = inputs
    _, _, c_n, states, cells, gates, hidden_raw = output
    ctx.mode, ctx.reverse, ctx.training = mode, reverse, training
    ctx.given = (h0 is not None, c0 is not None, b_ih is not None, b_hh is not None)
    # save_for_backward takes None, but torch.compile's runtime wants only tensors.
    # h0, c0 and the biases only serve a double backward's recompute.
    saved = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, states, cells, gates, hidden_raw)
    ctx.saved_present = tuple(t is not None for t in saved)
    ctx.save_for_backward(*(t for t in saved if t is not None))
    ctx.mark_non_differentiable(states, cells, gates, hidden_raw)
    if mode != "lstm":
        ctx.mark_non_differentiable(c_n)
    ctx.set_materialize_grads(False)  # unused outputs send None, not zero tensors


def _saved(ctx):
    tensors = iter(ctx.saved_tensors)
    return [next(tensors) if present else None for present in ctx.saved_present]


def _backward(ctx, grad_output, grad_h_n, grad_c_n, *_saved_grads):
    return _layer_backward(ctx, ctx.needs_input_grad, grad_output, grad_h_n, grad_c_n)


def _layer_backward(ctx, needs, grad_output, grad_h_n, grad_c_n):
    """needs: whether each input needs a gradient, as ctx.needs_input_grad of
    the op: mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, states, cells, gates, hidden_raw = _saved(ctx)
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable too
        grads = interop.differentiable_grads(
            ctx.mode, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths), needs[1:10],
            (grad_output, grad_h_n, grad_c_n if ctx.mode == "lstm" else None), ctx.reverse)
        return (None, *grads[:8], None, None, None)
    if not ctx.training:
        raise RuntimeError(
            "rnnkernels.rnn_layer_forward was called with training=False, so it saved nothing for "
            "backward; call it with training=True when gradients are needed"
        )
    has_h0, has_c0, has_b_ih, has_b_hh = ctx.given
    weight_grad = any(needs[4:9])
    grads = torch.ops.rnnkernels.rnn_layer_backward(
        ctx.mode, grad_output, grad_h_n, grad_c_n if ctx.mode == "lstm" else None, x, w_ih, w_hh, w_hr, lengths,
        ctx.reverse, states, cells, gates, hidden_raw, has_b_ih or has_b_hh, needs[1], weight_grad)
    grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr = grads

    def keep(grad, needed, given=True):
        return grad if needed and given else None

    return (
        None,
        keep(grad_x, needs[1]),
        keep(grad_h0, needs[2], has_h0),
        keep(grad_c0, needs[3], has_c0 and ctx.mode == "lstm"),
        keep(grad_w_ih, needs[4]),
        keep(grad_w_hh, needs[5]),
        keep(grad_b_ih, needs[6], has_b_ih),
        keep(grad_b_hh, needs[7], has_b_hh),
        keep(grad_w_hr, needs[8], w_hr is not None),
        None,
        None,
        None,
    )


torch.library.register_autograd("rnnkernels::rnn_layer_forward", _backward, setup_context=_setup_context)


_OP = torch.ops.rnnkernels.rnn_layer_forward.default
# Calls below the Autograd dispatch key go straight to the device kernel.
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", contextlib.nullcontext)


class _LayerFunction(torch.autograd.Function):
    """The op with its registered autograd formula (the same _setup_context and
    _backward), minus torch's per-call Python overhead. The ctx-style forward
    matters too: a separate setup_context makes apply() run inspect.signature
    per call (functorch, which needs that style, runs the reference instead)."""

    @staticmethod
    def forward(ctx, *inputs):
        with _below_autograd():
            output = _OP(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_backward)


def rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    """The backend contract (rnnkernels.reference.rnn_layer) on the compiled op:
    saves activations only when some input requires grad."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    interop.check_no_expanded_weights(tensors)
    if interop.needs_reference(tensors):
        return reference.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    tracing = torch.jit.is_tracing()
    # A trace bakes `training` in as a constant and its check re-runs under
    # no_grad: traced graphs always save activations, so that both runs agree.
    training = tracing or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
    args = (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training)
    if tracing or torch.compiler.is_compiling():
        out, h_n, c_n, *_ = torch.ops.rnnkernels.rnn_layer_forward(*args)
    elif training:
        out, h_n, c_n, *_ = _LayerFunction.apply(*args)
    else:
        with _below_autograd():
            out, h_n, c_n, *_ = _OP(*args)
    return out, h_n, (c_n if mode == "lstm" else None)


# Where one thread per direction pays, against the directions one after the
# other on two threads each: 2-layer bidirectional layers on the 2-core Xeon
# (family 6 model 167) at the suite's shapes (T, B, I, H) of
# benchmarks/suite.py. Forward: LSTM 1.05-1.69x, GRU 1.02-1.75x, RNN-tanh
# 1.02-1.67x up to steps of 2^24 multiply-adds (B G H H: (16, 256, 128, 128)
# LSTM); above, MKL's own split of a step's GEMM scales as well (GRU
# 0.97-0.98x at (35, 20, 650, 650) and (50, 64, 256, 512)). Forward+backward:
# 1.06-1.67x up to 2^23, but GRU 0.90x at (16, 256, 128, 128) (2^23.6), whose
# weight gradients over 4096 rows split well on their own. Below 2^22
# multiply-adds in all (T B G H (I + H)) the region's start does not pay.
_MIN_MACS_FOR_TWO_THREADS = 1 << 22
_MAX_STEP_MACS_FOR_TWO_THREADS = 1 << 24
_MAX_STEP_MACS_FOR_TWO_THREADS_TRAINING = 1 << 23
_PAIR_FORWARD = torch.ops.rnnkernels.rnn_bidirectional_forward.default
_PAIR_BACKWARD = torch.ops.rnnkernels.rnn_bidirectional_backward.default


class _BidirectionalFunction(torch.autograd.Function):
    """Both directions' forward in one op (training: activations saved), and
    their backward in one op; a create_graph backward differentiates each
    direction's recompute (interop.differentiable_grads), as _backward does.
    Inputs: mode, lengths, x, then (h0, c0, w_ih, w_hh, b_ih, b_hh) of each
    direction; outputs (out, h_n, c_n) of each."""

    @staticmethod
    def forward(ctx, mode, lengths, x, *weights):
        with _below_autograd():
            outputs = _PAIR_FORWARD(mode, x, *weights, lengths, True)
        ctx.mode = mode
        ctx.weights_present = tuple(t is not None for t in weights)
        saved = (x, lengths, *weights)
        ctx.saved_present = tuple(t is not None for t in saved)
        ctx.save_for_backward(*(t for t in saved if t is not None), *outputs[3:6], *outputs[9:12])
        ctx.set_materialize_grads(False)
        results = (*outputs[0:3], *outputs[6:9])
        if mode != "lstm":
            ctx.mark_non_differentiable(results[2], results[5])
        return results

    @staticmethod
    def backward(ctx, *grads):
        tensors = list(ctx.saved_tensors)
        activations = tensors[-6:]
        given = iter(tensors[:-6])
        x, lengths, *weights = [next(given) if present else None for present in ctx.saved_present]
        lstm = ctx.mode == "lstm"
        grads = [g if (i % 3 != 2 or lstm) else None for i, g in enumerate(grads)]  # no c_n gradient but lstm's
        needs = ctx.needs_input_grad  # mode, lengths, x, then 6 per direction
        if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable too
            grad_x, per_direction = None, []
            for d in (0, 1):
                h0, c0, w_ih, w_hh, b_ih, b_hh = weights[6 * d:6 * d + 6]
                wanted = (needs[2], *needs[3 + 6 * d:9 + 6 * d], False, False)
                g = interop.differentiable_grads(ctx.mode, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths), wanted,
                                                 tuple(grads[3 * d:3 * d + 3]), d == 1)
                grad_x = g[0] if grad_x is None else (grad_x if g[0] is None else grad_x + g[0])
                per_direction += list(g[1:7])
            return (None, None, grad_x, *per_direction)
        has_bias = ctx.weights_present[4] or ctx.weights_present[5]
        weight_grad = any(needs[5:9]) or any(needs[11:15])
        result = _PAIR_BACKWARD(ctx.mode, *grads, x, weights[2], weights[3], weights[8], weights[9], lengths,
                                *activations, has_bias, needs[2], weight_grad)
        grad_x = result[0] + result[7] if needs[2] else None
        per_direction = []
        for d in (0, 1):
            for k in range(6):  # h0, c0, w_ih, w_hh, b_ih, b_hh
                present = ctx.weights_present[6 * d + k] and (k != 1 or lstm)
                per_direction.append(result[7 * d + 1 + k] if needs[3 + 6 * d + k] and present else None)
        return (None, None, grad_x, *per_direction)


def bidirectional(mode, x, forward, reverse, lengths):
    """Both directions of a bidirectional CPU layer at once, each on a thread
    of its own (ops rnn_bidirectional_forward / _backward), as [(out, h_n,
    c_n), (out, h_n, c_n)]; or None where that does not apply: anything but an
    eager CPU call with two or more threads, with a projection, under
    autocast, functorch or forward AD, or a size where it does not pay.
    forward, reverse: (h0, c0, w_ih, w_hh, b_ih, b_hh)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():  # first: traced code must not read the thread count
        return None
    tensors = (x, *forward, *reverse)
    if not x.is_cpu or torch.get_num_threads() < 2:
        return None
    if interop.any_autocast() or interop.needs_reference(tensors) or interop.expanded_weights_in(tensors):
        return None
    T, B = x.shape[0], x.shape[1]
    w_ih, w_hh = forward[2], forward[3]
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    step_macs = B * w_hh.shape[0] * w_hh.shape[1]
    if T * B * w_ih.shape[0] * (w_ih.shape[1] + w_hh.shape[1]) < _MIN_MACS_FOR_TWO_THREADS or step_macs > (
            _MAX_STEP_MACS_FOR_TWO_THREADS_TRAINING if training else _MAX_STEP_MACS_FOR_TWO_THREADS):
        return None
    lstm = mode == "lstm"
    if training:
        out, h_n, c_n, out_r, h_n_r, c_n_r = _BidirectionalFunction.apply(mode, lengths, x, *forward, *reverse)
    else:
        with _below_autograd():
            out, h_n, c_n, _, _, _, out_r, h_n_r, c_n_r, _, _, _ = _PAIR_FORWARD(mode, x, *forward, *reverse, lengths,
                                                                                 False)
    return [(out, h_n, c_n if lstm else None), (out_r, h_n_r, c_n_r if lstm else None)]


# Gathered weight gradients: a decoder runs its cell one step per call, so
# autograd meets every step's weight gradients one by one. Each is a dense
# (G*H, I) product of a few rows (one at batch 1) plus its addition to the
# running sum: all memory traffic (8 MB written and 16 MB moved per step for
# an LSTMCell of 512 at batch 1), in torch.nn as it was here. Instead the
# steps leave their gate gradients with a GatheredWeightGrads, and when the
# backward reaches the weights one product per weight sums all the steps.
#
# The steps take the weights through _GatheredWeights, an identity whose
# node is upstream of every step that took them: the engine runs it after
# all of them, in each backward that needs the weights' gradients. A step
# whose backward runs when that node will not (torch.autograd.grad for other
# inputs), or whose backward must be differentiable (create_graph=True),
# returns its weight gradients as the layer op does; the node adds those to
# what it gathered. Entries carry the graph task they came from, so that a
# backward that failed halfway, or a re-entrant one (checkpoint), never lends
# its entries to another.
CAN_GATHER = hasattr(torch._C, "_current_graph_task_id") and hasattr(torch._C, "_will_engine_execute_node")


class GatheredWeightGrads:
    """The gate gradients of the steps that took one set of weights, until
    the backward reaches those weights. weights: w_ih, w_hh, then b_ih, b_hh
    if the cell has biases; aliases: what the steps take instead."""

    def __init__(self, weights):
        self.has_bias = len(weights) == 4
        self._entries = []  # (graph task, d_gi (rows, G*H), d_gh or None where it is d_gi, x (rows, I), h (rows, P))
        self.aliases = _GatheredWeights.apply(self, *weights)
        self._node = weakref.ref(self.aliases[0].grad_fn)

    def collecting(self) -> bool:
        """Whether the backward now running will reach the weights (call it from a step's backward)."""
        node = self._node()
        return node is not None and torch._C._will_engine_execute_node(node)

    def add(self, d_gi: Tensor, d_gh: Optional[Tensor], x: Tensor, h: Tensor) -> None:
        self._entries.append((torch._C._current_graph_task_id(), d_gi, d_gh, x, h))

    def take(self):
        """The weight gradients summed over this backward's entries (which it
        forgets), in the order of the weights; None if it has none."""
        task = torch._C._current_graph_task_id()
        mine = [e for e in self._entries if e[0] == task]
        if not mine:
            return None
        self._entries = [e for e in self._entries if e[0] != task]
        d_gi = torch.cat([e[1] for e in mine])
        d_gh = d_gi if mine[0][2] is None else torch.cat([e[2] for e in mine])
        grads = [d_gi.t().mm(torch.cat([e[3] for e in mine])), d_gh.t().mm(torch.cat([e[4] for e in mine]))]
        if self.has_bias:
            grads += [d_gi.sum(0), d_gh.sum(0)]
        return grads


class _GatheredWeights(torch.autograd.Function):
    """Identity on the weights; backward adds what the steps gathered."""

    @staticmethod
    def forward(ctx, gathered, *weights):
        ctx.gathered = gathered
        ctx.set_materialize_grads(False)
        return tuple(w.view_as(w) for w in weights)

    @staticmethod
    def backward(ctx, *grads):
        summed = ctx.gathered.take()
        if summed is None:
            return (None, *grads)
        return (None, *(s if g is None else g + s for g, s in zip(grads, summed)))


class _GatheredStep(torch.autograd.Function):
    """_LayerFunction for calls whose weights come from a GatheredWeightGrads
    (inputs: it, then the op's); backward leaves the gate gradients with it."""

    @staticmethod
    def forward(ctx, gathered, *inputs):
        with _below_autograd():
            output = _OP(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.gathered = gathered
        return output

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, *_saved_grads):
        needs = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled() or not ctx.gathered.collecting():
            return (None, *_layer_backward(ctx, needs, grad_output, grad_h_n, grad_c_n))
        x, h0, c0, w_ih, w_hh, _, _, _, _, states, cells, gates, _ = _saved(ctx)
        lstm = ctx.mode == "lstm"
        grad_x, grad_h0, grad_c0, d_gi, d_gh = torch.ops.rnnkernels.rnn_layer_gate_grads(
            ctx.mode, grad_output, grad_h_n, grad_c_n if lstm else None, x, w_ih, w_hh, ctx.reverse, states, cells,
            gates, needs[1])
        T, B = x.shape[0], x.shape[1]
        entering = states.narrow(0, 1 if ctx.reverse else 0, T)  # the state each step starts from
        ctx.gathered.add(d_gi.view(T * B, -1), d_gh.view(T * B, -1) if d_gh.numel() else None, x.view(T * B, -1),
                         entering.reshape(T * B, -1))
        return (None, None, grad_x if needs[1] else None, grad_h0 if needs[2] and h0 is not None else None,
                grad_c0 if needs[3] and lstm and c0 is not None else None, *(None,) * 9)


def gathered_rnn_layer(gathered: GatheredWeightGrads, mode, x, h0, c0):
    """rnn_layer on the CPU with gathered's aliases as the weights (no
    projection, no lengths), for an eager call under grad mode."""
    w_ih, w_hh, *biases = gathered.aliases
    b_ih, b_hh = biases if biases else (None, None)
    out, h_n, c_n, *_ = _GatheredStep.apply(gathered, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, None, False, True)
    return out, h_n, (c_n if mode == "lstm" else None)
