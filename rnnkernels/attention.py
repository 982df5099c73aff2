"""Batched dot-product attention with per-sequence key lengths.

    context = dot_product_attention(query, key, value, key_lengths=None,
                                    causal=False, scale=None, return_weights=False)

query (B, Tq, D) or (B, H, Tq, D); key (B, Tk, D) / (B, H, Tk, D); value
(B, Tk, Dv) / (B, H, Tk, Dv); key_lengths (B,) integers: keys at positions
>= key_lengths[b] get zero weight. A query whose every key is masked (length
0, or causal with nothing before it) gets a zero context, zero weights and
zero gradients, never NaN. `causal` hides key j from query i when
j > i + (Tk - Tq): bottom-right aligned, as in FlashAttention >= 2.1, so the
last query sees every key (with Tq == Tk, the usual j > i). Default scale 1/sqrt(D); scale=1.0 is
the plain dot product of Luong attention. With return_weights=True it returns
(context, weights (.., Tq, Tk)) for alignment plots.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from . import backends


def _check(query: Tensor, key: Tensor, value: Tensor, key_lengths: Optional[Tensor]) -> Optional[Tensor]:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must be 3-D (B, T, D) or 4-D (B, H, T, D), got {t.dim()}-D")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(
            f"query, key and value must all be 3-D or all 4-D, got {query.dim()}-D, {key.dim()}-D, {value.dim()}-D"
        )
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    if key.device != query.device or value.device != query.device:
        raise ValueError(f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}")
    lead = query.shape[:-2]
    if key.shape[:-2] != lead or value.shape[:-2] != lead:
        raise ValueError(
            f"query, key and value must agree on (batch[, heads]): got {tuple(lead)}, "
            f"{tuple(key.shape[:-2])}, {tuple(value.shape[:-2])}"
        )
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key's last dim must equal query's ({query.shape[-1]}), got {key.shape[-1]}")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(f"value must have as many steps as key ({key.shape[-2]}), got {value.shape[-2]}")
    if key_lengths is None:
        return None
    if not isinstance(key_lengths, Tensor):
        key_lengths = torch.as_tensor(key_lengths)
    if key_lengths.is_floating_point() or key_lengths.is_complex() or key_lengths.dtype == torch.bool:
        raise TypeError(f"key_lengths must be an integer tensor, got {key_lengths.dtype}")
    batch, steps = query.shape[0], key.shape[-2]
    if key_lengths.shape != (batch,):
        raise ValueError(f"key_lengths must have shape ({batch},), got {tuple(key_lengths.shape)}")
    if key_lengths.device.type not in ("cpu", query.device.type):
        raise ValueError(f"key_lengths must be on the CPU or on {query.device}, got {key_lengths.device}")
    if batch > 0 and not torch.compiler.is_compiling():
        low, high = int(key_lengths.min()), int(key_lengths.max())
        if low < 0 or high > steps:
            raise ValueError(f"key_lengths must lie in [0, {steps}] (the key steps), got min {low}, max {high}")
    return key_lengths.to(torch.int64)


def key_mask(key_lengths: Optional[Tensor], causal: bool, tq: int, tk: int, device) -> Optional[Tensor]:
    """Boolean (B or 1, 1, Tq, Tk) mask, True where a key is hidden from a query."""
    mask = None
    cols = torch.arange(tk, device=device)
    if key_lengths is not None:
        mask = (cols >= key_lengths.to(device)[:, None])[:, None, None, :]
    if causal:
        rows = torch.arange(tq, device=device)
        causal_mask = (cols[None, :] > rows[:, None] + (tk - tq))[None, None]
        mask = causal_mask if mask is None else mask | causal_mask
    return mask


def reference_attention(query, key, value, key_lengths, causal, scale, return_weights):
    """Plain PyTorch on 4-D inputs: matmul, masked softmax, matmul."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    mask = key_mask(key_lengths, causal, query.shape[-2], key.shape[-2], query.device)
    if mask is None:
        weights = torch.softmax(scores, dim=-1)
    else:
        # finfo.min rather than -inf keeps a fully masked row finite (uniform),
        # and multiplying by the keep mask then makes it exactly zero, with a
        # zero (not NaN) gradient.
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * (~mask).to(scores.dtype)
    context = torch.matmul(weights, value)
    return context, (weights if return_weights else None)


def dot_product_attention(query: Tensor, key: Tensor, value: Tensor, key_lengths: Optional[Tensor] = None,
                          causal: bool = False, scale: Optional[float] = None, return_weights: bool = False,
                          backend: Optional[str] = None):
    """See the module docstring. `backend` picks the implementation like the RNN layers."""
    key_lengths = _check(query, key, value, key_lengths)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    three_d = query.dim() == 3
    if three_d:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    _, fn = backends.resolve(backend, query.device, "attention", query.dtype)
    context, weights = fn(query, key, value, key_lengths, causal, float(scale), return_weights)
    if three_d:
        context = context.squeeze(1)
        weights = weights.squeeze(1) if weights is not None else None
    return (context, weights) if return_weights else context
