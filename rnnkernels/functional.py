"""Functional multi-layer, bidirectional recurrent networks.

`lstm`, `gru` and `rnn` take the weights in torch.nn's flat order (what
`module._flat_weights` holds): for each layer, for each direction,
`w_ih, w_hh[, b_ih, b_hh][, w_hr]`. Each layer and direction is one call of
`rnnkernels.backends.rnn_layer`, so a new kernel plugs in there, not here.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends
from .reference import GATES, MODES


def check_lengths(lengths: Optional[Tensor], batch: int, steps: int) -> Optional[Tensor]:
    """Validates per-sequence lengths; returns them as a CPU int64 tensor."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"lengths must be an integer tensor (int64 preferred), got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise ValueError(
            f"lengths must have shape ({batch},) (one length per sequence), got {tuple(lengths.shape)}"
        )
    if lengths.device.type != "cpu":
        raise ValueError(f"lengths must be on the CPU (like torch's pack_padded_sequence), got {lengths.device}")
    lengths = lengths.to(torch.int64)
    if batch > 0 and not torch.compiler.is_compiling():
        low, high = int(lengths.min()), int(lengths.max())
        if low < 0 or high > steps:
            raise ValueError(
                f"lengths must lie in [0, {steps}] (the number of time steps), got min {low}, max {high}"
            )
    return lengths


def _layer_weights(flat: Sequence[Tensor], has_bias: bool, has_proj: bool):
    per = 2 + 2 * has_bias + has_proj
    for start in range(0, len(flat), per):
        chunk = list(flat[start : start + per])
        w_ih, w_hh = chunk[0], chunk[1]
        b_ih, b_hh = (chunk[2], chunk[3]) if has_bias else (None, None)
        w_hr = chunk[-1] if has_proj else None
        yield w_ih, w_hh, b_ih, b_hh, w_hr


_side_streams: Dict[torch.device, "torch.cuda.Stream"] = {}


def _two_streams(x: Tensor) -> bool:
    """Whether a bidirectional layer runs its reverse direction on a side
    stream: eager CUDA only (dynamo traces stream contexts only in recent
    torch), and only with RNNKERNELS_CUDA_TWO_STREAMS=1 until a GPU run of
    tests/test_cuda_kernels.py::test_two_streams_match_one_stream has
    verified it (no GPU was lent when it was written)."""
    return (x.is_cuda and not torch.compiler.is_compiling()
            and os.environ.get("RNNKERNELS_CUDA_TWO_STREAMS", "0") == "1")


def _on_two_streams(run, reverse_inputs: Sequence[Optional[Tensor]]):
    """[run(0), run(1)], run(1) on a side stream so that the two directions
    overlap on the GPU. reverse_inputs: every tensor run(1) reads.

    Autograd needs nothing more: a node's backward runs on the stream its
    forward ran on, and the engine makes the streams wait for each other's
    gradients (and record_streams them) where they cross."""
    device = reverse_inputs[0].device
    main = torch.cuda.current_stream(device)
    side = _side_streams.get(device)
    if side is None:
        side = _side_streams[device] = torch.cuda.Stream(device)
    side.wait_stream(main)  # run(1) reads what main has written so far
    with torch.cuda.stream(side):
        reverse = run(1)
    forward = run(0)
    main.wait_stream(side)  # whatever follows may read run(1)'s outputs
    # The caching allocator reuses a freed block on its own stream at once:
    # the inputs (main's; also saved for the backward, which reads them on
    # side) and the outputs (side's; read on main from here on) must wait for
    # the other stream's work.
    for t in reverse_inputs:
        if t is not None:
            t.record_stream(side)
    for t in reverse:
        if t is not None:
            t.record_stream(main)
    return [forward, reverse]


def rnn_forward(
    mode: str,
    input: Tensor,
    hx: Optional[Union[Tensor, Tuple[Tensor, Tensor]]],
    flat_weights: Sequence[Tensor],
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    has_bias: bool = True,
    proj_size: int = 0,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths: Optional[Tensor] = None,
    backend: Optional[str] = None,
):
    """Batched (3-D) input only; returns (output, h_n) or (output, (h_n, c_n))."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if input.dim() != 3:
        raise ValueError(f"input must be 3-D (seq, batch, feature), got {input.dim()}-D")
    x = input.transpose(0, 1) if batch_first else input  # (T, B, I)
    T, B = x.shape[0], x.shape[1]
    if T == 0:  # torch.nn's error, word for word
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    lengths = check_lengths(lengths, B, T)
    directions = 2 if bidirectional else 1
    has_proj = proj_size > 0
    layers = list(_layer_weights(flat_weights, has_bias, has_proj))
    if len(layers) != num_layers * directions:
        raise ValueError(
            f"expected weights for {num_layers * directions} layer-directions, got {len(layers)}"
        )
    hidden = layers[0][1].shape[0] // GATES[mode]
    out_size = proj_size if has_proj else hidden
    if mode == "lstm":
        h0, c0 = hx if hx is not None else (None, None)
    else:
        h0, c0 = hx, None
    if h0 is None:
        h0 = x.new_zeros(num_layers * directions, B, out_size)
    if mode == "lstm" and c0 is None:
        c0 = x.new_zeros(num_layers * directions, B, hidden)

    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    layer_input = x
    for layer in range(num_layers):
        outs = []

        def run(direction, layer=layer, layer_input=layer_input):
            idx = layer * directions + direction
            w_ih, w_hh, b_ih, b_hh, w_hr = layers[idx]
            return backends.rnn_layer(
                mode,
                layer_input,
                h0[idx],
                c0[idx] if c0 is not None else None,
                w_ih,
                w_hh,
                b_ih,
                b_hh,
                w_hr,
                lengths,
                direction == 1,
                backend=backend,
            )

        if directions == 2 and _two_streams(layer_input):
            idx = layer * directions + 1
            results = _on_two_streams(run, [layer_input, h0[idx], c0[idx] if c0 is not None else None,
                                            *layers[idx]])
        else:
            results = [run(direction) for direction in range(directions)]
        for out, h, c in results:
            outs.append(out)
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    h_stack = torch.stack(h_n, 0)
    c_stack = torch.stack(c_n, 0) if mode == "lstm" else None
    return (output, (h_stack, c_stack)) if mode == "lstm" else (output, h_stack)


def _unbatched(fn):
    """Lets the functional API take a 2-D (seq, feature) input like torch.nn."""

    def wrapper(input, hx=None, *args, batch_first=False, **kwargs):
        if input.dim() != 2:
            return fn(input, hx, *args, batch_first=batch_first, **kwargs)
        batch_dim = 0 if batch_first else 1
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        out, state = fn(input.unsqueeze(batch_dim), hx, *args, batch_first=batch_first, **kwargs)
        state = tuple(s.squeeze(1) for s in state) if isinstance(state, tuple) else state.squeeze(1)
        return out.squeeze(batch_dim), state

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_unbatched
def lstm(input, hx, weights, *, num_layers=1, bidirectional=False, has_bias=True, proj_size=0,
         dropout=0.0, training=False, batch_first=False, lengths=None, backend=None):
    """LSTM over `input` (T, B, I) (or (B, T, I) with batch_first, or (T, I));
    hx = (h0, c0) or None. Returns (output, (h_n, c_n)). Output is zero past
    each sequence's length."""
    return rnn_forward("lstm", input, hx, weights, num_layers=num_layers, bidirectional=bidirectional,
                       has_bias=has_bias, proj_size=proj_size, dropout=dropout, training=training,
                       batch_first=batch_first, lengths=lengths, backend=backend)


@_unbatched
def gru(input, hx, weights, *, num_layers=1, bidirectional=False, has_bias=True,
        dropout=0.0, training=False, batch_first=False, lengths=None, backend=None):
    """GRU; like `lstm` with hx = h0 and returning (output, h_n)."""
    return rnn_forward("gru", input, hx, weights, num_layers=num_layers, bidirectional=bidirectional,
                       has_bias=has_bias, dropout=dropout, training=training,
                       batch_first=batch_first, lengths=lengths, backend=backend)


@_unbatched
def rnn(input, hx, weights, *, nonlinearity="tanh", num_layers=1, bidirectional=False, has_bias=True,
        dropout=0.0, training=False, batch_first=False, lengths=None, backend=None):
    """Elman RNN with nonlinearity "tanh" or "relu"; like `gru` otherwise."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return rnn_forward(f"rnn_{nonlinearity}", input, hx, weights, num_layers=num_layers,
                       bidirectional=bidirectional, has_bias=has_bias, dropout=dropout, training=training,
                       batch_first=batch_first, lengths=lengths, backend=backend)
