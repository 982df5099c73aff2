"""rnnkernels.LSTMCell / GRUCell / RNNCell against torch.nn's cells with
identical weights: outputs, gradients of input, state and every parameter,
second derivatives, forward-mode AD, compile, autocast, convert, and one
layer-op call per step. (PyTorch's own cell tests run in test_upstream_rnn.)"""
import pytest
import torch
from torch import nn
import torch.nn.utils.prune  # noqa: F401  (torch.nn.utils.prune)
import torch.nn.utils.parametrize  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode

import rnnkernels as rk
from rnnkernels.check import relative_error

CELLS = [(nn.LSTMCell, rk.LSTMCell, {}), (nn.GRUCell, rk.GRUCell, {}),
         (nn.RNNCell, rk.RNNCell, {"nonlinearity": "tanh"}), (nn.RNNCell, rk.RNNCell, {"nonlinearity": "relu"})]
IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
CPU_BACKENDS = rk.backends.available("cpu")


def twins(torch_cls, rk_cls, kwargs, dtype=torch.float64, backend="auto", input_size=3, hidden_size=5, bias=True):
    reference = torch_cls(input_size, hidden_size, bias=bias, **kwargs).to(dtype)
    ours = rk_cls(input_size, hidden_size, bias=bias, **kwargs, backend=backend).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def state_like(torch_cls, shape, dtype):
    if torch_cls is nn.LSTMCell:
        return tuple(torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(2))
    return torch.randn(shape, dtype=dtype, requires_grad=True)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def run_steps(cell, xs, state):
    """A decoder loop: the state of each step feeds the next."""
    outputs = []
    for x in xs:
        state = cell(x, state)
        outputs.append(as_tuple(state)[0])
    return torch.stack(outputs), as_tuple(state)


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched, with_state", [(True, True), (True, False), (False, True)],
                         ids=["batched", "zero-state", "unbatched"])
def test_parity_float64(torch_cls, rk_cls, kwargs, backend, bias, batched, with_state, seed):
    reference, ours = twins(torch_cls, rk_cls, kwargs, backend=backend, bias=bias)
    shape = (4, 3, 3) if batched else (4, 3)
    xs = torch.randn(shape, dtype=torch.double)
    state = state_like(torch_cls, (3, 5) if batched else (5,), torch.double) if with_state else None
    results = []
    for cell in (reference, ours):
        x = xs.clone().requires_grad_()
        out, final = run_steps(cell, x, state)
        upstream = [torch.ones_like(t) * torch.linspace(-1, 1, t.numel()).view_as(t) for t in (out, *final)]
        leaves = [x, *(as_tuple(state) if state is not None else ()), *cell.parameters()]
        grads = torch.autograd.grad([out, *final], leaves, upstream)
        results.append((out, final, grads))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
def test_parity_float32(torch_cls, rk_cls, kwargs, seed):
    reference, ours = twins(torch_cls, rk_cls, kwargs, dtype=torch.float32, input_size=16, hidden_size=32)
    xs, state = torch.randn(6, 8, 16), state_like(torch_cls, (8, 32), torch.float32)
    (out_ref, final_ref), (out, final) = run_steps(reference, xs, state), run_steps(ours, xs, state)
    assert relative_error(out, out_ref) < 1e-5
    grads_ref = torch.autograd.grad(out_ref.sum(), list(reference.parameters()))
    grads = torch.autograd.grad(out.sum(), list(ours.parameters()))
    assert max(relative_error(a, b) for a, b in zip(grads, grads_ref)) < 1e-5


class _Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
def test_pruned_and_parametrized_weights_are_used(torch_cls, rk_cls, kwargs, seed):
    """A cell reads its weights from _parameters only where they are registered
    there: pruning replaces weight_hh with a masked plain attribute and
    parametrize weight_ih with a property, and both must reach the step."""
    reference, ours = twins(torch_cls, rk_cls, kwargs)
    for cell in (reference, ours):
        torch.nn.utils.prune.random_unstructured(cell, "weight_hh", amount=0.5)
        nn.utils.parametrize.register_parametrization(cell, "weight_ih", _Doubled())
    ours.weight_hh_mask.copy_(reference.weight_hh_mask)
    xs, state = torch.randn(4, 3, 3, dtype=torch.double), state_like(torch_cls, (3, 5), torch.double)
    (out_ref, _), (out, _) = run_steps(reference, xs, state), run_steps(ours, xs, state)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-12)
    def leaves(cell):
        return [cell.weight_hh_orig, cell.parametrizations.weight_ih.original]

    grads_ref = torch.autograd.grad(out_ref.sum(), leaves(reference))
    grads = torch.autograd.grad(out.sum(), leaves(ours))
    torch.testing.assert_close(grads, grads_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
def test_looks_like_torch(torch_cls, rk_cls, kwargs):
    reference, ours = twins(torch_cls, rk_cls, kwargs, dtype=torch.float32)
    assert isinstance(ours, torch_cls)
    assert repr(ours) == repr(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]
    with pytest.raises(ValueError, match="input dtype .* does not match weight dtype"):
        ours(torch.randn(2, 3, dtype=torch.double))


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_one_fused_op_per_step(torch_cls, rk_cls, kwargs, grad):
    """A step is one call of the layer op (its GEMMs and the cells.h pointwise
    pass inside), not a chain of matmuls and pointwise ops."""
    cell = rk_cls(3, 5, **kwargs, backend="cpu")
    x, state = torch.randn(2, 3), state_like(torch_cls, (2, 5), torch.float32)
    with torch.set_grad_enabled(grad), _CountOps() as counter:
        cell(x, state)
    heavy = [op for op in counter.ops if "mm" in op or "linear" in op or "sigmoid" in op or "tanh" in op]
    assert counter.ops.count("rnnkernels.rnn_layer_forward") == 1 and not heavy, counter.ops


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
def test_gradgradcheck(torch_cls, rk_cls, kwargs, seed):
    _, cell = twins(torch_cls, rk_cls, kwargs, input_size=2, hidden_size=2, backend="cpu")
    x = torch.randn(2, 2, dtype=torch.double, requires_grad=True)
    state = as_tuple(state_like(torch_cls, (2, 2), torch.double))
    lstm = torch_cls is nn.LSTMCell

    def step(x, *tensors):
        state, params = tensors[: len(tensors) - 4], tensors[-4:]
        out = torch.func.functional_call(cell, dict(zip(dict(cell.named_parameters()), params)),
                                         (x, state if lstm else state[0]))
        return as_tuple(out)

    assert torch.autograd.gradgradcheck(step, (x, *state, *cell.parameters()), check_batched_grad=False)


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
def test_forward_mode_ad_matches_torch(torch_cls, rk_cls, kwargs, seed):
    reference, ours = twins(torch_cls, rk_cls, kwargs)
    x, v = torch.randn(3, 3, dtype=torch.double), torch.randn(3, 3, dtype=torch.double)
    state = tuple(t.detach() for t in as_tuple(state_like(torch_cls, (3, 5), torch.double)))
    state = state if torch_cls is nn.LSTMCell else state[0]
    expected = torch.func.jvp(lambda t: as_tuple(reference(t, state)), (x,), (v,))
    torch.testing.assert_close(torch.func.jvp(lambda t: as_tuple(ours(t, state)), (x,), (v,)), expected)


def test_compile_decoder_loop_fullgraph(seed):
    cell = rk.LSTMCell(3, 4)
    head = nn.Linear(4, 3)

    def decode(x, state):
        outputs = []
        for _ in range(3):
            state = cell(x, state)
            x = head(state[0])
            outputs.append(x)
        return torch.stack(outputs)

    x, state = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))
    compiled = torch.compile(decode, fullgraph=True, backend="aot_eager")
    out, expected = compiled(x, state), decode(x, state)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), list(cell.parameters()))
    torch.testing.assert_close(grads, torch.autograd.grad(expected.sum(), list(cell.parameters())))


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
def test_autocast_cpu_bfloat16(torch_cls, rk_cls, kwargs, seed):
    _, cell = twins(torch_cls, rk_cls, kwargs, dtype=torch.float32)
    x, state = torch.randn(4, 3), as_tuple(state_like(torch_cls, (4, 5), torch.float32))
    state = state if torch_cls is nn.LSTMCell else state[0]
    expected = as_tuple(cell(x, state))
    with torch.autocast("cpu", torch.bfloat16):
        got = as_tuple(cell(x, state))
    assert all(t.dtype == torch.bfloat16 for t in got)
    torch.testing.assert_close([t.float() for t in got], list(expected), rtol=0.05, atol=0.03)


def test_convert_and_unconvert_swap_cells(seed):
    model = nn.ModuleDict({"lstm": nn.LSTMCell(3, 4), "gru": nn.GRUCell(3, 4), "rnn": nn.RNNCell(3, 4, nonlinearity="relu")})
    before = {name: m for name, m in model.items()}
    x = torch.randn(2, 3)
    expected = {name: as_tuple(m(x))[0] for name, m in model.items()}
    rk.convert(model, backend="reference")
    for name, m in model.items():
        assert m is before[name] and type(m) is {"lstm": rk.LSTMCell, "gru": rk.GRUCell, "rnn": rk.RNNCell}[name]
        assert m.backend == "reference"
        torch.testing.assert_close(as_tuple(m(x))[0], expected[name])
    rk.unconvert(model)
    assert [type(m) for m in model.values()] == [nn.LSTMCell, nn.GRUCell, nn.RNNCell]
    assert all("backend" not in m.__dict__ for m in model.values())


def test_decoder_loop_benchmark_rows():
    """`rnnkernels bench --suite cells` rows (a tiny shape; the times mean nothing)."""
    from rnnkernels.benchmarks import cells as cells_bench

    rows = cells_bench.bench_cell("lstm", 2, 8, ["cpu"], torch.device("cpu"), torch.float32, repeats=1)
    assert [r["pass"] for r in rows] == ["fwd", "fwd+bwd"]
    assert all(r["steps"] == cells_bench.STEPS and r["cpu_speedup"] > 0 and r["torch_ms"] > 0 for r in rows)


# Gathered weight gradients (rnnkernels.rnn_ops.GatheredWeightGrads): a cpu
# cell's steps leave their gate gradients for one product per weight when the
# backward reaches the weights. Each case below is a way a backward can meet
# those weights, against torch.nn's cells doing the same.

def _loop_grads(cell, xs, state):
    """A loss of a decoder loop over xs (a leaf copy of xs, returned too)."""
    x = xs.clone().requires_grad_()
    out, final = run_steps(cell, x, state)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + final[-1].sum()
    return loss, x


def _gathered(cell):
    from rnnkernels import cells as cells_module
    entry = cells_module._GATHERED.get(cell)
    return entry[1] if entry is not None else None


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_gathered_weight_grads_run_and_match_torch(torch_cls, rk_cls, kwargs, bias, seed):
    """One product per weight: the steps' backward is rnn_layer_gate_grads,
    never the per-step rnn_layer_backward, and the sums are torch's."""
    reference, ours = twins(torch_cls, rk_cls, kwargs, backend="cpu", bias=bias, input_size=4, hidden_size=6)
    xs, state = torch.randn(7, 3, 4, dtype=torch.double), state_like(torch_cls, (3, 6), torch.double)
    loss_ref, x_ref = _loop_grads(reference, xs, state)
    loss_ref.backward()
    loss, x = _loop_grads(ours, xs, state)
    with _CountOps() as counter:
        loss.backward()
    assert counter.ops.count("rnnkernels.rnn_layer_gate_grads") == 7, counter.ops
    assert "rnnkernels.rnn_layer_backward" not in counter.ops
    assert _gathered(ours) is not None and not _gathered(ours)._entries
    torch.testing.assert_close([x.grad, *_grads_of(ours)], [x_ref.grad, *_grads_of(reference)], rtol=1e-10,
                               atol=1e-12)


def _grads_of(cell):
    return [p.grad.clone() for p in cell.parameters()]


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS[:2], ids=IDS[:2])
def test_gathered_weight_grads_across_backwards(torch_cls, rk_cls, kwargs, seed):
    """retain_graph and a second backward, accumulation over two graphs with
    the same weights, a backward for the inputs only in between (its steps
    must leave nothing behind), the weights also used outside the cell, and
    an optimizer step (new weights: a new gathering)."""
    reference, ours = twins(torch_cls, rk_cls, kwargs, backend="cpu", input_size=4, hidden_size=5)
    optimizers = [torch.optim.SGD(cell.parameters(), lr=0.1) for cell in (reference, ours)]
    batches = [torch.randn(5, 2, 4, dtype=torch.double) for _ in range(3)]
    state = state_like(torch_cls, (2, 5), torch.double)
    for cell, optimizer in zip((reference, ours), optimizers):
        loss, x = _loop_grads(cell, batches[0], state)
        torch.autograd.grad(loss, [x], retain_graph=True)  # inputs only: the weights' node does not run
        assert cell is reference or not _gathered(ours)._entries  # so its steps must not leave entries
        loss.backward(retain_graph=True)
        loss.backward()  # twice: double the gradients
        loss, _ = _loop_grads(cell, batches[1], state)
        (loss + cell.weight_hh.square().sum()).backward()  # accumulates onto the first graph's
        cell.grads_before_step = _grads_of(cell)
        optimizer.step()
        optimizer.zero_grad()
        loss, _ = _loop_grads(cell, batches[2], state)
        loss.backward()
        cell.grads_after_step = _grads_of(cell)
    assert not _gathered(ours)._entries
    torch.testing.assert_close(ours.grads_before_step, reference.grads_before_step, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.grads_after_step, reference.grads_after_step, rtol=1e-10, atol=1e-12)


class _Fail(RuntimeError):
    pass


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS[:2], ids=IDS[:2])
def test_gathered_weight_grads_after_a_failed_backward(torch_cls, rk_cls, kwargs, seed):
    """A backward that raises halfway leaves entries behind; the next one
    must sum only its own."""
    reference, ours = twins(torch_cls, rk_cls, kwargs, backend="cpu", input_size=4, hidden_size=5)
    xs, state = torch.randn(6, 2, 4, dtype=torch.double), state_like(torch_cls, (2, 5), torch.double)
    loss, _ = _loop_grads(ours, xs, state)
    broken = as_tuple(ours(xs[0], state))[0]

    def fail(grad):
        raise _Fail()

    doubled = broken * 2
    doubled.register_hook(fail)  # made before `tail`: its node runs after tail's step has left its entry
    tail = ours(xs[1], (broken, broken) if torch_cls is nn.LSTMCell else broken)
    with pytest.raises(_Fail):
        (as_tuple(tail)[0].sum() + doubled.sum()).backward()
    assert all(p.grad is None for p in ours.parameters()) and _gathered(ours)._entries
    loss.backward()
    loss_ref, _ = _loop_grads(reference, xs, state)
    loss_ref.backward()
    torch.testing.assert_close(_grads_of(ours), _grads_of(reference), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS[:2], ids=IDS[:2])
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gathered_weight_grads_under_checkpoint(torch_cls, rk_cls, kwargs, use_reentrant, seed):
    """Activation checkpointing recomputes steps inside the backward (a
    re-entrant backward of its own with use_reentrant=True)."""
    import torch.utils.checkpoint as checkpoint

    reference, ours = twins(torch_cls, rk_cls, kwargs, backend="cpu", input_size=4, hidden_size=5)
    xs, state = torch.randn(6, 2, 4, dtype=torch.double), state_like(torch_cls, (2, 5), torch.double)
    for cell in (reference, ours):
        head, _ = run_steps(cell, xs[:3], state)
        start = head[-1]

        def rest(h):
            out, _ = run_steps(cell, xs[3:], (h, h) if torch_cls is nn.LSTMCell else h)
            return out

        out = checkpoint.checkpoint(rest, start, use_reentrant=use_reentrant)
        (out.square().sum() + head.sum()).backward()
    torch.testing.assert_close(_grads_of(ours), _grads_of(reference), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("torch_cls, rk_cls, kwargs", CELLS, ids=IDS)
def test_gathered_weight_grads_double_backward(torch_cls, rk_cls, kwargs, seed):
    """create_graph=True: the steps return differentiable weight gradients
    instead (a gradient penalty over a decoder loop)."""
    reference, ours = twins(torch_cls, rk_cls, kwargs, backend="cpu", input_size=3, hidden_size=4)
    xs, state = torch.randn(4, 2, 3, dtype=torch.double), state_like(torch_cls, (2, 4), torch.double)
    results = []
    for cell in (reference, ours):
        loss, _ = _loop_grads(cell, xs, state)
        grads = torch.autograd.grad(loss, list(cell.parameters()), create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        results.append((grads, torch.autograd.grad(penalty, list(cell.parameters()))))
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)
