"""The drop-in promise beyond plain forward/backward (issue 13's defects):
double backward, forward-mode AD and functorch, per-sample gradients,
autocast, dynamic quantization, TorchScript, torch.compile in a fresh process
with and without Triton, and `rnnkernels check --backend` that checks nothing.
Everything against torch.nn (same weights) or float64 numerics."""
import copy
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.utils._expanded_weights import ExpandedWeight
from torch.nn.utils._per_sample_grad import call_for_per_sample_grads

import rnnkernels as rk
from rnnkernels import check, cli, functional

HAVE_TRITON = rk.backends.triton.TRITON_MISSING is None  # an optional dependency
if HAVE_TRITON:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # Triton decides when its kernels are imported (see test_triton_rnn)
    try:
        from rnnkernels.triton_kernels import rnn as _triton_kernels  # noqa: F401
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous

LAYERS = [(nn.LSTM, rk.LSTM, {}), (nn.LSTM, rk.LSTM, {"proj_size": 2}), (nn.GRU, rk.GRU, {}),
          (nn.RNN, rk.RNN, {"nonlinearity": "tanh"}), (nn.RNN, rk.RNN, {"nonlinearity": "relu"})]
LAYER_IDS = ["lstm", "lstm-proj", "gru", "rnn_tanh", "rnn_relu"]


def twins(torch_cls, rk_cls, kwargs, dtype=torch.float64, **extra):
    reference = torch_cls(3, 4, **kwargs, **extra).to(dtype)
    ours = rk_cls(3, 4, **kwargs, **extra).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def flat(result):
    out, state = result
    return (out, *state) if isinstance(state, tuple) else (out, state)


# ----------------------------------------------------------- 1. double backward


def test_double_backward_of_the_issue_matches_torch(seed):
    reference, ours = twins(nn.LSTM, rk.LSTM, {})
    x = torch.rand(2, 1, 3, dtype=torch.double, requires_grad=True)
    results = []
    for m in (reference, ours):
        g, = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
        gg = torch.autograd.grad(g.sum(), [x, *m.parameters()])
        results.append((g, gg))
    torch.testing.assert_close(results[1], results[0])


def _layer_inputs(mode, proj):
    """Tiny float64 leaves of a bidirectional layer with lengths, h0 (and c0), proj_size."""
    T, B, I, H = 3, 2, 2, 2
    P = 1 if proj else H
    gates = rk.reference.GATES[mode] * H
    weights = []
    for _ in range(2):  # directions
        weights += [torch.randn(gates, I), torch.randn(gates, P), torch.randn(gates), torch.randn(gates)]
        if proj:
            weights.append(torch.randn(P, H))
    weights = [(w / 2).double().requires_grad_() for w in weights]
    x = torch.randn(T, B, I, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, B, P, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(2, B, H, dtype=torch.double, requires_grad=True) if mode == "lstm" else None
    return x, h0, c0, weights, torch.tensor([3, 1])


@pytest.mark.parametrize("mode, proj", [("lstm", False), ("lstm", True), ("gru", False), ("rnn_tanh", False),
                                        ("rnn_relu", False)])
def test_gradgradcheck_with_lengths_reverse_proj_h0(mode, proj, seed):
    x, h0, c0, weights, lengths = _layer_inputs(mode, proj)
    leaves = [x, h0] + ([c0] if c0 is not None else []) + weights

    def run(x, h0, *rest):
        c0, ws = (rest[0], rest[1:]) if mode == "lstm" else (None, rest)
        hx = (h0, c0) if mode == "lstm" else h0
        return flat(functional.rnn_forward(mode, x, hx, list(ws), bidirectional=True, proj_size=int(proj),
                                           lengths=lengths, backend="cpu"))

    assert torch.autograd.gradgradcheck(run, leaves, check_batched_grad=False)


@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton (an optional dependency)")
def test_triton_double_backward_matches_reference(monkeypatch, seed):
    """The triton backend (interpreted, float32) gives the reference's second derivatives."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, h0, c0, weights, lengths = _layer_inputs("lstm", True)
    results = []
    for backend in ("triton", "reference"):
        leaves = [t.detach().float().requires_grad_() for t in [x, h0, c0] + weights]
        xi, hi, ci, *ws = leaves
        out, _ = functional.rnn_forward("lstm", xi, (hi, ci), ws, bidirectional=True, proj_size=1, lengths=lengths,
                                        backend=backend)
        g = torch.autograd.grad(out.pow(2).sum(), [xi, *ws], create_graph=True)
        penalty = sum(gi.pow(2).sum() for gi in g)
        results.append(torch.autograd.grad(penalty, leaves))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def _carried_state_penalty(module, chunks, hx):
    """A gradient penalty over truncated BPTT that keeps the graph: the
    second chunk starts from the first's final state, made with the same
    weights. Returns the first-order weight gradients and the penalty's."""
    out, hx = module(chunks[0], hx)
    out2, _ = module(chunks[1], hx)
    weights = list(module.parameters())
    grads = torch.autograd.grad(out.sum() + out2.square().sum(), weights, create_graph=True)
    return grads, torch.autograd.grad(sum(g.square().sum() for g in grads), weights)


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_double_backward_through_a_carried_state(torch_cls, rk_cls, kwargs, seed):
    """create_graph's recompute must ask for the gradients of its own inputs
    only: asked of the saved state itself, autograd.grad also walked back into
    the chunk that made it, and added that chunk's weight gradients again."""
    reference, ours = twins(torch_cls, rk_cls, kwargs)
    chunks = torch.randn(2, 3, 2, 3, dtype=torch.double)
    torch.testing.assert_close(_carried_state_penalty(ours, chunks, None),
                               _carried_state_penalty(reference, chunks, None), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rk_cls", [rk.LayerNormLSTM, rk.LayerNormGRU])
def test_layer_norm_double_backward_through_a_carried_state(rk_cls, seed):
    """The same for the extended op (rnn_ext_ops), against the reference backend."""
    ours = rk_cls(3, 4, backend="cpu").double()
    reference = copy.deepcopy(ours)
    reference.backend = "reference"
    chunks = torch.randn(2, 3, 2, 3, dtype=torch.double)
    torch.testing.assert_close(_carried_state_penalty(ours, chunks, None),
                               _carried_state_penalty(reference, chunks, None), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- 2. forward-mode AD, functorch


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_forward_mode_ad_matches_torch(torch_cls, rk_cls, kwargs, seed):
    reference, ours = twins(torch_cls, rk_cls, kwargs, num_layers=2, bidirectional=True)
    x, v = torch.randn(4, 2, 3, dtype=torch.double), torch.randn(4, 2, 3, dtype=torch.double)
    expected = torch.func.jvp(lambda t: flat(reference(t)), (x,), (v,))
    torch.testing.assert_close(torch.func.jvp(lambda t: flat(ours(t)), (x,), (v,)), expected)
    with fwAD.dual_level():
        outputs = flat(ours(fwAD.make_dual(x, v)))
        tangents = tuple(fwAD.unpack_dual(o).tangent for o in outputs)
    torch.testing.assert_close(tangents, expected[1])


def test_forward_mode_ad_with_lengths_matches_finite_differences(seed):
    m = rk.GRU(3, 4, bidirectional=True).double()
    lengths = torch.tensor([4, 2, 3])
    x, v = torch.randn(4, 3, 3, dtype=torch.double), torch.randn(4, 3, 3, dtype=torch.double)
    _, tangents = torch.func.jvp(lambda t: flat(m(t, lengths=lengths)), (x,), (v,))
    eps = 1e-6
    numeric = [(a - b) / (2 * eps) for a, b in zip(flat(m(x + eps * v, lengths=lengths)),
                                                  flat(m(x - eps * v, lengths=lengths)))]
    torch.testing.assert_close(list(tangents), numeric, rtol=1e-6, atol=1e-7)


def test_functorch_grad_and_vmap_match_autograd(seed):
    m = rk.LSTM(3, 4).double()
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=torch.double)

    def loss(p, inp):
        return torch.func.functional_call(m, p, (inp,))[0].pow(2).sum()

    grads = torch.func.grad(loss)(params, x)
    expected = torch.autograd.grad(m(x)[0].pow(2).sum(), list(m.parameters()))
    torch.testing.assert_close([grads[k] for k, _ in m.named_parameters()], list(expected))
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1))(params, x.unsqueeze(2))
    for i in range(2):
        one = torch.autograd.grad(m(x[:, i:i + 1])[0].pow(2).sum(), list(m.parameters()))
        torch.testing.assert_close([per_sample[k][i] for k, _ in m.named_parameters()], list(one))


# ------------------------------------------------------------ 3. per-sample gradients


def test_per_sample_grads_with_lengths(seed):
    m = rk.GRU(3, 4, batch_first=True).double()
    x = torch.randn(3, 5, 3, dtype=torch.double)
    lengths = torch.tensor([5, 4, 2])

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = m

        def forward(self, inp, lengths):
            return self.rnn(inp, lengths=lengths)[0]

    model = Head()
    call_for_per_sample_grads(model, batch_size=3, loss_reduction="sum")(x, lengths).pow(2).sum().backward()
    for i in range(3):
        one = torch.autograd.grad(m(x[i:i + 1, : lengths[i]])[0].pow(2).sum(), list(m.parameters()))
        for p, g in zip(m.parameters(), one):
            torch.testing.assert_close(p.grad_sample[i], g)
    for p in m.parameters():
        del p.grad_sample
    # Unsorted, torch's decomposition would silently return the samples in sorted order.
    with pytest.raises(ValueError, match="sorted by decreasing length"):
        call_for_per_sample_grads(model, batch_size=3, loss_reduction="sum")(x, torch.tensor([5, 2, 4]))


def test_expanded_weights_in_the_functional_api_is_a_clear_error_before_work():
    weights = [torch.randn(16, 3, requires_grad=True), torch.randn(16, 4, requires_grad=True)]
    expanded = [ExpandedWeight(w, 2, "sum") for w in weights]
    with pytest.raises(RuntimeError, match="per-sample gradients.*torch.func.vmap"):
        functional.lstm(torch.randn(5, 2, 3), None, expanded, has_bias=False, backend="cpu")
    assert all(not hasattr(w, "grad_sample") and w.grad is None for w in weights)


# ------------------------------------------------------------------------ 4. autocast


def relu_margin(m, x):
    """The smallest |pre-activation| of a one-layer relu RNN over x, relative to
    the sum of its terms' sizes: below bfloat16's resolution the sign, and so
    relu's derivative, is bfloat16 rounding's to decide."""
    w_ih, w_hh, b_ih, b_hh = (t.detach() for t in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0))
    h, margin = torch.zeros(x.shape[1], w_hh.shape[1]), math.inf
    for x_t in x:
        terms = (x_t @ w_ih.T, b_ih.expand(x.shape[1], -1), h @ w_hh.T, b_hh.expand(x.shape[1], -1))
        pre = sum(terms)
        margin = min(margin, (pre.abs() / sum(t.abs() for t in terms)).min().item())
        h = pre.relu()
    return margin


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_autocast_cpu_bfloat16(torch_cls, rk_cls, kwargs, seed):
    """Outputs and states in bfloat16 as torch.nn.LSTM's; float32 parameter
    gradients; numbers within bfloat16 rounding of the float32 run. For relu
    an input whose pre-activations all clear 4 bfloat16 ulps of zero: nearer,
    the derivative (0 or 1) is a rounding's to decide, in torch.nn's autocast
    run too (2% of draws; a weight gradient then moves by ~1.5)."""
    _, m = twins(torch_cls, rk_cls, kwargs, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    while kwargs.get("nonlinearity") == "relu" and relu_margin(m, x) < 4 * 2.0 ** -8:
        x = torch.randn(5, 2, 3)
    out32, state32 = m(x)
    grads32 = torch.autograd.grad(out32.sum(), list(m.parameters()))
    with torch.autocast("cpu", torch.bfloat16):
        out, state = m(x)
    assert out.dtype == torch.bfloat16
    assert all(s.dtype == torch.bfloat16 for s in (state if isinstance(state, tuple) else (state,)))
    torch.testing.assert_close(out.float(), out32, rtol=0.05, atol=0.03)
    grads = torch.autograd.grad(out.float().sum(), list(m.parameters()))
    assert all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(grads, grads32, rtol=0.1, atol=0.1)


def test_autocast_matches_torch_lstm_and_leaves_float64_alone(seed):
    reference, ours = twins(nn.LSTM, rk.LSTM, {}, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with torch.autocast("cpu", torch.bfloat16):
            expected = reference(x)[0]
        assert expected.dtype == torch.bfloat16
    else:
        # torch.nn.LSTM raises under bf16 autocast where oneDNN has no bf16 LSTM (AVX2-only CPUs such
        # as AMD Zen 2): compare with what autocast means, torch.nn.LSTM on bf16-rounded weights and input.
        rounded = copy.deepcopy(reference).bfloat16().float()
        expected = rounded(x.bfloat16().float())[0]
    with torch.autocast("cpu", torch.bfloat16):
        ours_out = ours(x)[0]
        assert ours_out.dtype == torch.bfloat16
        torch.testing.assert_close(ours_out.float(), expected.float(), rtol=0.05, atol=0.03)
        assert ours.double()(x.double())[0].dtype == torch.float64


def test_autocast_float16_on_the_cpu_backend(seed):
    """The C++ kernels have no float16: they compute in float32, the call returns float16."""
    m = rk.LSTM(3, 4, backend="cpu")
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", torch.float16):
        out = m(x)[0]
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, m(x)[0].half())


# ------------------------------------------------------------ 5. dynamic quantization


class _Model(nn.Module):
    def __init__(self, lstm, gru, cell):
        super().__init__()
        self.lstm, self.gru, self.cell, self.fc = lstm(3, 4, backend="cpu"), gru(4, 5), cell(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        y = self.gru(self.lstm(x)[0])[0]
        return self.fc(self.cell(y[-1])[0])


def test_quantize_dynamic_quantizes_rk_modules_as_torch_modules(seed):
    ours = _Model(rk.LSTM, rk.GRU, rk.LSTMCell)
    stock = _Model(lambda *a, **k: nn.LSTM(*a), nn.GRU, nn.LSTMCell)
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(6, 2, 3)
    before = ours(x)
    for spec in ({nn.LSTM, nn.GRU}, None):
        q = torch.ao.quantization.quantize_dynamic(ours, spec, dtype=torch.qint8)
        q_stock = torch.ao.quantization.quantize_dynamic(stock, spec, dtype=torch.qint8)
        for quantized, quantized_stock in zip(q.children(), q_stock.children()):
            if type(quantized_stock).__module__.startswith("torch.ao.nn.quantized"):
                assert type(quantized) is type(quantized_stock)
            else:  # left float: still ours
                assert type(quantized) is rk.modules._TO_RK.get(type(quantized_stock), type(quantized_stock))
        assert type(q.lstm).__module__.startswith("torch.ao.nn.quantized.dynamic")
        torch.testing.assert_close(q.lstm(x), q_stock.lstm(x), rtol=0, atol=0)
    # The model quantized from is untouched.
    assert (type(ours.lstm), ours.lstm.backend, type(ours.cell)) == (rk.LSTM, "cpu", rk.LSTMCell)
    torch.testing.assert_close(ours(x), before)
    q = torch.quantization.quantize_dynamic(ours, {nn.GRU}, inplace=True)
    assert q is ours and type(ours.gru) is type(q_stock.gru) and type(ours.lstm) is rk.LSTM


# -------------------------------------------------------------------- 6. TorchScript


@pytest.mark.parametrize("rk_cls", [rk.LSTM, rk.GRU])
def test_jit_trace_with_its_default_check(rk_cls, seed):
    m = rk_cls(3, 4, num_layers=2, bidirectional=True).double()
    traced = torch.jit.trace(m, (torch.randn(5, 2, 3, dtype=torch.double),))  # check_trace=True
    x = torch.randn(7, 3, 3, dtype=torch.double, requires_grad=True)
    out = traced(x)[0]
    expected = m(x)[0]
    torch.testing.assert_close(out, expected)
    g, = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.autograd.grad(expected.sum(), x)[0])


@pytest.mark.parametrize("module", [rk.LSTM(3, 4), rk.GRUCell(3, 4)], ids=["LSTM", "GRUCell"])
def test_jit_script_is_a_clear_error_that_changes_nothing(module):
    parent = nn.Sequential(nn.Linear(3, 3), module)
    for target in (module, parent):
        with pytest.raises(NotImplementedError, match=r"torch\.compile.*torch\.export"):
            torch.jit.script(target)
    assert parent[1] is module and type(module).__module__.startswith("rnnkernels")


# ----------------------------------------------- 7. torch.compile in a fresh process

_FRESH_PROCESS = textwrap.dedent("""
    import sys, warnings
    if sys.argv[1] == "without-triton":
        sys.modules["triton"] = None  # import triton now fails
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch
        import rnnkernels as rk
        from rnnkernels.models import Seq2Seq
        q, k, v, lengths = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.tensor([5, 2])
        attend = lambda q, k, v: rk.dot_product_attention(q, k, v, key_lengths=lengths)
        compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(q, k, v), attend(q, k, v))
        model = Seq2Seq(11, 13, embed_size=8, hidden_size=8)
        src, tgt = torch.randint(3, 11, (2, 4)), torch.randint(3, 13, (2, 3))
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(src, torch.tensor([4, 2]), tgt)
        assert torch.allclose(out, model(src, torch.tensor([4, 2]), tgt))
        out.sum().backward()
        for module, x in ((rk.GRU(3, 4, bidirectional=True), torch.randn(5, 2, 3)),
                          (rk.LSTMCell(3, 4), torch.randn(2, 3))):
            out = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
            assert torch.allclose(out[0], module(x)[0])
    assert not caught, [str(w.message) for w in caught]
    print("fresh process ok", sys.argv[1])
""")


def test_compile_fullgraph_in_a_fresh_process_with_and_without_triton():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("TRITON_INTERPRET", None)
    runs = {mode: subprocess.Popen([sys.executable, "-c", _FRESH_PROCESS, mode], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
            for mode in ("with-triton", "without-triton")}
    for mode, process in runs.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0 and f"fresh process ok {mode}" in output, output


# --------------------------------------------------- 8. check --backend that checks nothing


def test_check_with_an_unknown_backend_fails_with_the_reason(capsys):
    assert cli.main(["check", "--backend", "foo", "--cases", "1"]) != 0
    assert "unknown backend 'foo'" in capsys.readouterr().out


def test_check_with_an_unavailable_backend_fails_with_the_reason(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli.main(["check", "--backend", "triton", "--cases", "1"]) != 0
    out = capsys.readouterr().out
    reason = "TRITON_INTERPRET=1" if HAVE_TRITON else "Triton is not installed"
    assert "checked nothing" in out and reason in out and "all checks passed" not in out
    assert not check.run_checks(cases=1, only=["cuda"], ops=("rnn",), out=open(os.devnull, "w"))
