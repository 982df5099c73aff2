"""The fused CPU attention kernel (csrc/cpu/attention.cpp) against the float64 reference."""
import random

import pytest
import torch

import rnnkernels as rk
from rnnkernels import attention_ops
from rnnkernels.check import TOLERANCE, AttentionCase, random_attention_case, relative_error, run_attention_case


DTYPES = [torch.float64, torch.float32]

# Shapes chosen to hit every path: one and several query blocks (64 rows) and
# key blocks (128 keys), lengths 0 and Tk in one batch, causal with Tq < Tk and
# Tq > Tk (rows that see nothing), Tq = 1, feature dims that are not powers of two.
CASES = {
    "3d": AttentionCase(batch=2, q_steps=3, k_steps=5, dim=8, v_dim=8),
    "4d-heads": AttentionCase(batch=2, heads=3, q_steps=7, k_steps=9, dim=16, v_dim=4),
    "lengths-0-and-Tk": AttentionCase(batch=4, heads=2, q_steps=6, k_steps=11, dim=5, v_dim=7, lengths=[0, 11, 3, 1]),
    "causal-Tq<Tk": AttentionCase(batch=2, heads=2, q_steps=5, k_steps=12, dim=8, v_dim=6, causal=True),
    "causal-Tq>Tk": AttentionCase(batch=2, q_steps=12, k_steps=5, dim=8, v_dim=6, causal=True, lengths=[5, 2]),
    "decode-Tq1": AttentionCase(batch=3, heads=2, q_steps=1, k_steps=300, dim=24, v_dim=10, lengths=[300, 0, 129]),
    "odd-dims-blocks": AttentionCase(batch=3, heads=2, q_steps=70, k_steps=200, dim=33, v_dim=20,
                                     lengths=[0, 200, 77]),
    "causal-blocks": AttentionCase(batch=2, heads=1, q_steps=150, k_steps=140, dim=17, v_dim=9, causal=True,
                                   lengths=[140, 100]),
    "luong-scale-1": AttentionCase(batch=2, heads=2, q_steps=9, k_steps=13, dim=4, v_dim=3, lengths=[13, 6],
                                   scale=1.0),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype, seed):
    case = CASES[name]
    case.dtype = dtype
    errors = run_attention_case(case, "cpu", seed=seed)
    assert max(errors.values()) <= TOLERANCE[dtype], (case.describe(), seed, errors)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_configurations(dtype, seed):
    rng = random.Random(seed)
    for i in range(12):
        case = random_attention_case(rng, dtype=dtype)
        if dtype == torch.float32:
            # scale=1.0 with D up to 33 saturates the softmax; 1e-5 of the (then tiny) largest
            # gradient is out of reach of float32 itself: the float32 *reference* misses it on
            # about 1% of such draws. float64 covers these draws, and CASES has scale=1.0.
            case.scale = None
            case.dim = max(case.dim, 8)  # D=1 (scores q*k unscaled) likewise
        errors = run_attention_case(case, "cpu", seed=seed + i)
        assert max(errors.values()) <= TOLERANCE[dtype], (case.describe(), seed, errors)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_portable_gemm_without_blas(dtype, seed, monkeypatch):
    monkeypatch.setenv("RNNKERNELS_NO_BLAS", "1")
    case = CASES["odd-dims-blocks"]
    case.dtype = dtype
    errors = run_attention_case(case, "cpu", seed=seed)
    assert max(errors.values()) <= TOLERANCE[dtype], errors


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_through_weights(dtype, seed):
    """A loss on the returned weights (and the context) backpropagates like the reference."""
    q, k, v = (torch.randn(2, 2, 9, 6, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([0, 7])
    g_ctx, g_w = torch.randn(2, 2, 9, 6, dtype=torch.float64), torch.randn(2, 2, 9, 9, dtype=torch.float64)

    def grads(backend, dt):
        leaves = [t.to(dt).requires_grad_() for t in (q, k, v)]
        ctx, w = rk.dot_product_attention(*leaves, key_lengths=lengths, causal=True, return_weights=True,
                                          backend=backend)
        ((ctx * g_ctx.to(dt)).sum() + (w * g_w.to(dt)).sum()).backward()
        return [t.grad for t in leaves]

    for ours, ref in zip(grads("cpu", dtype), grads("reference", torch.float64)):
        assert relative_error(ours, ref) <= TOLERANCE[dtype]


def test_fully_masked_rows_are_zero_never_nan():
    q, k, v = (torch.randn(3, 2, 4, 5, dtype=torch.float32, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([0, 4, 0])
    ctx, w = rk.dot_product_attention(q, k, v, key_lengths=lengths, return_weights=True, backend="cpu")
    (ctx.sum() + w.sum()).backward()
    assert torch.equal(ctx[0], torch.zeros_like(ctx[0])) and torch.equal(w[2], torch.zeros_like(w[2]))
    assert torch.equal(q.grad[0], torch.zeros_like(q.grad[0])) and torch.equal(k.grad[2], torch.zeros_like(k.grad[2]))
    for t in (ctx, w, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    assert ctx[1].abs().sum() > 0


def test_gradcheck_float64():
    attention_ops.register()
    lengths = torch.tensor([3, 0])
    q = torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 5, 2, dtype=torch.float64, requires_grad=True)
    for causal in (False, True):
        def fn(q, k, v):
            ctx, _, w = torch.ops.rnnkernels.attention_forward(q, k, v, lengths, causal, 0.7, True)
            return ctx, w
        assert torch.autograd.gradcheck(fn, (q, k, v))


def test_opcheck():
    attention_ops.register()
    q, k = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5)
    v = torch.randn(2, 3, 6, 7)
    for lengths, causal, weights in ((None, False, False), (torch.tensor([0, 6]), True, True)):
        args = (q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_(), lengths,
                causal, 0.5, weights)
        torch.library.opcheck(torch.ops.rnnkernels.attention_forward.default, args)


def test_torch_compile_traces_the_op():
    q, k, v = (torch.randn(2, 4, 8, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([4, 2])

    def fn(q, k, v):
        return rk.dot_product_attention(q, k, v, key_lengths=lengths, backend="cpu")

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out = compiled(q, k, v)
    assert relative_error(out, fn(q, k, v)) <= 1e-6
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_non_contiguous_inputs(seed):
    base = torch.randn(2, 7, 3, 8, dtype=torch.float64)
    q = base.transpose(1, 2)  # (2, 3, 7, 8), not contiguous
    k, v = base.transpose(1, 2).flip(2), base.transpose(1, 2)[..., :5]
    ours = rk.dot_product_attention(q, k, v, key_lengths=torch.tensor([7, 3]), backend="cpu")
    ref = rk.dot_product_attention(q, k, v, key_lengths=torch.tensor([7, 3]), backend="reference")
    assert relative_error(ours, ref) <= 1e-10


@pytest.mark.parametrize("make, match", [
    (lambda q, k, v: (q, k[..., :3], v, None), "key's last dim"),
    (lambda q, k, v: (q, k[:1], v[:1], None), r"agree on \(batch"),
    (lambda q, k, v: (q, k, v[:, :, :4], None), "as many steps as key"),
    (lambda q, k, v: (q, k, v, torch.tensor([-1, 2])), r"key_lengths must lie in \[0, 6\]"),
    (lambda q, k, v: (q, k, v, torch.tensor([7, 2])), r"key_lengths must lie in \[0, 6\]"),
    (lambda q, k, v: (q, k, v, torch.tensor([1, 2, 3])), r"key_lengths must have shape \(2,\)"),
    (lambda q, k, v: (q, k, v, torch.tensor([1.0, 2.0])), "key_lengths must be an integer tensor"),
    (lambda q, k, v: (q, k, v, torch.tensor([1, 2], device="meta")), "key_lengths must be on the CPU"),
    (lambda q, k, v: (q, k.double(), v, None), "share a dtype"),
])
def test_bad_input_is_rejected_before_the_kernel(make, match):
    q, k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 7)
    copies = [t.clone() for t in (q, k, v)]
    query, key, value, lengths = make(q, k, v)
    with pytest.raises((ValueError, TypeError), match=match):
        rk.dot_product_attention(query, key, value, key_lengths=lengths, backend="cpu")
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))


def test_unsupported_dtype_names_the_backend_and_dtype():
    q = torch.randn(2, 4, 8, dtype=torch.float16)
    with pytest.raises(rk.BackendUnavailableError, match="float16"):
        rk.dot_product_attention(q, q, q, backend="cpu")
    attention_ops.register()
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.rnnkernels.attention_forward(q[:, None], q[:, None], q[:, None], None, False, 1.0, False)


def test_op_checks_lengths_itself():
    attention_ops.register()
    q = torch.randn(2, 1, 3, 4)
    with pytest.raises(RuntimeError, match=r"key_lengths must lie in \[0, 3\]"):
        torch.ops.rnnkernels.attention_forward(q, q, q, torch.tensor([4, 1]), False, 1.0, False)
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.rnnkernels.attention_forward(q, q, q, torch.tensor([1, 1], dtype=torch.int32), False, 1.0, False)


def test_auto_picks_cpu_kernel():
    assert rk.backends.available("cpu", "attention", torch.float32)[0] == "cpu"
