"""A bidirectional layer's inference forward on the cpu backend runs its two
directions at once, one OpenMP thread each (op rnn_bidirectional_inference,
taken by rnnkernels.rnn_ops.bidirectional_inference). It must give the
numbers of the directions run one after the other, be taken exactly where it
applies, refuse bad arguments before any work, and leave the caller's thread
settings and grad mode as they were."""
import pytest
import torch

import rnnkernels as rk
from rnnkernels import rnn_ops
from rnnkernels.reference import GATES

pair_op = torch.ops.rnnkernels.rnn_bidirectional_inference
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
def test_pair_equals_the_directions_one_after_the_other(mode, dtype, uneven, two_threads):
    gen = torch.Generator().manual_seed(11)
    T, B, I, H = 9, 6, 5, 37
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(dtype)
    forward = direction_args(mode, I, H, B, dtype, gen)
    reverse = direction_args(mode, I, H, B, dtype, gen, with_h0=False)
    lengths = torch.tensor([9, 3, 7, 1, 9, 5]) if uneven else None
    got = pair_op(mode, x, *forward, *reverse, lengths)
    expected = []
    for args, is_reverse in ((forward, False), (reverse, True)):
        h0, c0, w_ih, w_hh, b_ih, b_hh = args
        expected += one_direction_op(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths, is_reverse, False)[:3]
    assert len(got) == 6
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        if b.numel() == 0:  # c_n of a cell without one
            continue
        if dtype == torch.float64:
            assert torch.allclose(a, b, rtol=0, atol=1e-13)
        else:  # one thread against two: the GEMMs may sum in another order
            assert (a - b).abs().max() <= 1e-6 * (1 + b.abs().max())
    assert got[0].abs().sum() > 0 and got[3].abs().sum() > 0  # both directions ran


def spy(monkeypatch):
    """Records what rnn_ops.bidirectional_inference answered at each call."""
    answers = []
    real = rnn_ops.bidirectional_inference

    def recording(*args):
        result = real(*args)
        answers.append(result is not None)
        return result

    monkeypatch.setattr(rnn_ops, "bidirectional_inference", recording)
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
        monkeypatch.setattr(rnn_ops, "bidirectional_inference", lambda *args: None)
        out_seq, state_seq = module(x, lengths=lengths)
    assert not out.requires_grad and out.grad_fn is None  # the caller's no_grad held on the second thread
    assert (out - out_seq).abs().max() <= 1e-5
    states = state if isinstance(state, tuple) else (state,)
    states_seq = state_seq if isinstance(state_seq, tuple) else (state_seq,)
    for a, b in zip(states, states_seq):
        assert (a - b).abs().max() <= 1e-5
    assert torch.get_num_threads() == 2


def test_training_projection_small_layers_and_one_thread_take_the_usual_path(monkeypatch, two_threads):
    torch.manual_seed(0)
    x = torch.randn(30, 24, 48)
    module = rk.LSTM(48, 96, bidirectional=True, backend="cpu")
    answers = spy(monkeypatch)
    module(x)  # grad mode, parameters requiring grad: autograd needs the usual ops
    assert answers == [False]
    with torch.no_grad():
        rk.LSTM(48, 96, bidirectional=True, proj_size=32, backend="cpu")(x)  # projection: never asked
        assert answers == [False]
        rk.LSTM(4, 8, bidirectional=True, backend="cpu")(torch.randn(3, 2, 4))  # too small to pay
        assert answers == [False, False]
        module(x, backend="reference")  # another backend: never asked
        assert answers == [False, False]
        torch.set_num_threads(1)
        module(x)
        assert answers == [False, False, False]


def test_bad_reverse_arguments_are_refused_before_any_work(two_threads):
    gen = torch.Generator().manual_seed(3)
    T, B, I, H = 4, 3, 5, 8
    x = torch.randn(T, B, I, generator=gen)
    forward = direction_args("lstm", I, H, B, torch.float32, gen)
    h0, c0, w_ih, w_hh, b_ih, b_hh = direction_args("lstm", I, H, B, torch.float32, gen)
    with pytest.raises(RuntimeError, match="w_hh"):
        pair_op("lstm", x, *forward, h0, c0, w_ih, w_hh[:, :-1], b_ih, b_hh, None)
    with pytest.raises(RuntimeError, match="h0"):
        pair_op("lstm", x, *forward, h0[:, :-1], c0, w_ih, w_hh, b_ih, b_hh, None)
    with pytest.raises(RuntimeError, match="lengths"):
        pair_op("lstm", x, *forward, h0, c0, w_ih, w_hh, b_ih, b_hh, torch.tensor([5, 1, 1]))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_opcheck(mode, two_threads):
    """Schema, fake kernel (torch.compile traces the op if ever asked to) and
    dispatch of the pair op agree."""
    gen = torch.Generator().manual_seed(5)
    T, B, I, H = 4, 3, 5, 8
    x = torch.randn(T, B, I, generator=gen)
    args = (mode, x, *direction_args(mode, I, H, B, torch.float32, gen),
            *direction_args(mode, I, H, B, torch.float32, gen), torch.tensor([4, 2, 3]))
    torch.library.opcheck(pair_op, args)
