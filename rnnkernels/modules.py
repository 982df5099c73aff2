"""Drop-in rnnkernels.LSTM / GRU / RNN.

They subclass torch.nn.LSTM / GRU / RNN, so constructor arguments, parameter
names and shapes, initialisation, state_dict, repr and isinstance are torch's
own; only forward changes: it runs on an rnnkernels backend and also takes
padded input with per-sequence `lengths`.
"""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional


def _map_state(state, fn):
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


class _RecurrentMixin:
    """forward() shared by the three modules; torch.nn's checks and messages."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

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
        return functional.rnn_forward(
            self._rk_mode,
            input,
            hx,
            self._flat_weights,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            has_bias=self.bias,
            proj_size=self.proj_size,
            dropout=self.dropout,
            training=self.training,
            batch_first=batch_first,
            lengths=lengths,
            backend=backend if backend is not None else getattr(self, "backend", "auto"),
        )

    def forward(self, input, hx=None, lengths: Optional[Tensor] = None, *, backend: Optional[str] = None):
        """Like torch.nn's forward; additionally
        lengths: int64 CPU tensor (batch,), for padded input: output is zero
            past each sequence's end and the final state is the one at its end;
        backend: overrides the module's backend for this call."""
        self._update_flat_weights()
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


class LSTM(_RecurrentMixin, nn.LSTM):
    """torch.nn.LSTM on rnnkernels backends: `rnnkernels.LSTM(..., backend="auto")`."""


class GRU(_RecurrentMixin, nn.GRU):
    """torch.nn.GRU on rnnkernels backends: `rnnkernels.GRU(..., backend="auto")`."""


class RNN(_RecurrentMixin, nn.RNN):
    """torch.nn.RNN (tanh or relu) on rnnkernels backends."""


_TO_RK = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}
_TO_TORCH = {v: k for k, v in _TO_RK.items()}


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Turns every torch.nn.LSTM / GRU / RNN inside `model` (or `model` itself)
    into its rnnkernels twin, in place: same object, same parameters, hooks and
    state; returns `model`."""
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
