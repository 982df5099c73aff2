"""A bidirectional layer on the cpu backend runs its two directions at once,
one OpenMP thread each (ops rnn_bidirectional_forward / _backward, taken by
rnnkernels.rnn_ops.bidirectional), forward and backward. It must give the
numbers and gradients of the directions run one after the other (double
backward included), be taken exactly where it applies, refuse bad arguments
before any work, and leave the caller's thread settings and grad mode as they
were."""
import pytest
import torch

import rnnkernels as rk
from rnnkernels import rnn_ops
from rnnkernels.reference import GATES

pair_op = torch.ops.rnnkernels.rnn_bidirectional_forward
one_direction_op = torch.ops.rnnkernels.rnn_layer_forward
MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def direction_args(mode, I, H, B, dtype, generator, with_h0=True):
    G = GATES[mode]

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).mul_(0.4).to(dtype)

    h0 = rand(B, H) if with_h0 else None
    c0 = rand(B, H) if with_h0 and mode == "lstm" else None
    return h0, c0, rand(G * H, I), rand(G * H, H), rand(G * H), rand(G * H)


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("uneven", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_pair_equals_the_directions_one_after_the_other(mode, dtype, uneven, training, two_threads):
    gen = torch.Generator().manual_seed(11)
    T, B, I, H = 9, 6, 5, 37
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(dtype)
    forward = direction_args(mode, I, H, B, dtype, gen)
    reverse = direction_args(mode, I, H, B, dtype, gen, with_h0=False)
    lengths = torch.tensor([9, 3, 7, 1, 9, 5]) if uneven else None
    got = pair_op(mode, x, *forward, *reverse, lengths, training)
    expected = []
    for args, is_reverse in ((forward, False), (reverse, True)):
        h0, c0, w_ih, w_hh, b_ih, b_hh = args
        expected += one_direction_op(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths, is_reverse, training)[:6]
    assert len(got) == 12
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        if b.numel() == 0:  # c_n of a cell without one
            continue
        if dtype == torch.float64:
            assert torch.allclose(a, b, rtol=0, atol=1e-13)
        else:  # one thread against two: the GEMMs may sum in another order
            assert (a - b).abs().max() <= 1e-6 * (1 + b.abs().max())
    assert got[0].abs().sum() > 0 and got[6].abs().sum() > 0  # both directions ran


def spy(monkeypatch):
    """Records whether rnn_ops.bidirectional ran the pair at each call."""
    answers = []
    real = rnn_ops.bidirectional

    def recording(*args):
        result = real(*args)
        answers.append(result is not None)
        return result

    monkeypatch.setattr(rnn_ops, "bidirectional", recording)
    return answers


@pytest.mark.parametrize("cls", [rk.LSTM, rk.GRU, rk.RNN])
def test_module_inference_runs_both_directions_at_once_with_the_same_numbers(cls, monkeypatch, two_threads):
    torch.manual_seed(0)
    module = cls(48, 96, num_layers=2, bidirectional=True, backend="cpu")
    x = torch.randn(30, 24, 48)  # 30 * 24 * G * 96 * (48 + 96) multiply-adds: above the threshold
    lengths = torch.randint(1, 31, (24,))
    with torch.no_grad():
        answers = spy(monkeypatch)
        out, state = module(x, lengths=lengths)
        assert answers == [True, True]  # both layers
        monkeypatch.setattr(rnn_ops, "bidirectional", lambda *args: None)
        out_seq, state_seq = module(x, lengths=lengths)
    assert not out.requires_grad and out.grad_fn is None  # the caller's no_grad held on the second thread
    assert (out - out_seq).abs().max() <= 1e-5
    states = state if isinstance(state, tuple) else (state,)
    states_seq = state_seq if isinstance(state_seq, tuple) else (state_seq,)
    for a, b in zip(states, states_seq):
        assert (a - b).abs().max() <= 1e-5
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("cls", [rk.LSTM, rk.GRU, rk.RNN])
def test_training_gradients_equal_the_directions_one_after_the_other(cls, monkeypatch, two_threads):
    torch.manual_seed(1)
    module = cls(48, 96, num_layers=2, bidirectional=True, backend="cpu")
    x = torch.randn(30, 24, 48, requires_grad=True)
    lengths = torch.randint(1, 31, (24,))
    hx = torch.randn(4, 24, 96, requires_grad=True)
    state0 = (hx, torch.randn(4, 24, 96, requires_grad=True)) if cls is rk.LSTM else hx
    leaves = [x, *(state0 if isinstance(state0, tuple) else (state0,)), *module.parameters()]

    def gradients():
        out, state = module(x, state0, lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + sum((s ** 2).sum() for s in states)
        return torch.autograd.grad(loss, leaves)

    answers = spy(monkeypatch)
    got = gradients()
    assert answers == [True, True]
    monkeypatch.setattr(rnn_ops, "bidirectional", lambda *args: None)
    expected = gradients()
    for a, b in zip(got, expected):
        assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max())


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_pair_gradcheck_and_gradgradcheck(mode, monkeypatch, two_threads):
    """float64, every input's gradient, and the create_graph backward, on the pair path
    (its size threshold lowered so that a small layer takes it)."""
    monkeypatch.setattr(rnn_ops, "_MIN_MACS_FOR_TWO_THREADS", 0)
    gen = torch.Generator().manual_seed(7)
    T, B, I, H = 4, 3, 2, 3
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
    forward = [t.requires_grad_() if t is not None else None
               for t in direction_args(mode, I, H, B, torch.float64, gen)]
    reverse = [t.requires_grad_() if t is not None else None
               for t in direction_args(mode, I, H, B, torch.float64, gen)]
    lengths = torch.tensor([4, 2, 3])
    taken = []

    def layer(x, *weights):
        result = rnn_ops.bidirectional(mode, x, weights[:6], weights[6:], lengths)
        taken.append(result is not None)
        (out, h_n, c_n), (out_r, h_n_r, c_n_r) = result
        return tuple(t for t in (out, h_n, c_n, out_r, h_n_r, c_n_r) if t is not None)

    inputs = (x, *forward, *reverse)
    if mode != "lstm":  # no c0
        inputs = tuple(t for t in inputs if t is not None)

        def layer_without_c0(x, h0, w_ih, w_hh, b_ih, b_hh, h0_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r):
            return layer(x, h0, None, w_ih, w_hh, b_ih, b_hh, h0_r, None, w_ih_r, w_hh_r, b_ih_r, b_hh_r)
        fn = layer_without_c0
    else:
        fn = layer
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    assert all(taken)


def test_projection_small_layers_and_one_thread_take_the_usual_path(monkeypatch, two_threads):
    torch.manual_seed(0)
    x = torch.randn(30, 24, 48)
    module = rk.LSTM(48, 96, bidirectional=True, backend="cpu")
    answers = spy(monkeypatch)
    with torch.no_grad():
        rk.LSTM(48, 96, bidirectional=True, proj_size=32, backend="cpu")(x)  # projection: never asked
        assert answers == []
        rk.LSTM(4, 8, bidirectional=True, backend="cpu")(torch.randn(3, 2, 4))  # too small to pay
        assert answers == [False]
        module(x, backend="reference")  # another backend: never asked
        assert answers == [False]
        torch.set_num_threads(1)
        module(x)
        assert answers == [False, False]
        torch.set_num_threads(2)
        module(x)
        assert answers == [False, False, True]


def test_bad_reverse_arguments_are_refused_before_any_work(two_threads):
    gen = torch.Generator().manual_seed(3)
    T, B, I, H = 4, 3, 5, 8
    x = torch.randn(T, B, I, generator=gen)
    forward = direction_args("lstm", I, H, B, torch.float32, gen)
    h0, c0, w_ih, w_hh, b_ih, b_hh = direction_args("lstm", I, H, B, torch.float32, gen)
    with pytest.raises(RuntimeError, match="w_hh"):
        pair_op("lstm", x, *forward, h0, c0, w_ih, w_hh[:, :-1], b_ih, b_hh, None, False)
    with pytest.raises(RuntimeError, match="h0"):
        pair_op("lstm", x, *forward, h0[:, :-1], c0, w_ih, w_hh, b_ih, b_hh, None, False)
    with pytest.raises(RuntimeError, match="lengths"):
        pair_op("lstm", x, *forward, h0, c0, w_ih, w_hh, b_ih, b_hh, torch.tensor([5, 1, 1]), True)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_opcheck(mode, training, two_threads):
    """Schema, fake kernels (torch.compile traces the ops if ever asked to)
    and dispatch of the pair ops agree."""
    gen = torch.Generator().manual_seed(5)
    T, B, I, H = 4, 3, 5, 8
    x = torch.randn(T, B, I, generator=gen)
    forward = direction_args(mode, I, H, B, torch.float32, gen)
    reverse = direction_args(mode, I, H, B, torch.float32, gen)
    lengths = torch.tensor([4, 2, 3])
    torch.library.opcheck(pair_op, (mode, x, *forward, *reverse, lengths, training))
    if training:
        outputs = pair_op(mode, x, *forward, *reverse, lengths, True)
        grads = [torch.randn_like(t) if t.numel() else None for t in (*outputs[0:3], *outputs[6:9])]
        if mode != "lstm":
            grads[2] = grads[5] = None
        args = (mode, *grads, x, forward[2], forward[3], reverse[2], reverse[3], lengths, *outputs[3:6],
                *outputs[9:12], True, True, True)
        torch.library.opcheck(torch.ops.rnnkernels.rnn_bidirectional_backward, args)
