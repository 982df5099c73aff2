"""Drop-in rnnkernels.LSTMCell / GRUCell / RNNCell: one step of a recurrent
network, as decoders run it one token at a time.

They subclass torch.nn.LSTMCell / GRUCell / RNNCell, so constructor
arguments, parameter names and shapes, initialisation, state_dict, repr,
isinstance, unbatched (1-D) input and error messages are torch's own; forward
runs the step as one call of the layer op with T = 1 (the same cells.h math
as the layers, with the same autograd, double backward and compile support)
on the module's backend:

    cell = rk.LSTMCell(256, 512)          # backend="auto" | "cpu" | "cuda" | "triton" | "reference"
    h, c = cell(x, (h, c))                # x (batch, 256), h, c (batch, 512)

On the cpu backend, in training, the steps of one set of weights gather
their weight gradients: each step's backward leaves its gate gradients, and
one product per weight sums all steps when the backward reaches the weights
(rnnkernels.rnn_ops.GatheredWeightGrads), instead of a dense (gates, input)
gradient and its accumulation per step, which at small batch are all memory
traffic. The gradients are the same sums (float64 within 1e-10 of torch.nn).
"""
import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import _ext, backends, interop


def refuse_torchscript(module: nn.Module):
    """__prepare_scriptable__ of every rnnkernels module: torch.jit.script calls
    it first, so the error comes before anything is compiled or swapped."""
    raise NotImplementedError(
        f"rnnkernels.{type(module).__name__} cannot be compiled by TorchScript: its forward dispatches to "
        "rnnkernels' Python backends. Use torch.compile(model) or torch.export.export(model, args) instead "
        "(both trace the rnnkernels ops); to script a model with torch.nn's own modules, call "
        "rnnkernels.unconvert(model) first"
    )


_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# cell -> (weights' identity, GatheredWeightGrads); outside the module, so that
# copy.deepcopy and pickle never meet its non-leaf aliases.
_GATHERED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_GATHERED_DTYPES = (torch.float32, torch.float64)


class _CellMixin:
    """The step shared by the three cells; torch's checks and messages."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    __prepare_scriptable__ = refuse_torchscript

    def _rk_mode(self) -> str:
        raise NotImplementedError

    def _weights(self) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        # Read once per call, from _parameters where they are registered: an
        # attribute read goes through nn.Module.__getattr__ (~0.5 us each, a
        # tenth of the Python cost of a batch-1 step). A name that is not
        # registered (pruning and weight-drop hooks set plain attributes,
        # parametrize a property) is read as an attribute.
        params = self._parameters
        return tuple(params[name] if name in params else getattr(self, name) for name in _WEIGHT_NAMES)

    def _check_step(self, input: Tensor, states: Tuple[Tensor, ...], weights) -> None:
        """torch's cell checks (aten's check_rnn_cell_forward_*), plus dtype and device."""
        batch, width = input.shape
        dtype, device = input.dtype, input.device
        if width != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {width} expected {self.input_size}")
        for label, h in enumerate(states):
            if batch != h.size(0):
                raise RuntimeError(f"Input batch size {batch} doesn't match hidden{label} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{label} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}")
            if h.dtype != dtype:
                raise RuntimeError(f"hidden{label} dtype ({h.dtype}) does not match input dtype ({dtype})")
            if h.device != device:
                raise RuntimeError(f"hidden{label} is on {h.device} but input is on {device}")
        if weights[0].device != device:
            raise RuntimeError(f"input is on {device} but the module's weights are on {weights[0].device}")

    def _step(self, input: Tensor, h: Tensor, c: Optional[Tensor], weights, backend: Optional[str]):
        """One step on 2-D tensors: (h', c') (c' None unless LSTM)."""
        self._check_step(input, (h,) if c is None else (h, c), weights)
        backend = backend if backend is not None else getattr(self, "backend", "auto")
        if self.hidden_size == 0:  # the kernels take no empty weights; nothing to compute
            backend = "reference"
        plan = interop.autocast_plan(backend, input)
        if plan is not None:  # autocast: see rnnkernels.interop
            return self._autocast_step(plan, input, h, c, weights)
        if input.dtype != weights[0].dtype:
            raise ValueError(f"{type(self).__name__} input dtype ({input.dtype}) does not match weight dtype "
                             f"({weights[0].dtype}). Convert input: input.to({weights[0].dtype}), "
                             f"or convert model: model.to({input.dtype})")
        gathered = self._gathered_weight_grads(input, h, c, weights, backend)
        if gathered is not None:
            from . import rnn_ops  # loaded: the cpu backend runs
            _, h_next, c_next = rnn_ops.gathered_rnn_layer(gathered, self._rk_mode(), input.unsqueeze(0), h, c)
            return h_next, c_next
        _, h_next, c_next = backends.rnn_layer(self._rk_mode(), input.unsqueeze(0), h, c, *weights, None, None, False,
                                               backend=backend)
        return h_next, c_next

    def _gathered_weight_grads(self, input: Tensor, h: Tensor, c: Optional[Tensor], weights, backend: str):
        """The GatheredWeightGrads (rnnkernels.rnn_ops) of this cell's weights,
        whose steps sum their weight gradients in one product per weight when
        the backward reaches them; None where the step takes the weights as
        they are: a CPU step of the cpu backend in float32 or float64 under grad
        mode, outside torch.compile, tracing, functorch and forward AD, with
        the weights plain leaf tensors that all require grad. A new one when a
        weight is replaced or changed in place (an optimizer step)."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():  # first: a trace takes the op as it is
            return None
        if not torch.is_grad_enabled() or input.dtype not in _GATHERED_DTYPES or not input.is_cpu:
            return None
        present = [w for w in weights if w is not None]
        if len(present) not in (2, 4) or not all(
                type(w) in (Tensor, nn.Parameter) and w.requires_grad and w.grad_fn is None for w in present):
            return None
        if _ext.load_error() is not None:
            return None
        from . import rnn_ops
        if not rnn_ops.CAN_GATHER:
            return None
        if interop.needs_reference((input, h, c, *present)):
            return None
        if backends.resolve(backend, input.device, "rnn", input.dtype)[0] != "cpu":
            return None
        identity = tuple((id(w), w._version, w.data_ptr(), w.dtype) for w in present)
        cached = _GATHERED.get(self)
        if cached is not None and cached[0] == identity:
            return cached[1]
        gathered = rnn_ops.GatheredWeightGrads(present)
        _GATHERED[self] = (identity, gathered)
        return gathered

    def _autocast_step(self, plan: interop.AutocastPlan, input: Tensor, h: Tensor, c: Optional[Tensor], weights):
        input, h, c = (interop.autocast_cast(t, plan.compute) for t in (input, h, c))
        weights = tuple(interop.autocast_cast(w, plan.compute) for w in weights)
        with torch.autocast(input.device.type, enabled=False):
            _, h_next, c_next = backends.rnn_layer(self._rk_mode(), input.unsqueeze(0), h, c, *weights, None, None,
                                                   False, backend=plan.backend)
        if plan.output != plan.compute:
            h_next = h_next.to(plan.output)
            c_next = c_next.to(plan.output) if c_next is not None else None
        return h_next, c_next

    @staticmethod
    def _batched(input: Tensor, name: str) -> bool:
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        return input.dim() == 2

    def _zeros(self, input: Tensor) -> Tensor:
        return torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)


class _HiddenCellMixin(_CellMixin):
    """forward() of the cells whose state is one tensor (RNNCell, GRUCell)."""

    def forward(self, input: Tensor, hx: Optional[Tensor] = None, *, backend: Optional[str] = None) -> Tensor:
        """input (batch, input_size) or (input_size,); hx like it with hidden_size (default zeros).
        backend: overrides the module's backend for this call."""
        weights = self._weights()
        if interop.expanded_weights_in(weights):
            return super().forward(input, hx)  # torch.nn's: its error for per-sample gradients
        name = type(self).__name__
        is_batched = self._batched(input, name)
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        if not is_batched:
            input = input.unsqueeze(0)
            hx = hx.unsqueeze(0) if hx is not None else None
        h, _ = self._step(input, hx if hx is not None else self._zeros(input), None, weights, backend)
        return h if is_batched else h.squeeze(0)


class RNNCell(_HiddenCellMixin, nn.RNNCell):
    """torch.nn.RNNCell (tanh or relu) on rnnkernels backends: h' = cell(x, h)."""

    def _rk_mode(self) -> str:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return f"rnn_{self.nonlinearity}"


class GRUCell(_HiddenCellMixin, nn.GRUCell):
    """torch.nn.GRUCell on rnnkernels backends: h' = cell(x, h)."""

    def _rk_mode(self) -> str:
        return "gru"


class LSTMCell(_CellMixin, nn.LSTMCell):
    """torch.nn.LSTMCell on rnnkernels backends: (h', c') = cell(x, (h, c))."""

    def _rk_mode(self) -> str:
        return "lstm"

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None, *,
                backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """input (batch, input_size) or (input_size,); hx = (h, c) like it with hidden_size
        (default zeros). backend: overrides the module's backend for this call."""
        weights = self._weights()
        if interop.expanded_weights_in(weights):
            return super().forward(input, hx)  # torch.nn's: its error for per-sample gradients
        name = type(self).__name__
        is_batched = self._batched(input, name)
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"{name}: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        if not is_batched:
            input = input.unsqueeze(0)
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if hx is not None else None
        if hx is None:
            zeros = self._zeros(input)
            hx = (zeros, zeros)
        h, c = self._step(input, hx[0], hx[1], weights, backend)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
