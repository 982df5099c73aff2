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

    def __init__(self, *args, backend: str = "auto", zoneout: float = 0.0, cell_zoneout: float = 0.0,
                 weight_drop: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.zoneout = _probability("zoneout", zoneout)
        self.cell_zoneout = _probability("cell_zoneout", cell_zoneout)
        self.weight_drop = _probability("weight_drop", weight_drop)
        if self.cell_zoneout and self.mode != "LSTM":
            raise ValueError(f"cell_zoneout is for LSTM layers (a {type(self).__name__} has no cell state); "
                             "use zoneout for its hidden state")
        if (self.zoneout or self.cell_zoneout) and self.proj_size > 0:
            raise ValueError("zoneout and cell_zoneout do not combine with proj_size (the zoned-out state would "
                             "be the projected one)")

    # What a layer adds to torch.nn's (rnnkernels.functional.LayerOptions);
    # getattr: modules pickled before these options existed have none.
    _layer_norm = False

    def _layer_options(self, return_cells: bool) -> Optional["functional.LayerOptions"]:
        zoneout, cell_zoneout = getattr(self, "zoneout", 0.0), getattr(self, "cell_zoneout", 0.0)
        weight_drop = getattr(self, "weight_drop", 0.0)
        if not (self._layer_norm or zoneout or cell_zoneout or weight_drop or return_cells):
            return None
        return functional.LayerOptions(layer_norm=self._layer_norm_weights() if self._layer_norm else None,
                                       zoneout=zoneout, cell_zoneout=cell_zoneout, weight_drop=weight_drop,
                                       return_cells=return_cells)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        for name in ("zoneout", "cell_zoneout", "weight_drop"):
            if getattr(self, name, 0.0):
                text += f", {name}={getattr(self, name)}"
        return text

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

    def _run(self, input: Tensor, hx, lengths, backend, batch_first: bool, return_cells: bool = False):
        """(output, state), and the cell states with return_cells."""
        backend = backend if backend is not None else getattr(self, "backend", "auto")
        weights = self._flat_weights
        options = self._layer_options(return_cells)
        plan = interop.autocast_plan(backend, input, op="rnn_ext" if options and options.extended() else "rnn")
        if plan is not None:  # autocast: see rnnkernels.interop
            input = interop.autocast_cast(input, plan.compute)
            hx = _map_state(hx, lambda h: interop.autocast_cast(h, plan.compute))
            weights = [interop.autocast_cast(w, plan.compute) for w in weights]
            if options is not None and options.layer_norm is not None:
                options = options._replace(layer_norm=[tuple(interop.autocast_cast(w, plan.compute) for w in ln)
                                                       for ln in options.layer_norm])
            backend = plan.backend
        with _autocast_off(input) if plan is not None else contextlib.nullcontext():
            result = functional.rnn_forward(
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
                options=options,
            )
        if plan is not None and plan.output != plan.compute:
            result = tuple(_map_state(r, lambda s: s.to(plan.output)) for r in result)
        return result

    def _forward_per_sample(self, input, hx, lengths):
        """ExpandedWeights (per-sample gradients): torch.nn's forward, whose
        decomposition computes them; `lengths` run as a PackedSequence."""
        if self._layer_options(False) is not None:
            raise RuntimeError(f"per-sample gradients (ExpandedWeights) run torch.nn's own {type(self).__name__} "
                               "forward, which has no LayerNorm, zoneout or weight drop; use torch.func.vmap over "
                               "torch.func.grad for this layer")
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

    def forward(self, input, hx=None, lengths: Optional[Tensor] = None, *, backend: Optional[str] = None,
                return_cell_states: bool = False):
        """Like torch.nn's forward; additionally
        lengths: int64 CPU tensor (batch,), for padded input: output is zero
            past each sequence's end and the final state is the one at its end;
        backend: overrides the module's backend for this call;
        return_cell_states (LSTM): also return c at every step of the last
            layer, shaped like the output (both directions), zero past each
            sequence's end: (output, (h_n, c_n), cell_states)."""
        if return_cell_states and self.mode != "LSTM":
            raise ValueError(f"return_cell_states is for LSTM layers; a {type(self).__name__} has no cell state")
        self._update_flat_weights()
        if interop.expanded_weights_in(self._flat_weights):
            if return_cell_states:
                raise RuntimeError("return_cell_states does not combine with per-sample gradients (ExpandedWeights)")
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
            output, state, *cell_states = self._run(padded, hx, seq_lengths, backend, batch_first=False,
                                                    return_cells=return_cell_states)
            order = sorted_indices if sorted_indices is not None else torch.arange(len(seq_lengths))

            def repack(padded_output):
                packed = pack_padded_sequence(padded_output[:, order.to(padded_output.device)], seq_lengths[order.cpu()])
                return PackedSequence(packed.data, batch_sizes, sorted_indices, unsorted_indices)

            return (repack(output), state, *[repack(c) for c in cell_states])

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
        output, state, *cell_states = self._run(input, hx, lengths, backend, batch_first=self.batch_first,
                                                return_cells=return_cell_states)
        if not is_batched:
            output = output.squeeze(batch_dim)
            state = _map_state(state, lambda s: s.squeeze(1))
            cell_states = [c.squeeze(batch_dim) for c in cell_states]
        return (output, state, *cell_states)

    @staticmethod
    def permute_hidden_one(h: Tensor, permutation: Optional[Tensor]) -> Tensor:
        return h if permutation is None else h.index_select(1, permutation)


def _probability(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
    return float(p)


def _autocast_off(x: Tensor):
    return torch.autocast(x.device.type, enabled=False)


class LSTM(_RecurrentMixin, nn.LSTM):
    """torch.nn.LSTM on rnnkernels backends: `rnnkernels.LSTM(..., backend="auto")`."""


class GRU(_RecurrentMixin, nn.GRU):
    """torch.nn.GRU on rnnkernels backends: `rnnkernels.GRU(..., backend="auto")`."""


class RNN(_RecurrentMixin, nn.RNN):
    """torch.nn.RNN (tanh or relu) on rnnkernels backends."""


class _LayerNormMixin:
    """Parameters of the LayerNorm layers, per layer k and direction (suffix
    `_reverse` for the second): `layer_norm_ih_weight_l{k}` and
    `layer_norm_hh_weight_l{k}` (gates * hidden_size,), the gains of
    LN(x W_ih^T) and LN(h W_hh^T), starting at 1; an LSTM also has
    `layer_norm_cell_weight_l{k}` and `layer_norm_cell_bias_l{k}`
    (hidden_size,), LN(c) before tanh, starting at 1 and 0."""

    _layer_norm = True

    def _layer_norm_shapes(self):
        """(name, size, initial value) of every LayerNorm parameter, in layer-direction order."""
        gates = 4 if self.mode == "LSTM" else 3
        for layer in range(self.num_layers):
            for direction in range(2 if self.bidirectional else 1):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                yield f"layer_norm_ih_weight{suffix}", gates * self.hidden_size, 1.0
                yield f"layer_norm_hh_weight{suffix}", gates * self.hidden_size, 1.0
                if self.mode == "LSTM":
                    yield f"layer_norm_cell_weight{suffix}", self.hidden_size, 1.0
                    yield f"layer_norm_cell_bias{suffix}", self.hidden_size, 0.0

    def _add_layer_norms(self, device, dtype):
        for name, size, value in self._layer_norm_shapes():
            self.register_parameter(name, nn.Parameter(torch.full((size,), value, device=device, dtype=dtype)))

    def reset_parameters(self) -> None:
        super().reset_parameters()  # torch.nn's uniform init of every parameter, then LayerNorm's own
        with torch.no_grad():
            for name, _, value in self._layer_norm_shapes():
                if hasattr(self, name):
                    getattr(self, name).fill_(value)

    def _layer_norm_weights(self):
        """Per layer-direction (ln_ih, ln_hh, ln_cell_weight or None, ln_cell_bias or None)."""
        names = [name for name, _, _ in self._layer_norm_shapes()]
        per = 4 if self.mode == "LSTM" else 2
        groups = [[getattr(self, n) for n in names[i:i + per]] for i in range(0, len(names), per)]
        return [tuple(g) + (None,) * (4 - per) for g in groups]


class LayerNormLSTM(_LayerNormMixin, LSTM):
    """LayerNorm LSTM (Ba et al. 2016; Haste's LayerNormLSTM), fused, with
    everything rk.LSTM has except proj_size:

        gates = LN(x W_ih^T; g_ih) + LN(h W_hh^T; g_hh) + b_ih + b_hh   (i, f, g, o)
        c' = sig(f) c + sig(i) tanh(g);   h' = sig(o) tanh(LN(c'; g_c, b_c))

    LN over each row's whole gate vector, biased variance, eps 1e-5. The
    parameters are torch.nn.LSTM's plus the LayerNorm ones (_LayerNormMixin)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, **options):
        if "proj_size" in options:
            raise TypeError("LayerNormLSTM has no proj_size")
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype, **options)
        self._add_layer_norms(device, dtype)


class LayerNormGRU(_LayerNormMixin, GRU):
    """LayerNorm GRU, fused, with everything rk.GRU has:

        gi = LN(x W_ih^T; g_ih) + b_ih;  gh = LN(h W_hh^T; g_hh) + b_hh;  then torch.nn's GRU cell
        r = sig(gi_r + gh_r), z = sig(gi_z + gh_z), n = tanh(gi_n + r gh_n), h' = (1 - z) n + z h

    Parameters: torch.nn.GRU's plus layer_norm_ih_weight_l{k}, layer_norm_hh_weight_l{k}."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, **options):
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype, **options)
        self._add_layer_norms(device, dtype)


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
    """The inverse of convert: rnnkernels modules become torch.nn ones again.
    A module with an option torch.nn lacks (zoneout, weight drop) is refused
    before anything changes: torch.nn's module would silently drop it."""
    for module in model.modules():
        if type(module) in _TO_TORCH and isinstance(module, _RecurrentMixin) and module._layer_options(False):
            raise ValueError(f"unconvert: {type(module).__name__}({module.extra_repr()}) has options torch.nn's "
                             f"{_TO_TORCH[type(module)].__name__} lacks (zoneout, weight_drop)")
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
        # Modules with zoneout or weight drop stay float: torch's quantized LSTM would drop them.
        ours = [(name, module, type(module), module.__dict__.get("backend", "auto"))
                for name, module in model.named_modules() if type(module) in _TO_TORCH
                and not (isinstance(module, _RecurrentMixin) and module._layer_options(False))]
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
