"""The `triton` backend for attention: triton_kernels/attention.py behind torch
custom ops with autograd and fake kernels, so torch.compile traces them.

rnnkernels::triton_attention_forward(q, k, v, key_lengths, causal, scale, return_weights)
    -> (context, lse (B, H, Tq) float32 base 2, weights (B, H, Tq, Tk) or (0,))
rnnkernels::triton_attention_backward(grad_context, grad_weights, q, k, v, context, lse, weights,
                                      key_lengths, causal, scale) -> (grad_q, grad_k, grad_v)

Runs on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1 (tests).
The kernel module is imported on first use, because Triton decides at
decoration time whether kernels are interpreted.
"""
import importlib
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..attention_ops import backward_formula, setup_context
from . import register
from .triton import TRITON_MISSING

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNELS = "rnnkernels.triton_kernels.attention"


def kernels():
    return importlib.import_module(_KERNELS)


def _unavailable_reason(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[str]:
    if TRITON_MISSING is not None:  # decided at import: never an import inside traced code
        return TRITON_MISSING
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the triton kernels run on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1, for tests)"
    if device.type not in ("cuda", "cpu"):
        return f"the triton kernels run on CUDA tensors, not {device.type}"
    if dtype is not None and dtype not in _DTYPES:
        return f"the triton attention kernels support float32, float16 and bfloat16, not {str(dtype).replace('torch.', '')}"
    return None


@torch.library.custom_op("rnnkernels::triton_attention_forward", mutates_args=())
def _forward_op(query: Tensor, key: Tensor, value: Tensor, key_lengths: Optional[Tensor], causal: bool,
                scale: float, return_weights: bool) -> Tuple[Tensor, Tensor, Tensor]:
    k = kernels()
    context, lse = k.forward(query, key, value, key_lengths, causal, scale)
    weights = (k.weights(query, key, lse, key_lengths, causal, scale) if return_weights
               else query.new_empty((0,)))
    return context, lse, weights


@_forward_op.register_fake
def _forward_fake(query, key, value, key_lengths, causal, scale, return_weights):
    b, h, tq, _ = query.shape
    tk, dv = key.shape[2], value.shape[3]
    weights = query.new_empty((b, h, tq, tk)) if return_weights else query.new_empty((0,))
    return query.new_empty((b, h, tq, dv)), query.new_empty((b, h, tq), dtype=torch.float32), weights


@torch.library.custom_op("rnnkernels::triton_attention_backward", mutates_args=())
def _backward_op(grad_context: Tensor, grad_weights: Optional[Tensor], query: Tensor, key: Tensor, value: Tensor,
                 context: Tensor, lse: Tensor, weights: Optional[Tensor], key_lengths: Optional[Tensor],
                 causal: bool, scale: float) -> List[Tensor]:
    return list(kernels().backward(grad_context.contiguous(), grad_weights, query, key, value, context, lse,
                                   weights, key_lengths, causal, scale))


@_backward_op.register_fake
def _backward_fake(grad_context, grad_weights, query, key, value, context, lse, weights, key_lengths, causal, scale):
    return [torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)]


_forward_op.register_autograd(backward_formula(_backward_op), setup_context=setup_context)


def triton_attention(query, key, value, key_lengths, causal, scale, return_weights):
    """The `triton` backend's attention (contract: rnnkernels.attention.reference_attention)."""
    for name, t in (("query", query), ("value", value)):
        if t.shape[-1] > 256:
            raise ValueError(f"the triton attention kernels take {name} feature dims up to 256, got {t.shape[-1]}")
    if query.dtype not in _DTYPES:
        raise TypeError(f"the triton attention kernels support float32, float16 and bfloat16, not {query.dtype}")
    if key_lengths is not None:
        key_lengths = key_lengths.to(device=query.device, dtype=torch.int64).contiguous()
    context, _, weights = _forward_op(query.contiguous(), key.contiguous(), value.contiguous(), key_lengths,
                                      causal, scale, return_weights)
    return context, (weights if return_weights else None)


register("attention", "triton", triton_attention, priority={"cuda": 10, "cpu": -1},
         unavailable_reason=_unavailable_reason)
