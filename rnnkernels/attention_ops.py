"""Autograd formulas and fake (meta) kernels of the compiled attention ops.

torch.ops.rnnkernels.attention_forward(query, key, value, key_lengths, causal, scale, return_weights)
    -> (context (B, H, Tq, Dv), lse (B, H, Tq), weights (B, H, Tq, Tk) or (0,))
torch.ops.rnnkernels.attention_backward(grad_context, grad_weights, query, key, value, context, lse,
                                        weights, key_lengths, causal, scale) -> (grad_q, grad_k, grad_v)

Schemas: csrc/attention_ops.cpp; CPU kernels: csrc/cpu/attention.cpp. Importing
this module loads the extension and registers the Python side once.
"""
import torch

from ._ext import load_error

_registered = False


def _forward_fake(query, key, value, key_lengths, causal, scale, return_weights):
    b, h, tq, _ = query.shape
    tk, dv = key.shape[2], value.shape[3]
    context = query.new_empty((b, h, tq, dv))
    lse = query.new_empty((b, h, tq))
    weights = query.new_empty((b, h, tq, tk)) if return_weights else query.new_empty((0,))
    return context, lse, weights


def _backward_fake(grad_context, grad_weights, query, key, value, context, lse, weights, key_lengths, causal, scale):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def setup_context(ctx, inputs, output):
    """Autograd context of an attention forward op with this module's schema (the cpu and triton ops)."""
    query, key, value, key_lengths, causal, scale, return_weights = inputs
    context, lse, weights = output
    ctx.save_for_backward(query, key, value, key_lengths, context, lse, weights if return_weights else None)
    ctx.causal, ctx.scale, ctx.return_weights = causal, scale, return_weights
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # unused outputs give None: no zero (B, H, Tq, Tk) gradient


def backward_formula(backward_op):
    """The autograd backward of an attention forward op, given its backward op (same schema as here)."""

    def backward(ctx, grad_context, grad_lse, grad_weights):
        query, key, value, key_lengths, context, lse, weights = ctx.saved_tensors
        if grad_context is None:
            grad_context = torch.zeros_like(context)
        if not ctx.return_weights:
            grad_weights = None
        grad_query, grad_key, grad_value = backward_op(grad_context, grad_weights, query, key, value, context, lse,
                                                       weights, key_lengths, ctx.causal, ctx.scale)
        return grad_query, grad_key, grad_value, None, None, None, None

    return backward


def register() -> None:
    """Registers fake kernels and autograd for the attention ops (needs rnnkernels._C)."""
    global _registered
    if _registered:
        return
    error = load_error()
    if error is not None:
        raise RuntimeError(error)
    torch.library.register_fake("rnnkernels::attention_forward")(_forward_fake)
    torch.library.register_fake("rnnkernels::attention_backward")(_backward_fake)
    torch.library.register_autograd("rnnkernels::attention_forward",
                                    backward_formula(torch.ops.rnnkernels.attention_backward),
                                    setup_context=setup_context)
    _registered = True


def cpu_attention(query, key, value, key_lengths, causal, scale, return_weights):
    """The `cpu` backend's attention (contract: rnnkernels.attention.reference_attention);
    rnnkernels.backends.cpu_attention has registered the op's Python side at import."""
    context, _, weights = torch.ops.rnnkernels.attention_forward(query, key, value, key_lengths, causal, scale,
                                                                 return_weights)
    return context, (weights if return_weights else None)


# At import (rnnkernels imports every backend), not at the first call: a first
# call under torch.compile cannot trace torch.library's registration.
if load_error() is None:
    register()
