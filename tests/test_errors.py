"""Bad input: the same exception types as torch.nn, messages naming the
argument, raised before any computation, caller's tensors untouched."""
import pytest
import torch
from torch import nn

import rnnkernels as rk


def both(cls, *args, **kwargs):
    theirs = getattr(nn, cls)(*args, **kwargs)
    ours = getattr(rk, cls)(*args, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def same_error(theirs, ours, *call_args, **call_kwargs):
    with pytest.raises(Exception) as expected:
        theirs(*call_args, **call_kwargs)
    with pytest.raises(type(expected.value)) as got:
        ours(*call_args, **call_kwargs)
    return str(expected.value), str(got.value)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_wrong_input_size(cls):
    theirs, ours = both(cls, 4, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 2, 6))
    assert "input_size" in message and "4" in message


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_wrong_input_rank(cls):
    theirs, ours = both(cls, 4, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 2, 4, 1))
    assert "2D or 3D" in message


def test_wrong_h0_shape_lstm():
    theirs, ours = both("LSTM", 4, 5, num_layers=2)
    h0, c0 = torch.randn(1, 2, 5), torch.randn(2, 2, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 2, 4), (h0, c0))
    assert "hidden[0]" in message and "(2, 2, 5)" in message


def test_wrong_c0_shape_lstm():
    theirs, ours = both("LSTM", 4, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 2, 6)))
    assert "hidden[1]" in message


@pytest.mark.parametrize("cls", ["GRU", "RNN"])
def test_wrong_h0_shape(cls):
    theirs, ours = both(cls, 4, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 2, 4), torch.randn(1, 3, 5))
    assert "(1, 2, 5)" in message


def test_unbatched_input_with_batched_state():
    theirs, ours = both("GRU", 4, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 4), torch.randn(1, 2, 5))
    assert "2-D" in message


def test_batched_input_with_unbatched_state():
    theirs, ours = both("LSTM", 4, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 2, 4), (torch.randn(1, 5), torch.randn(1, 5)))
    assert "3-D" in message


def test_input_dtype_mismatch():
    theirs, ours = both("LSTM", 4, 5)
    _, message = same_error(theirs, ours, torch.randn(3, 2, 4, dtype=torch.float64))
    assert "dtype" in message


def test_state_dtype_mismatch_names_hx():
    ours = rk.GRU(4, 5)
    with pytest.raises(RuntimeError, match="hx dtype"):
        ours(torch.randn(3, 2, 4), torch.randn(1, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize(
    "lengths, match",
    [
        (torch.tensor([3, 4]), r"lengths must lie in \[0, 3\]"),
        (torch.tensor([3, -1]), r"lengths must lie in \[0, 3\]"),
        (torch.tensor([3, 2, 1]), r"lengths must have shape \(2,\)"),
        (torch.tensor([3.0, 2.0]), "integer tensor"),
    ],
)
def test_bad_lengths(lengths, match):
    model = rk.LSTM(4, 5)
    with pytest.raises((ValueError, TypeError), match=match):
        model(torch.randn(3, 2, 4), lengths=lengths)


def test_lengths_with_packed_sequence_rejected():
    model = rk.GRU(4, 5)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="PackedSequence"):
        model(packed, lengths=torch.tensor([3, 2]))


def test_unknown_backend():
    with pytest.raises(rk.BackendUnavailableError, match="unknown backend 'nope'"):
        rk.LSTM(4, 5, backend="nope")(torch.randn(3, 2, 4))


def test_zero_length_sequence_keeps_initial_state():
    model = rk.GRU(4, 5).double()
    h0 = torch.randn(1, 2, 5, dtype=torch.float64)
    out, h = model(torch.randn(3, 2, 4, dtype=torch.float64), h0, lengths=torch.tensor([3, 0]))
    assert torch.equal(h[:, 1], h0[:, 1])
    assert torch.count_nonzero(out[:, 1]) == 0


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_zero_steps_like_torch(cls):
    theirs, ours = both(cls, 3, 4)
    _, message = same_error(theirs, ours, torch.randn(0, 2, 3))
    assert "sequence length" in message


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_empty_batch_like_torch(cls):
    theirs, ours = both(cls, 3, 4)
    x = torch.randn(5, 0, 3)
    expected, got = theirs(x), ours(x)
    assert got[0].shape == expected[0].shape
