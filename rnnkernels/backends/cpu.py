"""The `cpu` backend: the compiled C++ kernels (csrc/rnn_layer.cpp,
csrc/cpu/) for CPU tensors in float32, float64 and bfloat16."""
from ._compiled import register_rnn

register_rnn("cpu", priority=10, extended=True)
