"""The `cuda` backend: the compiled CUDA kernels (csrc/cuda/) for CUDA tensors
in float32, float64 and bfloat16.

The layer loop is the one of the cpu backend (csrc/rnn_layer.cpp, cuBLAS GEMMs
through ATen on the current stream) with fused CUDA pointwise step kernels; an
lstm or gru forward with batch <= 32 whose W_hh fits on chip runs as one
persistent cooperative kernel instead (selection: csrc/cuda/rnn_cuda.cpp;
RNNKERNELS_CUDA_PERSISTENT=0 / 1 forces the step loop / the persistent kernel).
The extended op "rnn_ext" (LayerNorm LSTM/GRU, zoneout, every step's cell
state) runs the same step loop with extended step kernels (LayerNorm's row
reductions inside the per-step pass, one thread block per batch row;
csrc/cuda/pointwise_ext_kernels.cu); it has no persistent kernel.
"""
from .. import _ext
from ._compiled import LOAD_ERROR, register_rnn

_NOT_BUILT_WITH_CUDA = (
    "the rnnkernels extension was built without CUDA; rebuild it on a machine with a CUDA toolkit "
    "and a CUDA build of torch (pip install --no-build-isolation -e .)"
)

register_rnn("cuda", priority=30,
             build_error=None if LOAD_ERROR is not None or _ext.built_with("cuda") else _NOT_BUILT_WITH_CUDA,
             extended=True)
