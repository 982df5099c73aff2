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

Padding never reaches a result: the key and value rows at positions >=
key_lengths[b] may hold anything (NaN, Inf, torch.empty's garbage) and still
no output, weight or gradient sees them, and their own gradients are zero, as
if the keys were absent (as with a PackedSequence). Every backend follows this
rule. Keys hidden only by `causal` are real keys that later queries see: they
must be finite, like every key within key_lengths (a NaN or Inf there may
reach the queries it is hidden from).
"""
import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import backends
from .functional import check_range


ARGUMENT_NAMES = ("query", "key", "value", "key_lengths")


def check_inputs(query: Tensor, key: Tensor, value: Tensor, key_lengths: Optional[Tensor],
                 names: Sequence[str] = ARGUMENT_NAMES) -> Optional[Tensor]:
    """Raises a clear error for bad attention inputs, naming each argument by
    `names` (a caller such as rk.nn.Attention passes its own); returns
    key_lengths as an int64 tensor, or None. Runs before any kernel, and holds
    under torch.compile too (the length range becomes a graph assertion)."""
    q_name, k_name, v_name, len_name = names
    for name, t in ((q_name, query), (k_name, key), (v_name, value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must be 3-D (B, T, D) or 4-D (B, H, T, D), got {t.dim()}-D")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(f"{q_name}, {k_name} and {v_name} must all be 3-D or all 4-D, got {query.dim()}-D, "
                         f"{key.dim()}-D, {value.dim()}-D")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"{q_name}, {k_name} and {v_name} must share a dtype, got {query.dtype}, {key.dtype}, "
                        f"{value.dtype}")
    if key.device != query.device or value.device != query.device:
        raise ValueError(f"{q_name}, {k_name} and {v_name} must be on one device, got {query.device}, "
                         f"{key.device}, {value.device}")
    lead = query.shape[:-2]
    if key.shape[:-2] != lead or value.shape[:-2] != lead:
        raise ValueError(
            f"{q_name}, {k_name} and {v_name} must agree on (batch[, heads]): got {tuple(lead)}, "
            f"{tuple(key.shape[:-2])}, {tuple(value.shape[:-2])}"
        )
    if query.shape[-1] == 0:
        raise ValueError(f"{q_name} and {k_name} need a feature dim D >= 1, got {q_name} of shape "
                         f"{tuple(query.shape)}")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"{k_name}'s last dim must equal {q_name}'s ({query.shape[-1]}), got {key.shape[-1]}")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(f"{v_name} must have as many steps as {k_name} ({key.shape[-2]}), got {value.shape[-2]}")
    if key_lengths is None:
        return None
    if not isinstance(key_lengths, Tensor):
        key_lengths = torch.as_tensor(key_lengths)
    if key_lengths.is_floating_point() or key_lengths.is_complex() or key_lengths.dtype == torch.bool:
        raise TypeError(f"{len_name} must be an integer tensor, got {key_lengths.dtype}")
    batch, steps = query.shape[0], key.shape[-2]
    if key_lengths.shape != (batch,):
        raise ValueError(f"{len_name} must have shape ({batch},) (one length per sequence), got "
                         f"{tuple(key_lengths.shape)}")
    if key_lengths.device.type not in ("cpu", query.device.type):
        raise ValueError(f"{len_name} must be on the CPU or on {query.device}, got {key_lengths.device}")
    key_lengths = key_lengths.to(torch.int64)
    check_range(len_name, key_lengths, steps, f"the steps of {k_name}")
    return key_lengths


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
    if key_lengths is not None:
        # Padded key and value rows are zeroed before they enter: a zero
        # weight times a NaN value (or a NaN score's gradient) would be NaN.
        padding = (torch.arange(key.shape[-2], device=key.device) >= key_lengths.to(key.device)[:, None])
        padding = padding[:, None, :, None]  # (B, 1, Tk, 1)
        key, value = key.masked_fill(padding, 0), value.masked_fill(padding, 0)
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
    key_lengths = check_inputs(query, key, value, key_lengths)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number (or None for 1/sqrt(D)), got {scale!r}")
    three_d = query.dim() == 3
    if three_d:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    _, fn = backends.resolve(backend, query.device, "attention", query.dtype)
    context, weights = fn(query, key, value, key_lengths, causal, float(scale), return_weights)
    if three_d:
        context = context.squeeze(1)
        weights = weights.squeeze(1) if weights is not None else None
    return (context, weights) if return_weights else context
