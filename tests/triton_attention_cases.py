"""Cases for the Triton attention kernels (triton_kernels/attention.py) against
the float64 reference; collected through tests/test_triton_attention.py.

On a CPU-only machine they run on CPU tensors under the Triton interpreter,
which must be switched on (TRITON_INTERPRET=1) before triton is first imported:
triton.language's own helpers (tl.max, tl.sum, ...) are decorated then.
"""
import os

import pytest
import torch

import rnnkernels as rk
from rnnkernels.backends import triton_attention
from rnnkernels.check import TOLERANCE, AttentionCase, relative_error, run_attention_case

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"

# Small shapes (the interpreter runs every program in numpy): blocks are 16 on
# CPU, so 20 and 37 steps cover several query and key blocks and ragged edges.
CASES = {
    "3d": AttentionCase(batch=2, q_steps=3, k_steps=5, dim=8, v_dim=8),
    "lengths-0-and-Tk-causal": AttentionCase(batch=3, heads=2, q_steps=20, k_steps=37, dim=33, v_dim=20,
                                             lengths=[0, 37, 11], causal=True),
    "causal-Tq>Tk": AttentionCase(batch=3, q_steps=37, k_steps=20, dim=5, v_dim=3, lengths=[0, 20, 11],
                                  causal=True, scale=1.0),
    "decode-split-keys": AttentionCase(batch=2, heads=2, q_steps=1, k_steps=150, dim=12, v_dim=7,
                                       lengths=[5, 150]),
    "decode-empty-row": AttentionCase(batch=2, q_steps=1, k_steps=70, dim=12, v_dim=8, lengths=[0, 70], causal=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_matches_reference(name, seed):
    case = CASES[name]
    case.dtype, case.device = torch.float32, DEVICE
    errors = run_attention_case(case, "triton", seed=seed)
    assert max(errors.values()) <= TOLERANCE[torch.float32], (case.describe(), seed, errors)


@pytest.mark.parametrize("name", ["lengths-0-and-Tk-causal", "decode-split-keys"])
def test_float16_matches_reference(name, seed):
    case = CASES[name]
    case.dtype, case.device = torch.float16, DEVICE
    errors = run_attention_case(case, "triton", seed=seed)
    assert max(errors.values()) <= TOLERANCE[torch.float16], (case.describe(), seed, errors)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_on_gpu(name, seed):
    # Not under the interpreter: Triton 3.9's interpreter computes bf16 tl.dot wrongly.
    case = CASES[name]
    case.dtype, case.device = torch.bfloat16, "cuda"
    errors = run_attention_case(case, "triton", seed=seed)
    assert max(errors.values()) <= TOLERANCE[torch.bfloat16], (case.describe(), seed, errors)


def test_gradient_through_weights(seed):
    q, k, v = (torch.randn(2, 2, 18, 6, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([0, 13])
    g_ctx, g_w = torch.randn(2, 2, 18, 6, dtype=torch.float64), torch.randn(2, 2, 18, 18, dtype=torch.float64)

    def grads(backend, dtype, device):
        leaves = [t.to(dtype=dtype, device=device).requires_grad_() for t in (q, k, v)]
        ctx, w = rk.dot_product_attention(*leaves, key_lengths=lengths, causal=True, return_weights=True,
                                          backend=backend)
        loss = (ctx * g_ctx.to(dtype=dtype, device=device)).sum() + (w * g_w.to(dtype=dtype, device=device)).sum()
        loss.backward()
        return [t.grad for t in leaves]

    for ours, ref in zip(grads("triton", torch.float32, DEVICE), grads("reference", torch.float64, "cpu")):
        assert relative_error(ours, ref) <= TOLERANCE[torch.float32]


def test_opcheck():
    q, k = torch.randn(2, 1, 17, 5, device=DEVICE), torch.randn(2, 1, 19, 5, device=DEVICE)
    v = torch.randn(2, 1, 19, 3, device=DEVICE)
    lengths = torch.tensor([0, 19], device=DEVICE)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), lengths, True, 0.5, True)
    torch.library.opcheck(triton_attention._forward_op, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_traces_the_op():
    q, k, v = (torch.randn(2, 17, 8, device=DEVICE, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([17, 4])

    def fn(q, k, v):
        return rk.dot_product_attention(q, k, v, key_lengths=lengths, backend="triton")

    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v)
    assert relative_error(out, fn(q, k, v)) <= 1e-6


def test_feature_dims_over_256_are_rejected():
    q = torch.randn(1, 2, 257, device=DEVICE)
    with pytest.raises(ValueError, match="up to 256"):
        rk.dot_product_attention(q, q, q, backend="triton")


def test_float64_is_unsupported_with_a_clear_error():
    q = torch.randn(1, 2, 8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(rk.BackendUnavailableError, match="float64"):
        rk.dot_product_attention(q, q, q, backend="triton")


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = rk.backends.unavailable_reason("triton", "cpu", "attention", torch.float32)
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert rk.backends.unavailable_reason("triton", "cpu", "attention", torch.float32) is None
