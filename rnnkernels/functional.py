"""Functional multi-layer, bidirectional recurrent networks.

`lstm`, `gru` and `rnn` take the weights in torch.nn's flat order (what
`module._flat_weights` holds): for each layer, for each direction,
`w_ih, w_hh[, b_ih, b_hh][, w_hr]`. Each layer and direction is one call of
`rnnkernels.backends.rnn_layer`, so a new kernel plugs in there, not here.
"""
import numbers
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends, interop
from .reference import GATES, MODES, LayerExtras


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
    check_range("lengths", lengths, steps, "the number of time steps")
    return lengths


def check_range(name: str, lengths: Tensor, steps: int, what: str) -> None:
    """Raises unless every entry of the int64 tensor `lengths` lies in [0, steps].

    Eager: a ValueError naming the smallest and largest entry. Compiled, the
    values are not known while tracing, so the check becomes an assertion op
    in the graph (torch._assert_async), which raises a RuntimeError when the
    graph runs, before any kernel that reads them."""
    if lengths.numel() == 0:
        return
    if torch.compiler.is_compiling():
        bound = steps if isinstance(steps, int) else "T"
        torch._assert_async((lengths.min() >= 0) & (lengths.max() <= steps),
                            f"{name} must lie in [0, {bound}] ({what})")
        return
    low, high = int(lengths.min()), int(lengths.max())
    if low < 0 or high > steps:
        raise ValueError(f"{name} must lie in [0, {steps}] ({what}), got min {low}, max {high}")


_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # torch.nn's, in flat order


def _layer_weights(mode: str, input: Tensor, flat: Sequence[Tensor], num_layers: int, directions: int,
                   has_bias: bool, proj_size: int) -> List[Tuple[Optional[Tensor], ...]]:
    """(w_ih, w_hh, b_ih, b_hh, w_hr) per layer-direction, after checking the
    count, type, shape, dtype and device of every weight against `input`
    (time-major (T, B, I)) and the first w_hh; raises naming the weight as
    torch.nn names it (weight_hh_l1_reverse, ...)."""
    names = [n for n in _WEIGHT_NAMES if has_bias or not n.startswith("bias")]
    if proj_size == 0:
        names.remove("weight_hr")
    if isinstance(flat, Tensor) or not isinstance(flat, (list, tuple)):
        raise TypeError(f"weights must be a list or tuple of tensors (torch.nn's flat order), got {type(flat).__name__}")
    expected = num_layers * directions * len(names)
    if len(flat) != expected:
        raise ValueError(
            f"expected {expected} weights ({num_layers} layer(s) x {directions} direction(s) x "
            f"[{', '.join(n.replace('eight', '').replace('ias', '') for n in names)}]) for has_bias={has_bias}, "
            f"proj_size={proj_size}, got {len(flat)}: num_layers, bidirectional, has_bias and proj_size must "
            f"describe the weights"
        )
    for i, w in enumerate(flat):
        if not isinstance(w, Tensor):
            raise TypeError(f"weights[{i}] must be a tensor, got {type(w).__name__}")
    gates = GATES[mode]
    w_hh0 = flat[1]
    if w_hh0.dim() != 2 or w_hh0.shape[0] == 0 or w_hh0.shape[0] % gates:
        raise ValueError(f"weight_hh_l0 must have shape ({gates} * hidden_size, hidden_size) for {mode}, "
                         f"got {tuple(w_hh0.shape)}")
    hidden = w_hh0.shape[0] // gates
    out_size = proj_size or hidden
    if proj_size >= hidden and proj_size > 0:
        raise ValueError("proj_size has to be smaller than hidden_size")
    w_ih0 = flat[0]
    if w_ih0.dim() == 2 and w_ih0.shape[0] == gates * hidden and w_ih0.shape[1] != input.shape[-1]:
        # torch.nn's message, word for word
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {w_ih0.shape[1]}, "
                           f"got {input.shape[-1]}")
    autocast = getattr(torch._C, "_is_any_autocast_enabled", torch.is_autocast_enabled)()
    layers = []
    for layer in range(num_layers):
        in_size = input.shape[-1] if layer == 0 else out_size * directions
        shapes = {"weight_ih": (gates * hidden, in_size), "weight_hh": (gates * hidden, out_size),
                  "bias_ih": (gates * hidden,), "bias_hh": (gates * hidden,), "weight_hr": (proj_size, hidden)}
        for direction in range(directions):
            start = (layer * directions + direction) * len(names)
            chunk = dict(zip(names, flat[start : start + len(names)]))
            for name, w in chunk.items():
                full = f"{name}_l{layer}{'_reverse' if direction else ''}"
                if tuple(w.shape) != shapes[name]:
                    raise ValueError(f"{full} must have shape {shapes[name]}, got {tuple(w.shape)}")
                if w.device != input.device:  # torch.nn's message
                    raise RuntimeError(f"Input and parameter tensors are not at the same device, found input "
                                       f"tensor at {input.device} and parameter tensor at {w.device}")
                if w.dtype != input.dtype and not autocast:  # torch.nn's message
                    raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype ({w.dtype}). "
                                     f"Convert input: input.to({w.dtype}), or convert model: model.to({input.dtype})")
            layers.append(tuple(chunk.get(n) for n in _WEIGHT_NAMES))
    return layers


def _initial_state(mode: str, input: Tensor, hx, layers: int, out_size: int, hidden: int):
    """(h0, c0 or None) of shape (layers, B, out_size) / (layers, B, hidden),
    zeros where hx leaves them out; torch.nn's messages for a wrong shape."""
    batch = input.shape[1]
    if mode == "lstm":
        if hx is None:
            hx = (None, None)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            got = f"a tuple of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise TypeError(f"hx must be a tuple (h0, c0) of two tensors for lstm, got {got}")
        states = [("hidden[0]", hx[0], out_size), ("hidden[1]", hx[1], hidden)]
    else:
        if hx is not None and not isinstance(hx, Tensor):
            got = f"a tuple of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise TypeError(f"hx must be a tensor h0 for {mode} (only lstm takes a tuple), got {got}")
        states = [("hidden", hx, out_size)]
    result = []
    for name, h, size in states:
        expected = (layers, batch, size)
        if h is None:
            result.append(input.new_zeros(expected))
            continue
        if not isinstance(h, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(h).__name__}")
        if h.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, {name} should also be 3-D but got {h.dim()}-D tensor")
        if tuple(h.shape) != expected:  # torch.nn's message
            message = "Expected hidden size {}, got {}" if name == "hidden" else f"Expected {name} size {{}}, got {{}}"
            raise RuntimeError(message.format(expected, list(h.shape)))
        if h.device != input.device:  # torch.nn's message
            raise RuntimeError(f"Input and hidden tensors are not at the same device, found input tensor at "
                               f"{input.device} and hidden tensor at {h.device}")
        if h.dtype != input.dtype:
            raise RuntimeError(f"{name} dtype ({h.dtype}) does not match input dtype ({input.dtype})")
        result.append(h)
    return result[0], (result[1] if mode == "lstm" else None)


def _check_options(mode: str, num_layers, proj_size, dropout) -> None:
    """torch.nn's constructor checks and messages, for the functional API."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"num_layers must be greater than zero, got {num_layers!r}")
    if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {proj_size!r}")
    if proj_size > 0 and mode != "lstm":
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the probability of an element "
                         f"being zeroed, got {dropout!r}")


class LayerOptions(NamedTuple):
    """What a layer adds to torch.nn's (rk.LayerNormLSTM / LayerNormGRU and
    the modules' zoneout, cell_zoneout, weight_drop, return_cell_states):

    layer_norm    per layer-direction (ln_ih_weight, ln_hh_weight, ln_cell_weight,
                  ln_cell_bias), the last two None for a GRU; or None
    zoneout       p: in training each unit of h keeps its previous value with
                  probability p (a Bernoulli draw per step and unit), in
                  evaluation h = p h_prev + (1 - p) h_fresh (Krueger et al. 2016)
    cell_zoneout  the same for an LSTM's c
    weight_drop   p: in training one Bernoulli mask on each W_hh per call,
                  scaled by 1 / (1 - p) (DropConnect, AWD-LSTM); the
                  parameter itself is never modified
    return_cells  LSTM: also return c at every step of the last layer
    generator     the torch.Generator the masks are drawn from (None: torch's),
                  in a fixed order (layer, direction; W_hh's, then h's, then c's)
    No option combines with proj_size."""
    layer_norm: Optional[Sequence[Tuple[Optional[Tensor], ...]]] = None
    zoneout: float = 0.0
    cell_zoneout: float = 0.0
    weight_drop: float = 0.0
    return_cells: bool = False
    generator: Optional[torch.Generator] = None

    def extended(self) -> bool:
        """Whether the layers need the extended op (weight drop alone does not)."""
        return self.layer_norm is not None or bool(self.zoneout) or bool(self.cell_zoneout) or self.return_cells


def _check_layer_options(mode: str, options: LayerOptions, x: Tensor, layer_directions: int, hidden: int,
                         proj_size: int) -> None:
    for name in ("zoneout", "cell_zoneout", "weight_drop"):
        p = getattr(options, name)
        if isinstance(p, bool) or not isinstance(p, numbers.Number) or not 0 <= p < 1:
            raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
    if options.cell_zoneout and mode != "lstm":
        raise ValueError(f"cell_zoneout is for LSTM layers; {mode} has no cell state")
    if options.return_cells and mode != "lstm":
        raise ValueError(f"return_cells is for LSTM layers; {mode} has no cell state")
    if (options.extended() or options.weight_drop) and proj_size > 0:
        raise ValueError("LayerNorm, zoneout, weight drop and return_cells do not combine with proj_size")
    if options.layer_norm is None:
        return
    if mode not in ("lstm", "gru"):
        raise ValueError(f"layer_norm is for LSTM and GRU layers, got {mode}")
    if len(options.layer_norm) != layer_directions:
        raise ValueError(f"layer_norm must hold one entry per layer and direction ({layer_directions}), "
                         f"got {len(options.layer_norm)}")
    gates = GATES[mode] * hidden
    for index, entry in enumerate(options.layer_norm):
        names = ("ln_ih_weight", "ln_hh_weight", "ln_cell_weight", "ln_cell_bias")
        sizes = (gates, gates, hidden, hidden) if mode == "lstm" else (gates, gates)
        entry = tuple(entry) + (None,) * (4 - len(entry))
        for name, size, t in zip(names, sizes, entry):
            if not isinstance(t, Tensor) or t.shape != (size,) or t.dtype != x.dtype or t.device != x.device:
                got = f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"layer_norm[{index}] {name} must be a ({size},) {x.dtype} tensor on {x.device}, "
                                 f"got {got}")


def _bernoulli(p: float, shape, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """1 with probability p, else 0, in like's dtype; drawn as float32 uniforms
    so that the draws are the same whatever the dtype."""
    uniform = torch.rand(shape, dtype=torch.float32, device=like.device, generator=generator)
    return (uniform < p).to(like.dtype)


def _layer_extras(mode: str, options: LayerOptions, idx: int, last_layer: bool, x: Tensor, hidden: int,
                  training: bool, w_hh: Tensor):
    """(w_hh to use, LayerExtras or None) for layer-direction idx; draws its masks."""
    if options.weight_drop and training:
        keep = 1 - options.weight_drop
        w_hh = w_hh * (_bernoulli(keep, w_hh.shape, w_hh, options.generator) / keep)
    if not options.extended():
        return w_hh, None
    T, B = x.shape[0], x.shape[1]

    def keep_factors(p):
        if not p:
            return None
        if training:
            return _bernoulli(p, (T, B, hidden), x, options.generator)
        return torch.full((T, B, hidden), p, dtype=x.dtype, device=x.device)

    norms = tuple(options.layer_norm[idx]) + (None,) * (4 - len(options.layer_norm[idx])) \
        if options.layer_norm is not None else (None,) * 4
    keep_h = keep_factors(options.zoneout)
    keep_c = keep_factors(options.cell_zoneout) if mode == "lstm" else None
    return w_hh, LayerExtras(*norms, keep_h, keep_c, options.return_cells and last_layer)


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


def _on_two_threads(mode, x, layer, layers, extras, h0, c0, lengths, backend):
    """Both directions of layer `layer` on two CPU threads at once (see
    rnn_ops.bidirectional: the cpu backend, without projection or per-layer
    extras), or None where that does not apply."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    if not x.is_cpu or any(e is not None for _, e in extras) or layers[2 * layer][4] is not None:
        return None
    if backends.resolve(backend, x.device, "rnn", x.dtype)[0] != "cpu":
        return None
    from . import rnn_ops  # the extension is loaded: the cpu backend runs

    def direction(d):
        idx = 2 * layer + d
        w_ih, _, b_ih, b_hh, _ = layers[idx]
        return h0[idx], c0[idx] if c0 is not None else None, w_ih, extras[d][0], b_ih, b_hh

    return rnn_ops.bidirectional(mode, x, direction(0), direction(1), lengths)


# bfloat16 GEMMs on the cpu backend run on oneDNN, natively from AVX-512 up
# (AVX512-BF16, AMX). Without AVX-512, oneDNN 3.2 has only reference
# bfloat16 kernels: on the AMD EPYC Zen 2 (AVX2) a bfloat16 LSTM forward at
# (35, 20, 200, 200) took 129 ms against 7 ms in float32 (torch.nn's bfloat16
# took 66 ms). There a bfloat16 call computes in float32 (bfloat16 values are
# exact in float32) and returns bfloat16, with gradients in the parameters' dtype.
_CPU_BFLOAT16_NATIVE = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")().startswith("AVX512")


def _bfloat16_in_float32(x: Tensor, backend: Optional[str], options: Optional["LayerOptions"]) -> bool:
    if _CPU_BFLOAT16_NATIVE or x.dtype != torch.bfloat16 or not x.is_cpu:
        return False
    op = "rnn_ext" if options is not None and options.extended() else "rnn"
    return backends.resolve(backend, x.device, op, x.dtype)[0] == "cpu"


def _as_float32(value):
    if isinstance(value, Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_as_float32(v) for v in value)
    return value


def _as_bfloat16(value):
    if isinstance(value, Tensor):
        return value.bfloat16() if value.dtype == torch.float32 else value
    if isinstance(value, tuple):
        return tuple(_as_bfloat16(v) for v in value)
    return value


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
    options: Optional[LayerOptions] = None,
):
    """Batched (3-D) input only; returns (output, h_n) or (output, (h_n, c_n)),
    and with options.return_cells also the last layer's cell states, shaped
    like the output: (output, (h_n, c_n), cell_states).

    Every argument is checked before any layer runs, whatever the backend."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a tensor, got {type(input).__name__}")
    if input.dim() != 3:
        raise ValueError(f"input must be 3-D (seq, batch, feature), got {input.dim()}-D")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    _check_options(mode, num_layers, proj_size, dropout)
    interop.check_no_expanded_weights(flat_weights)  # before the checks below touch them
    x = input.transpose(0, 1) if batch_first else input  # (T, B, I)
    T, B = x.shape[0], x.shape[1]
    if T == 0:  # torch.nn's error, word for word
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    directions = 2 if bidirectional else 1
    layers = _layer_weights(mode, x, flat_weights, num_layers, directions, has_bias, proj_size)
    hidden = layers[0][1].shape[0] // GATES[mode]
    h0, c0 = _initial_state(mode, x, hx, num_layers * directions, proj_size or hidden, hidden)
    lengths = check_lengths(lengths, B, T)
    if options is not None:
        _check_layer_options(mode, options, x, num_layers * directions, hidden, proj_size)
    if _bfloat16_in_float32(x, backend, options):
        if options is not None and options.layer_norm is not None:
            options = options._replace(layer_norm=_as_float32(list(options.layer_norm)))
        return _as_bfloat16(rnn_forward(
            mode, input.float(), _as_float32(hx), _as_float32(list(flat_weights)), num_layers=num_layers,
            bidirectional=bidirectional, has_bias=has_bias, proj_size=proj_size, dropout=dropout,
            training=training, batch_first=batch_first, lengths=lengths, backend=backend, options=options))

    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    cell_states: List[Tensor] = []
    layer_input = x
    for layer in range(num_layers):
        outs = []
        # This layer's masks, both directions, drawn before either runs: a fixed order on every backend.
        extras = [(layers[layer * directions + d][1], None) if options is None else
                  _layer_extras(mode, options, layer * directions + d, layer == num_layers - 1, layer_input, hidden,
                                training, layers[layer * directions + d][1]) for d in range(directions)]

        def run(direction, layer=layer, layer_input=layer_input, extras=extras):
            idx = layer * directions + direction
            w_ih, _, b_ih, b_hh, w_hr = layers[idx]
            w_hh, layer_extras = extras[direction]
            if layer_extras is not None:
                return backends.rnn_layer(mode, layer_input, h0[idx], c0[idx] if c0 is not None else None, w_ih,
                                          w_hh, b_ih, b_hh, None, lengths, direction == 1, backend=backend,
                                          extras=layer_extras)
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

        results = None
        if directions == 2 and _two_streams(layer_input):
            idx = layer * directions + 1
            results = _on_two_streams(run, [layer_input, h0[idx], c0[idx] if c0 is not None else None,
                                            *layers[idx]])
        elif directions == 2:
            results = _on_two_threads(mode, layer_input, layer, layers, extras, h0, c0, lengths, backend)
        if results is None:
            results = [run(direction) for direction in range(directions)]
        for out, h, c, *cells in results:
            outs.append(out)
            h_n.append(h)
            if c is not None:
                c_n.append(c)
            if cells and cells[0] is not None:
                cell_states.append(cells[0])
        layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    h_stack = torch.stack(h_n, 0)
    c_stack = torch.stack(c_n, 0) if mode == "lstm" else None
    result = (output, (h_stack, c_stack)) if mode == "lstm" else (output, h_stack)
    if options is not None and options.return_cells:
        cells_out = cell_states[0] if directions == 1 else torch.cat(cell_states, dim=-1)
        result += (cells_out.transpose(0, 1) if batch_first else cells_out,)
    return result


def single_length(lengths) -> Optional[Tensor]:
    """The lengths of an unbatched (2-D) input as a (1,) tensor: one length,
    of shape () or (1,); a clear error otherwise (not reshape's)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.numel() != 1 or lengths.dim() > 1:
        raise ValueError(f"lengths must be a single length (shape () or (1,)) for unbatched 2-D input, "
                         f"got shape {tuple(lengths.shape)}")
    return lengths.reshape(1)


def _unbatched(fn):
    """Lets the functional API take a 2-D (seq, feature) input like torch.nn,
    with 2-D states and a single length; torch.nn's checks and messages."""
    cell = fn.__name__.upper()

    def wrapper(input, hx=None, *args, batch_first=False, lengths=None, **kwargs):
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):  # torch.nn's message
            raise ValueError(f"{cell}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        if hx is not None:
            states = hx if isinstance(hx, (tuple, list)) else (hx,)
            for h in states:
                if not isinstance(h, Tensor):
                    raise TypeError(f"hx must hold tensors, got {type(h).__name__}")
            want = input.dim()
            if any(h.dim() != want for h in states):  # torch.nn's message
                kind = "batched 3-D" if want == 3 else "unbatched 2-D"
                names = "hx and cx" if len(states) == 2 else "hx"
                dims = ", ".join(f"{h.dim()}-D" for h in states)
                shown = f"({dims}) tensors" if len(states) == 2 else f"{dims} tensor"
                raise RuntimeError(f"For {kind} input, {names} should also be {want}-D but got {shown}")
        if input.dim() == 3:
            return fn(input, hx, *args, batch_first=batch_first, lengths=lengths, **kwargs)
        batch_dim = 0 if batch_first else 1
        lengths = single_length(lengths)
        if hx is not None:
            hx = type(hx)(h.unsqueeze(1) for h in hx) if isinstance(hx, (tuple, list)) else hx.unsqueeze(1)
        out, state, *cells = fn(input.unsqueeze(batch_dim), hx, *args, batch_first=batch_first, lengths=lengths,
                                **kwargs)
        state = tuple(s.squeeze(1) for s in state) if isinstance(state, tuple) else state.squeeze(1)
        return (out.squeeze(batch_dim), state, *[c.squeeze(batch_dim) for c in cells])

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_unbatched
def lstm(input, hx, weights, *, num_layers=1, bidirectional=False, has_bias=True, proj_size=0,
         dropout=0.0, training=False, batch_first=False, lengths=None, backend=None, options=None):
    """LSTM over `input` (T, B, I) (or (B, T, I) with batch_first, or (T, I));
    hx = (h0, c0) or None. Returns (output, (h_n, c_n)). Output is zero past
    each sequence's length. options: a LayerOptions (LayerNorm, zoneout, weight
    drop, return_cells)."""
    return rnn_forward("lstm", input, hx, weights, num_layers=num_layers, bidirectional=bidirectional,
                       has_bias=has_bias, proj_size=proj_size, dropout=dropout, training=training,
                       batch_first=batch_first, lengths=lengths, backend=backend, options=options)


@_unbatched
def gru(input, hx, weights, *, num_layers=1, bidirectional=False, has_bias=True,
        dropout=0.0, training=False, batch_first=False, lengths=None, backend=None, options=None):
    """GRU; like `lstm` with hx = h0 and returning (output, h_n)."""
    return rnn_forward("gru", input, hx, weights, num_layers=num_layers, bidirectional=bidirectional,
                       has_bias=has_bias, dropout=dropout, training=training,
                       batch_first=batch_first, lengths=lengths, backend=backend, options=options)


@_unbatched
def rnn(input, hx, weights, *, nonlinearity="tanh", num_layers=1, bidirectional=False, has_bias=True,
        dropout=0.0, training=False, batch_first=False, lengths=None, backend=None, options=None):
    """Elman RNN with nonlinearity "tanh" or "relu"; like `gru` otherwise."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return rnn_forward(f"rnn_{nonlinearity}", input, hx, weights, num_layers=num_layers,
                       bidirectional=bidirectional, has_bias=has_bias, dropout=dropout, training=training,
                       batch_first=batch_first, lengths=lengths, backend=backend, options=options)
