"""The `cpu` backend: the compiled C++ kernels (csrc/rnn_layer.cpp,
csrc/cpu/) for CPU tensors in float32, float64 and bfloat16."""
from typing import Optional

import torch

from .. import _ext
from . import register

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_LOAD_ERROR = _ext.load_error()  # once here: torch.compile traces the checks below


def _unavailable_reason(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[str]:
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, got a {device.type} tensor"
    if dtype is not None and dtype not in DTYPES:
        return f"the cpu backend supports {', '.join(str(d) for d in DTYPES)}, got {dtype}"
    return None


if _LOAD_ERROR is None:
    from .. import rnn_ops  # registers the ops' autograd formulas and fake kernels


def _rnn(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    return rnn_ops.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)


register("rnn", "cpu", _rnn, priority={"cpu": 10}, unavailable_reason=_unavailable_reason)
