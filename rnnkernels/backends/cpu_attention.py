"""The `cpu` backend for attention: fused C++ flash-style kernels (csrc/cpu/attention.cpp)."""
from .. import _ext
from ..attention_ops import cpu_attention
from . import register

_DTYPES = ("float32", "float64")


def _unavailable_reason(device, dtype):
    error = _ext.load_error()
    if error is not None:
        return error
    if device.type != "cpu":
        return f"the cpu attention kernel runs on CPU tensors, not {device.type}"
    if dtype is not None and str(dtype).replace("torch.", "") not in _DTYPES:
        return f"the cpu attention kernel supports float32 and float64, not {str(dtype).replace('torch.', '')}"
    return None


register("attention", "cpu", cpu_attention, priority={"cpu": 10}, unavailable_reason=_unavailable_reason)
