"""What the `cpu` and `cuda` backends share: both are the compiled layer op
(rnnkernels.rnn_ops.rnn_layer: the sequence loop of csrc/rnn_layer.cpp, which
picks its pointwise steps by the tensors' device), registered once per device
type with that device's checks."""
from typing import Optional

import torch

from .. import _ext
from . import register

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# Once here, not per call: torch.compile traces the checks below.
LOAD_ERROR = _ext.load_error()

if LOAD_ERROR is None:
    from .. import rnn_ext_ops, rnn_ops  # register the ops' autograd formulas and fake kernels


def _rnn(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    return rnn_ops.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)


def _rnn_ext(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras):
    return rnn_ext_ops.rnn_layer_extended(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras)


def register_rnn(device_type: str, priority: int, build_error: Optional[str] = None, extended: bool = False) -> None:
    """Registers the compiled op as backend `device_type` ("cpu" or "cuda"),
    for tensors of that device type; with `extended`, the extended op too
    (op "rnn_ext": LayerNorm, zoneout, cell states; the cpu and cuda backends).
    `build_error`: why this build of the extension cannot run on that device, or None."""

    def unavailable_reason(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[str]:
        if LOAD_ERROR is not None:
            return LOAD_ERROR
        if build_error is not None:
            return build_error
        if device.type != device_type:
            return f"the {device_type} backend runs on {device_type.upper()} tensors only, got a {device.type} tensor"
        if dtype is not None and dtype not in DTYPES:
            return f"the {device_type} backend supports {', '.join(str(d) for d in DTYPES)}, got {dtype}"
        return None

    register("rnn", device_type, _rnn, priority={device_type: priority}, unavailable_reason=unavailable_reason)
    if extended:
        register("rnn_ext", device_type, _rnn_ext, priority={device_type: priority},
                 unavailable_reason=unavailable_reason)
