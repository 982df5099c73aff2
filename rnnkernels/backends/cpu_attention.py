"""The `cpu` backend for attention: fused C++ flash-style kernels (csrc/cpu/attention.cpp)."""
from .. import _ext
from ..attention_ops import cpu_attention, register as register_op
from . import register

# Once, here: torch.compile traces backend selection, and neither registering
# the ops nor lru_cache'd calls belong in traced code.
LOAD_ERROR = _ext.load_error()
if LOAD_ERROR is None:
    register_op()

_DTYPES = ("float32", "float64")


def _unavailable_reason(device, dtype):
    if LOAD_ERROR is not None:
        return LOAD_ERROR
    if device.type != "cpu":
        return f"the cpu attention kernel runs on CPU tensors, not {device.type}"
    if dtype is not None and str(dtype).replace("torch.", "") not in _DTYPES:
        return f"the cpu attention kernel supports float32 and float64, not {str(dtype).replace('torch.', '')}"
    return None


register("attention", "cpu", cpu_attention, priority={"cpu": 10}, unavailable_reason=_unavailable_reason)
