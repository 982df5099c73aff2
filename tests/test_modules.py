"""rnnkernels.LSTM / GRU / RNN against torch.nn with identical weights.

Every combination of cell x num_layers x bidirectional x batch_first x bias x
proj_size x input kind (batched, unbatched, PackedSequence sorted / unsorted)
x h0 given or not, on every backend that runs on the CPU: outputs, final
states and the gradients of the input, the initial states and every parameter.
"""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels as rk
from rnnkernels.check import relative_error

CELLS = [
    ("lstm", nn.LSTM, rk.LSTM, {}),
    ("gru", nn.GRU, rk.GRU, {}),
    ("rnn_tanh", nn.RNN, rk.RNN, {"nonlinearity": "tanh"}),
    ("rnn_relu", nn.RNN, rk.RNN, {"nonlinearity": "relu"}),
]
INPUT_KINDS = ["batched", "unbatched", "packed_sorted", "packed_unsorted"]
CPU_BACKENDS = rk.backends.available("cpu")


def make_pair(torch_cls, rk_cls, kwargs, dtype, backend):
    reference = torch_cls(**kwargs).to(dtype)
    ours = rk_cls(**kwargs, backend=backend).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def make_input(kind, steps, batch, features, batch_first, dtype):
    if kind == "unbatched":
        return torch.randn(steps, features, dtype=dtype), None
    shape = (batch, steps, features) if batch_first else (steps, batch, features)
    x = torch.randn(shape, dtype=dtype)
    if kind == "batched":
        return x, None
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[torch.randint(batch, ())] = steps
    if kind == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    return x, lengths


def run_model(model, kind, x, lengths, hx, batch_first):
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
    state_in = None if hx is None else (hx if len(hx) == 2 else hx[0])
    if kind.startswith("packed"):
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=(kind == "packed_sorted"))
        out, state = model(packed, state_in)
        out = out.data
    else:
        out, state = model(x, state_in)
    states = list(state) if isinstance(state, tuple) else [state]
    return out, states, [x] + (list(hx) if hx else []) + list(model.parameters())


def assert_parity(torch_model, rk_model, kind, x, lengths, hx, batch_first, tol):
    out_t, states_t, leaves_t = run_model(torch_model, kind, x, lengths, hx, batch_first)
    out_r, states_r, leaves_r = run_model(rk_model, kind, x, lengths, hx, batch_first)
    assert out_r.shape == out_t.shape
    assert relative_error(out_r, out_t) <= tol
    for a, b in zip(states_r, states_t):
        assert a.shape == b.shape and relative_error(a, b) <= tol
    upstream = [torch.randn_like(t) for t in [out_t] + states_t]
    grads_t = torch.autograd.grad([out_t] + states_t, leaves_t, upstream)
    grads_r = torch.autograd.grad([out_r] + states_r, leaves_r, upstream)
    params = [name for name, _ in torch_model.named_parameters()]
    names = ["input"] + [f"hx[{i}]" for i in range(len(leaves_t) - 1 - len(params))] + params
    for name, a, b in zip(names, grads_r, grads_t):
        assert relative_error(a, b) <= tol, f"gradient of {name}"


def hidden_states(cell, torch_model, kind, batch, dtype):
    layers = torch_model.num_layers * (2 if torch_model.bidirectional else 1)
    out_size = torch_model.proj_size or torch_model.hidden_size
    shape = (layers, out_size) if kind == "unbatched" else (layers, batch, out_size)
    h0 = torch.randn(shape, dtype=dtype)
    if cell != "lstm":
        return (h0,)
    c_shape = shape[:-1] + (torch_model.hidden_size,)
    return h0, torch.randn(c_shape, dtype=dtype)


COMBINATIONS = [
    (cell, layers, bidirectional, batch_first, bias, proj, kind, with_h0)
    for cell, layers, bidirectional, batch_first, bias, proj, kind, with_h0 in itertools.product(
        [c[0] for c in CELLS], [1, 2, 3], [False, True], [False, True], [True, False], [0, 3], INPUT_KINDS, [False, True]
    )
    if proj == 0 or cell == "lstm"
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", [c[0] for c in CELLS])
def test_parity_float64_every_combination(cell, backend, seed):
    _, torch_cls, rk_cls, extra = next(c for c in CELLS if c[0] == cell)
    for _, layers, bidirectional, batch_first, bias, proj, kind, with_h0 in (c for c in COMBINATIONS if c[0] == cell):
        kwargs = dict(input_size=3, hidden_size=5, num_layers=layers, bidirectional=bidirectional,
                      batch_first=batch_first, bias=bias, **extra)
        if proj:
            kwargs["proj_size"] = proj
        torch_model, rk_model = make_pair(torch_cls, rk_cls, kwargs, torch.float64, backend)
        x, lengths = make_input(kind, steps=4, batch=3, features=3, batch_first=batch_first, dtype=torch.float64)
        hx = hidden_states(cell, torch_model, kind, 3, torch.float64) if with_h0 else None
        assert_parity(torch_model, rk_model, kind, x, lengths, hx, batch_first, tol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", [c[0] for c in CELLS])
@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_parity_float32(cell, kind, backend, seed):
    _, torch_cls, rk_cls, extra = next(c for c in CELLS if c[0] == cell)
    kwargs = dict(input_size=16, hidden_size=24, num_layers=2, bidirectional=True, **extra)
    torch_model, rk_model = make_pair(torch_cls, rk_cls, kwargs, torch.float32, backend)
    x, lengths = make_input(kind, steps=7, batch=5, features=16, batch_first=False, dtype=torch.float32)
    hx = hidden_states(cell, torch_model, kind, 5, torch.float32)
    assert_parity(torch_model, rk_model, kind, x, lengths, hx, False, tol=1e-5)


def test_padded_lengths_match_packed_sequence(seed):
    """Padded input + lengths gives torch's PackedSequence results, zeros past the ends."""
    torch_model, rk_model = make_pair(nn.LSTM, rk.LSTM, dict(input_size=4, hidden_size=6, num_layers=2,
                                                             bidirectional=True), torch.float64, "auto")
    x = torch.randn(6, 4, 4, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1])
    packed_out, (h_t, c_t) = torch_model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    expected, _ = nn.utils.rnn.pad_packed_sequence(packed_out)
    out, (h, c) = rk_model(x, lengths=lengths)
    assert relative_error(out, expected) <= 1e-12
    assert relative_error(h, h_t) <= 1e-12 and relative_error(c, c_t) <= 1e-12
    for b, length in enumerate(lengths.tolist()):
        assert torch.count_nonzero(out[length:, b]) == 0


def test_checkpoint_round_trip(tmp_path, seed):
    reference = nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3).double()
    path = tmp_path / "lstm.pt"
    torch.save(reference.state_dict(), path)
    ours = rk.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3).double()
    ours.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    assert relative_error(ours(x)[0], reference(x)[0]) <= 1e-12
    torch.save(ours.state_dict(), path)
    back = nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3).double()
    back.load_state_dict(torch.load(path, weights_only=True))
    assert relative_error(back(x)[0], ours(x)[0]) <= 1e-12
    assert list(ours.state_dict()) == list(reference.state_dict())


def test_module_looks_like_torch():
    ours, theirs = rk.GRU(3, 4, num_layers=2, bidirectional=True), nn.GRU(3, 4, num_layers=2, bidirectional=True)
    assert isinstance(ours, nn.GRU)
    assert repr(ours) == repr(theirs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    assert "weight_ih_l1_reverse" in dict(ours.named_parameters())


def test_initialisation_matches_torch():
    torch.manual_seed(1234)
    theirs = nn.LSTM(6, 9, num_layers=2)
    torch.manual_seed(1234)
    ours = rk.LSTM(6, 9, num_layers=2)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_convert_and_unconvert_in_place(seed):
    model = nn.Sequential(nn.Linear(3, 3), nn.ModuleList([nn.LSTM(3, 4), nn.GRU(3, 4), nn.RNN(3, 4, nonlinearity="relu")]))
    x = torch.randn(5, 2, 3)
    before = [m(x)[0] for m in model[1]]
    lstm = model[1][0]
    assert rk.convert(model, backend="reference") is model
    assert model[1][0] is lstm and type(lstm) is rk.LSTM and lstm.backend == "reference"
    assert [type(m) for m in model[1]] == [rk.LSTM, rk.GRU, rk.RNN]
    after = [m(x)[0] for m in model[1]]
    for a, b in zip(after, before):
        assert relative_error(a, b) <= 1e-5
    rk.unconvert(model)
    assert [type(m) for m in model[1]] == [nn.LSTM, nn.GRU, nn.RNN]
    assert not hasattr(model[1][0], "backend")


def test_dropout_only_in_training(seed):
    model = rk.LSTM(4, 8, num_layers=3, dropout=0.5).double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_inputs_never_modified(seed):
    model = rk.LSTM(3, 4, num_layers=2, bidirectional=True)
    x, h0, c0 = torch.randn(5, 2, 3), torch.randn(4, 2, 4), torch.randn(4, 2, 4)
    lengths = torch.tensor([5, 3])
    copies = [t.clone() for t in (x, h0, c0, lengths)]
    model(x, (h0, c0), lengths=lengths)[0].sum().backward()
    for t, c in zip((x, h0, c0, lengths), copies):
        assert torch.equal(t, c)
