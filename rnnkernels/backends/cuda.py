"""The `cuda` backend: the compiled CUDA kernels (csrc/cuda/) for CUDA tensors
in float32, float64 and bfloat16.

The layer loop is the one of the cpu backend (csrc/rnn_layer.cpp, cuBLAS GEMMs
through ATen on the current stream) with fused CUDA pointwise step kernels; an
lstm or gru forward with batch <= 32 whose W_hh fits on chip runs as one
persistent cooperative kernel instead (selection: csrc/cuda/rnn_cuda.cpp;
RNNKERNELS_CUDA_PERSISTENT=0 / 1 forces the step loop / the persistent kernel).
"""
from typing import Optional

import torch

from .. import _ext
from . import register

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# Once here, not per call: torch.compile traces the checks below.
_LOAD_ERROR = _ext.load_error()
_BUILT_WITH_CUDA = _LOAD_ERROR is None and _ext.built_with("cuda")


def _unavailable_reason(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[str]:
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    if not _BUILT_WITH_CUDA:
        return ("the rnnkernels extension was built without CUDA; rebuild it on a machine with a CUDA toolkit "
                "and a CUDA build of torch (pip install --no-build-isolation -e .)")
    if device.type != "cuda":
        return f"the cuda backend runs on CUDA tensors only, got a {device.type} tensor"
    if dtype is not None and dtype not in DTYPES:
        return f"the cuda backend supports {', '.join(str(d) for d in DTYPES)}, got {dtype}"
    return None


if _LOAD_ERROR is None:
    from .. import rnn_ops  # registers the ops' autograd formulas and fake kernels


def _rnn(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    return rnn_ops.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)


register("rnn", "cuda", _rnn, priority={"cuda": 30}, unavailable_reason=_unavailable_reason)
