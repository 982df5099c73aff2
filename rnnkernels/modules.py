"""Drop-in rnnkernels.LSTM / GRU / RNN.

They subclass torch.nn.LSTM / GRU / RNN, so constructor arguments, parameter
names and shapes, initialisation, state_dict, repr and isinstance are torch's
own; only forward changes: it runs on an rnnkernels backend and also takes
padded input with per-sequence `lengths`.

What else torch.nn's modules do, these do too (tests/test_dropin.py,
tests/test_upstream_rnn.py): double backward, forward-mode AD and torch.func
(rnnkernels.interop), autocast (float32 runs in autocast's dtype),
per-sample gradients (ExpandedWeights go to torch.nn's own forward),
torch.ao.quantization.quantize_dynamic (quantized like torch.nn's modules,
see the end of this file), torch.jit.trace and torch.compile / torch.export.
torch.jit.script is a clear error that names torch.compile and torch.export.
"""
import contextlib
import functools
import importlib.abc
import importlib.machinery
import sys
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import cells, functional, interop


def _map_state(state, fn):
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


class _RecurrentMixin:
    """forward() shared by the three modules; torch.nn's checks and messages."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    # torch.jit.script calls this first: a clear error before anything is compiled or swapped.
    __prepare_scriptable__ = cells.refuse_torchscript

    @property
    def _rk_mode(self) -> str:
        return self.mode.lower()  # "lstm", "gru", "rnn_tanh", "rnn_relu"

    def _zero_state(self, batch: int, like: Tensor):
        layers = self.num_layers * (2 if self.bidirectional else 1)
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h = torch.zeros(layers, batch, out_size, dtype=like.dtype, device=like.device)
        if self.mode != "LSTM":
            return h
        return h, torch.zeros(layers, batch, self.hidden_size, dtype=like.dtype, device=like.device)

    def _check_state(self, data: Tensor, hx, batch_sizes: Optional[Tensor]):
        self.check_forward_args(data, hx, batch_sizes)
        for i, h in enumerate(hx if isinstance(hx, tuple) else (hx,)):
            name = f"hx[{i}]" if isinstance(hx, tuple) else "hx"
            if h.dtype != data.dtype:
                raise RuntimeError(f"{name} dtype ({h.dtype}) does not match input dtype ({data.dtype})")
            if h.device != data.device:
                raise RuntimeError(f"{name} is on {h.device} but input is on {data.device}")
        if self._flat_weights[0].device != data.device:
            raise RuntimeError(
                f"input is on {data.device} but the module's weights are on {self._flat_weights[0].device}"
            )

    def _run(self, input: Tensor, hx, lengths, backend, batch_first: bool):
        backend = backend if backend is not None else getattr(self, "backend", "auto")
        weights = self._flat_weights
        plan = interop.autocast_plan(backend, input)
        if plan is not None:  # autocast: see rnnkernels.interop
            input = interop.autocast_cast(input, plan.compute)
            hx = _map_state(hx, lambda h: interop.autocast_cast(h, plan.compute))
            weights = [interop.autocast_cast(w, plan.compute) for w in weights]
            backend = plan.backend
        with _autocast_off(input) if plan is not None else contextlib.nullcontext():
            output, state = functional.rnn_forward(
                self._rk_mode,
                input,
                hx,
                weights,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
                has_bias=self.bias,
                proj_size=self.proj_size,
                dropout=self.dropout,
                training=self.training,
                batch_first=batch_first,
                lengths=lengths,
                backend=backend,
            )
        if plan is not None and plan.output != plan.compute:
            output = output.to(plan.output)
            state = _map_state(state, lambda s: s.to(plan.output))
        return output, state

    def _forward_per_sample(self, input, hx, lengths):
        """ExpandedWeights (per-sample gradients): torch.nn's forward, whose
        decomposition computes them; `lengths` run as a PackedSequence."""
        torch_forward = super().forward  # torch.nn.LSTM / GRU / RNN's
        if lengths is None:
            return torch_forward(input, hx)
        if isinstance(input, PackedSequence):
            raise ValueError("lengths must not be given with a PackedSequence: it carries its own")
        lengths = torch.as_tensor(lengths).cpu()
        if lengths.numel() > 1 and bool((lengths[1:] > lengths[:-1]).any()):
            # torch's decomposition would return them in the sorted order, not the batch's
            raise ValueError("per-sample gradients (ExpandedWeights) with lengths need the batch sorted by "
                             f"decreasing length, got lengths {lengths.tolist()}")
        steps = input.shape[1 if self.batch_first else 0]
        packed = pack_padded_sequence(input, lengths, batch_first=self.batch_first)
        output, state = torch_forward(packed, hx)
        return pad_packed_sequence(output, batch_first=self.batch_first, total_length=steps)[0], state

    def forward(self, input, hx=None, lengths: Optional[Tensor] = None, *, backend: Optional[str] = None):
        """Like torch.nn's forward; additionally
        lengths: int64 CPU tensor (batch,), for padded input: output is zero
            past each sequence's end and the final state is the one at its end;
        backend: overrides the module's backend for this call."""
        self._update_flat_weights()
        if interop.expanded_weights_in(self._flat_weights):
            return self._forward_per_sample(input, hx, lengths)
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths must not be given with a PackedSequence: it carries its own")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                hx = self._zero_state(int(batch_sizes[0]), data)
            else:
                self._check_state(data, _map_state(hx, lambda h: self.permute_hidden_one(h, sorted_indices)), batch_sizes)
            padded, seq_lengths = pad_packed_sequence(input)  # (T, B, I) in the caller's order
            output, state = self._run(padded, hx, seq_lengths, backend, batch_first=False)
            order = sorted_indices if sorted_indices is not None else torch.arange(len(seq_lengths))
            packed = pack_padded_sequence(output[:, order.to(output.device)], seq_lengths[order.cpu()])
            return PackedSequence(packed.data, batch_sizes, sorted_indices, unsorted_indices), state

        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        states = hx if isinstance(hx, tuple) else (hx,)
        if hx is not None:
            want = 3 if is_batched else 2
            if any(h.dim() != want for h in states):
                dims = ", ".join(f"{h.dim()}-D" for h in states)
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got ({dims}) tensors")
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = _map_state(hx, lambda h: h.unsqueeze(1))
            if lengths is not None:
                lengths = torch.as_tensor(lengths).reshape(1)
        batch = input.size(batch_dim)
        if hx is None:
            hx = self._zero_state(batch, input)
        self._check_state(input, hx, None)
        output, state = self._run(input, hx, lengths, backend, batch_first=self.batch_first)
        if not is_batched:
            output = output.squeeze(batch_dim)
            state = _map_state(state, lambda s: s.squeeze(1))
        return output, state

    @staticmethod
    def permute_hidden_one(h: Tensor, permutation: Optional[Tensor]) -> Tensor:
        return h if permutation is None else h.index_select(1, permutation)


def _autocast_off(x: Tensor):
    return torch.autocast(x.device.type, enabled=False)


class LSTM(_RecurrentMixin, nn.LSTM):
    """torch.nn.LSTM on rnnkernels backends: `rnnkernels.LSTM(..., backend="auto")`."""


class GRU(_RecurrentMixin, nn.GRU):
    """torch.nn.GRU on rnnkernels backends: `rnnkernels.GRU(..., backend="auto")`."""


class RNN(_RecurrentMixin, nn.RNN):
    """torch.nn.RNN (tanh or relu) on rnnkernels backends."""


# torch.compile: Dynamo refuses every torch.nn.RNN/GRU/LSTM instance unless
# torch._dynamo.config.allow_rnn is set (it cannot trace torch.nn's _VF
# kernels). These subclasses run traceable custom ops, so the check is lifted
# for them alone (torch.nn's own modules keep Dynamo's default). The patch is
# applied when Dynamo's builder module is imported: importing Dynamo eagerly
# would cost seconds at `import rnnkernels`. If Dynamo's internals ever change
# shape, the patch is skipped and compiling just graph-breaks at these modules.
_DYNAMO_BUILDER = "torch._dynamo.variables.builder"


def _let_dynamo_trace(builder) -> None:
    try:
        from torch._dynamo import config

        variable_builder = builder.VariableBuilder
        original = variable_builder.wrap_module
        if getattr(original, "_rnnkernels", False) or not hasattr(config, "allow_rnn"):
            return

        def wrap_module(self, value):
            if isinstance(value, _RecurrentMixin) and not config.allow_rnn:
                with config.patch(allow_rnn=True):
                    return original(self, value)
            return original(self, value)

        wrap_module._rnnkernels = True
        variable_builder.wrap_module = wrap_module
    except Exception:  # pragma: no cover - a future torch
        pass


class _PatchDynamoOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _DYNAMO_BUILDER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _let_dynamo_trace(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _DYNAMO_BUILDER in sys.modules:
    _let_dynamo_trace(sys.modules[_DYNAMO_BUILDER])
else:
    sys.meta_path.insert(0, _PatchDynamoOnImport())

_TO_RK = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN,
          nn.LSTMCell: cells.LSTMCell, nn.GRUCell: cells.GRUCell, nn.RNNCell: cells.RNNCell}
_TO_TORCH = {v: k for k, v in _TO_RK.items()}


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Turns every torch.nn.LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell inside
    `model` (or `model` itself) into its rnnkernels twin, in place: same object,
    same parameters, hooks and state; returns `model`."""
    for module in model.modules():
        if type(module) in _TO_RK:
            module.__class__ = _TO_RK[type(module)]
            module.backend = backend
    return model


def unconvert(model: nn.Module) -> nn.Module:
    """The inverse of convert: rnnkernels modules become torch.nn ones again."""
    for module in model.modules():
        if type(module) in _TO_TORCH:
            module.__class__ = _TO_TORCH[type(module)]
            module.__dict__.pop("backend", None)
    return model


# Dynamic quantization: torch.ao.quantization.quantize_dynamic picks modules by
# exact type (its qconfig spec {nn.LSTM, ...}, its module mapping and the
# quantized classes' from_float all compare type(module) with torch.nn's), so
# rnnkernels modules would silently stay float. Wrapped, it sees them as the
# torch.nn modules they are (unconvert's class swap), quantizes them exactly as
# it quantizes torch.nn's (into torch's dynamically quantized modules), and the
# modules it leaves float become rnnkernels modules again, in the model and in
# the copy it returns. Models without rnnkernels modules see no difference. A
# reference taken before rnnkernels was imported (`from torch.ao.quantization
# import quantize_dynamic` first) is torch's own.
_QUANTIZE_NAMESPACES = ("torch.ao.quantization.quantize", "torch.ao.quantization",
                        "torch.quantization.quantize", "torch.quantization")


def _quantize_dynamic_seeing_torch_classes(quantize_dynamic):
    @functools.wraps(quantize_dynamic)
    def wrapper(model, *args, **kwargs):
        ours = [(name, module, type(module), module.__dict__.get("backend", "auto"))
                for name, module in model.named_modules() if type(module) in _TO_TORCH]
        for _, module, rk_class, _ in ours:
            module.__class__ = _TO_TORCH[rk_class]
        try:
            result = quantize_dynamic(model, *args, **kwargs)
        finally:
            for _, module, rk_class, backend in ours:
                module.__class__, module.backend = rk_class, backend
        if result is not model:  # inplace=False: a deep copy, with torch.nn twins of ours
            for name, _, rk_class, backend in ours:
                twin = result.get_submodule(name)
                if type(twin) is _TO_TORCH[rk_class]:  # left float
                    twin.__class__, twin.backend = rk_class, backend
        return result

    wrapper._rnnkernels = True
    return wrapper


def _wrap_quantize_dynamic() -> None:
    original = getattr(sys.modules.get(_QUANTIZE_NAMESPACES[0]), "quantize_dynamic", None)
    if original is None or getattr(original, "_rnnkernels", False):
        return
    wrapped = _quantize_dynamic_seeing_torch_classes(original)
    for name in _QUANTIZE_NAMESPACES:
        namespace = sys.modules.get(name)
        if getattr(namespace, "quantize_dynamic", None) is original:
            namespace.quantize_dynamic = wrapped


_wrap_quantize_dynamic()
