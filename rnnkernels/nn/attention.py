"""Attention modules built on rnnkernels.dot_product_attention.

DotProductAttention: the function as a module (scale, causal and backend fixed
at construction).

Attention: Luong et al. (2015) global attention for encoder-decoder models.
For decoder states h (B, Tq, Dq) and encoder states s (B, Tk, Dk):

    score(h, s) = h . s          score="dot"      (needs Dq == Dk)
    score(h, s) = h . (W_a s)    score="general"  (W_a: Dk -> Dq, learned)
    a = softmax over the source positions that exist (memory_lengths)
    c = sum_j a_j s_j
    output = tanh(W_c [c; h])    (Dk + Dq -> Dq)

All Tq decoder steps go through one batched attention call; a decoding loop
calls it with Tq = 1 and can precompute W_a s once with `keys(memory)`.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from ..attention import check_inputs, dot_product_attention


class DotProductAttention(nn.Module):
    """softmax(q k^T * scale) v with per-sequence key lengths; see rnnkernels.dot_product_attention."""

    def __init__(self, scale: Optional[float] = None, causal: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.scale = scale
        self.causal = causal
        self.backend = backend

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_lengths: Optional[Tensor] = None,
                return_weights: bool = False):
        return dot_product_attention(query, key, value, key_lengths=key_lengths, causal=self.causal,
                                     scale=self.scale, return_weights=return_weights, backend=self.backend)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, causal={self.causal}, backend={self.backend!r}"


class Attention(nn.Module):
    """Luong global attention with output combination tanh(W_c [c; h]).

    forward(query (B, Tq, Dq) or (B, Dq), memory (B, Tk, Dk), memory_lengths (B,) or None,
            keys=None, return_weights=False) -> (output like query, weights (B, Tq, Tk) or (B, Tk), or None)
    """

    SCORES = ("dot", "general")

    def __init__(self, query_size: int, memory_size: Optional[int] = None, score: str = "general",
                 backend: Optional[str] = None):
        super().__init__()
        memory_size = query_size if memory_size is None else memory_size
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {self.SCORES}, got {score!r}")
        if score == "dot" and memory_size != query_size:
            raise ValueError(
                f'score="dot" needs memory_size == query_size, got {memory_size} and {query_size}; use score="general"'
            )
        self.query_size, self.memory_size, self.score, self.backend = query_size, memory_size, score, backend
        self.key_proj = nn.Linear(memory_size, query_size, bias=False) if score == "general" else None  # W_a
        self.combine = nn.Linear(memory_size + query_size, query_size, bias=False)  # W_c

    def keys(self, memory: Tensor) -> Tensor:
        """The keys the decoder state is scored against: W_a s (general) or s (dot), (B, Tk, Dq)."""
        return memory if self.key_proj is None else self.key_proj(memory)

    def forward(self, query: Tensor, memory: Tensor, memory_lengths: Optional[Tensor] = None,
                keys: Optional[Tensor] = None, return_weights: bool = False):
        for name, t in (("query", query), ("memory", memory), ("keys", keys)):
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        one_step = query.dim() == 2
        if one_step:
            query = query.unsqueeze(1)
        if query.dim() != 3 or query.shape[-1] != self.query_size:
            raise ValueError(f"query must be (B, Tq, {self.query_size}) or (B, {self.query_size}), got {tuple(query.shape)}")
        if memory.dim() != 3 or memory.shape[-1] != self.memory_size:
            raise ValueError(f"memory must be (B, Tk, {self.memory_size}), got {tuple(memory.shape)}")
        if keys is None:
            keys = self.keys(memory)
        elif tuple(keys.shape) != (*memory.shape[:2], self.query_size):
            raise ValueError(f"keys must be (B, Tk, {self.query_size}) like keys(memory), got {tuple(keys.shape)}")
        # Under autocast the projections come out in half precision while the recurrent
        # outputs may not: attend in the widest of the three dtypes.
        dtype = torch.promote_types(torch.promote_types(query.dtype, keys.dtype), memory.dtype)
        query, keys, memory = query.to(dtype), keys.to(dtype), memory.to(dtype)
        # Every error names this module's arguments, not dot_product_attention's.
        memory_lengths = check_inputs(query, keys, memory, memory_lengths,
                                      names=("query", "keys", "memory", "memory_lengths"))
        # Luong scores are plain dot products: scale 1.
        result = dot_product_attention(query, keys, memory, key_lengths=memory_lengths, scale=1.0,
                                       return_weights=return_weights, backend=self.backend)
        context, weights = result if return_weights else (result, None)
        output = torch.tanh(self.combine(torch.cat([context, query], dim=-1)))  # (B, Tq, Dq)
        if one_step:
            output = output.squeeze(1)
            weights = weights.squeeze(1) if weights is not None else None
        return output, weights

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, memory_size={self.memory_size}, score={self.score!r}"
