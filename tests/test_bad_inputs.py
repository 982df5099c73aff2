"""Bad input to the functional API and to attention: a table of cases, each a
clear error naming the argument (torch.nn's message where torch has one),
raised before any layer or kernel runs, on every backend, eager and compiled,
leaving the caller's tensors untouched (issue 16 items 7, 8, 9)."""
import pytest
import torch

import rnnkernels as rk
from rnnkernels import backends
from rnnkernels.functional import rnn_forward

T, B, I, H = 5, 3, 4, 5


try:
    import triton  # noqa: F401
    BACKENDS = ["reference", "cpu", "triton"]
except ImportError:
    BACKENDS = ["reference", "cpu"]


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """The triton backend takes CPU tensors under the interpreter; no case here reaches a kernel."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def lstm_weights(layers=1, directions=1, bias=True, input_size=I, hidden=H, proj=0):
    out = proj or hidden
    flat = []
    for layer in range(layers):
        size = input_size if layer == 0 else out * directions
        for _ in range(directions):
            flat += [torch.randn(4 * hidden, size), torch.randn(4 * hidden, out)]
            flat += [torch.randn(4 * hidden), torch.randn(4 * hidden)] if bias else []
            flat += [torch.randn(proj, hidden)] if proj else []
    return flat


def gru_weights(bias=True):
    return [torch.randn(3 * H, I), torch.randn(3 * H, H)] + ([torch.randn(3 * H), torch.randn(3 * H)] if bias else [])


def x3():
    return torch.randn(T, B, I)


def states(layers=1, batch=B, size=H, dims=3):
    shape = (layers, batch, size) if dims == 3 else (layers, size)
    return torch.randn(shape), torch.randn(shape)


F = rk.functional
# id -> (call(backend) returning the thunk's arguments, exception type, message regex)
RNN_CASES = {
    "extra hx layers": (lambda: (F.lstm, (x3(), states(layers=2), lstm_weights()), {}),
                        RuntimeError, r"Expected hidden\[0\] size \(1, 3, 5\), got \[2, 3, 5\]"),
    "too few hx layers": (lambda: (F.lstm, (x3(), states(layers=1), lstm_weights(layers=2)), {"num_layers": 2}),
                          RuntimeError, r"Expected hidden\[0\] size \(2, 3, 5\), got \[1, 3, 5\]"),
    "c0 of the wrong size": (lambda: (F.lstm, (x3(), (torch.randn(1, B, H), torch.randn(1, B, H + 1)),
                                               lstm_weights()), {}),
                             RuntimeError, r"Expected hidden\[1\] size \(1, 3, 5\), got \[1, 3, 6\]"),
    "has_bias=False with biases": (lambda: (F.lstm, (x3(), None, lstm_weights()), {"has_bias": False}),
                                   ValueError, r"expected 2 weights .* got 4"),
    "has_bias=True without biases": (lambda: (F.gru, (x3(), None, gru_weights(bias=False)), {}),
                                     ValueError, r"expected 4 weights .* got 2"),
    "bidirectional without reverse weights": (lambda: (F.lstm, (x3(), None, lstm_weights()),
                                                       {"bidirectional": True}),
                                              ValueError, r"expected 8 weights \(1 layer\(s\) x 2 direction"),
    "negative dropout": (lambda: (F.lstm, (x3(), None, lstm_weights(layers=2)), {"num_layers": 2, "dropout": -0.5}),
                         ValueError, r"dropout should be a number in range \[0, 1\]"),
    "dropout above 1": (lambda: (F.gru, (x3(), None, gru_weights()), {"dropout": 1.5, "training": True}),
                        ValueError, r"dropout should be a number in range \[0, 1\]"),
    "dropout a bool": (lambda: (F.gru, (x3(), None, gru_weights()), {"dropout": True}),
                       ValueError, r"dropout should be a number in range \[0, 1\]"),
    "batch-1 h0 for batch 3": (lambda: (F.gru, (x3(), torch.randn(1, 1, H), gru_weights()), {}),
                               RuntimeError, r"Expected hidden size \(1, 3, 5\), got \[1, 1, 5\]"),
    "1-tuple GRU hx": (lambda: (F.gru, (x3(), (torch.randn(1, B, H),), gru_weights()), {}),
                       TypeError, r"hx must be a tensor h0 for gru .* got a tuple of 1"),
    "1-tuple GRU hx, unbatched": (lambda: (F.gru, (torch.randn(T, I), (torch.randn(1, H),), gru_weights()), {}),
                                  TypeError, r"hx must be a tensor h0 for gru .* got a tuple of 1"),
    "LSTM hx a tensor": (lambda: (F.lstm, (x3(), torch.randn(1, B, H), lstm_weights()), {}),
                         TypeError, r"hx must be a tuple \(h0, c0\) of two tensors for lstm, got Tensor"),
    "LSTM hx of three": (lambda: (F.lstm, (x3(), (*states(), torch.randn(1, B, H)), lstm_weights()), {}),
                         TypeError, r"hx must be a tuple \(h0, c0\) of two tensors for lstm, got a tuple of 3"),
    "unbatched input, batched hx": (lambda: (F.gru, (torch.randn(T, I), torch.randn(1, 1, H), gru_weights()), {}),
                                    RuntimeError, r"For unbatched 2-D input, hx should also be 2-D but got 3-D tensor"),
    "batched input, unbatched hx": (lambda: (F.lstm, (x3(), states(dims=2), lstm_weights()), {}),
                                    RuntimeError,
                                    r"For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 2-D\) tensors"),
    "4-D input": (lambda: (F.lstm, (torch.randn(T, B, I, 1), None, lstm_weights()), {}),
                  ValueError, r"LSTM: Expected input to be 2D or 3D, got 4D instead"),
    "integer input": (lambda: (F.gru, (torch.ones(T, B, I, dtype=torch.int64), None, gru_weights()), {}),
                      TypeError, r"input must be a floating-point tensor, got torch.int64"),
    "wrong input size": (lambda: (F.lstm, (torch.randn(T, B, I + 2), None, lstm_weights()), {}),
                         RuntimeError, r"input.size\(-1\) must be equal to input_size. Expected 4, got 6"),
    "a layer-1 reverse weight of the wrong shape": (
        lambda: (F.lstm, (x3(), None, lstm_weights(2, 2)[:-3] + [torch.randn(4 * H, H + 1)] + lstm_weights(2, 2)[-2:]),
                 {"num_layers": 2, "bidirectional": True}),
        ValueError, r"weight_hh_l1_reverse must have shape \(20, 5\), got \(20, 6\)"),
    "weights of another dtype": (lambda: (F.gru, (x3(), None, [w.double() for w in gru_weights()]), {}),
                                 ValueError, r"RNN input dtype \(torch.float32\) does not match weight dtype"),
    "h0 of another dtype": (lambda: (F.lstm, (x3(), tuple(s.double() for s in states()), lstm_weights()), {}),
                            RuntimeError, r"hidden\[0\] dtype \(torch.float64\) does not match input dtype"),
    "num_layers 0": (lambda: (F.lstm, (x3(), None, lstm_weights()), {"num_layers": 0}),
                     ValueError, r"num_layers must be greater than zero"),
    "proj_size for gru": (lambda: (rnn_forward, ("gru", x3(), None, gru_weights()), {"proj_size": 2}),
                          ValueError, r"proj_size argument is only supported for LSTM"),
    "proj_size not below hidden": (lambda: (F.lstm, (x3(), None, lstm_weights(proj=H)), {"proj_size": H}),
                                   ValueError, r"proj_size has to be smaller than hidden_size"),
    "lengths past T": (lambda: (F.lstm, (x3(), None, lstm_weights()), {"lengths": torch.tensor([9, 1, 2])}),
                       ValueError, r"lengths must lie in \[0, 5\] .* got min 1, max 9"),
    "negative length": (lambda: (F.gru, (x3(), None, gru_weights()), {"lengths": torch.tensor([5, -1, 2])}),
                        ValueError, r"lengths must lie in \[0, 5\] .* got min -1"),
    "lengths of the wrong count": (lambda: (F.gru, (x3(), None, gru_weights()), {"lengths": torch.tensor([5, 1])}),
                                   ValueError, r"lengths must have shape \(3,\)"),
    "float lengths": (lambda: (F.gru, (x3(), None, gru_weights()), {"lengths": torch.tensor([5.0, 1.0, 2.0])}),
                      TypeError, r"lengths must be an integer tensor"),
    "two lengths for unbatched input": (lambda: (F.lstm, (torch.randn(T, I), None, lstm_weights()),
                                                 {"lengths": torch.tensor([2, 3])}),
                                        ValueError, r"lengths must be a single length .* got shape \(2,\)"),
    "weights a tensor": (lambda: (F.gru, (x3(), None, torch.randn(15, 4)), {}),
                         TypeError, r"weights must be a list or tuple of tensors"),
    "zero steps": (lambda: (F.gru, (torch.randn(0, B, I), None, gru_weights()), {}),
                   RuntimeError, r"Expected sequence length to be larger than 0 in RNN"),
    "unknown nonlinearity": (lambda: (F.rnn, (x3(), None, [torch.randn(H, I), torch.randn(H, H)]),
                                      {"nonlinearity": "sigmoid", "has_bias": False}),
                             ValueError, r"nonlinearity must be 'tanh' or 'relu'"),
}


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_in(o)]
    return []


@pytest.fixture
def layer_calls(monkeypatch):
    """Counts the layers that reach a backend."""
    calls = []
    real = backends.rnn_layer

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "rnn_layer", spy)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(RNN_CASES))
def test_functional_bad_input_is_a_clear_error_before_any_layer(name, backend, layer_calls):
    make, error, message = RNN_CASES[name]
    fn, args, kwargs = make()
    before = [t.clone() for t in tensors_in((args, kwargs))]
    with pytest.raises(error, match=message):
        fn(*args, backend=backend, **kwargs)
    assert layer_calls == [], "a layer ran before the error"
    assert all(torch.equal(a, b) for a, b in zip(before, tensors_in((args, kwargs))))


def test_unbatched_functional_matches_torch_ranks():
    # The reference backend used to return (1, H) states for unbatched input given a batch-1 hx.
    gru = torch.nn.GRU(I, H)
    x, h0 = torch.randn(T, I), torch.randn(1, H)
    out, h = F.gru(x, h0, gru._flat_weights, backend="reference")
    want_out, want_h = gru(x, h0)
    assert out.shape == want_out.shape and h.shape == want_h.shape
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(h, want_h)


# ----------------------------------------------------------------- attention

def qkv(batch=2, tq=3, tk=7, d=4, dv=4, dtype=torch.float32):
    return torch.randn(batch, tq, d, dtype=dtype), torch.randn(batch, tk, d, dtype=dtype), torch.randn(batch, tk, dv,
                                                                                                       dtype=dtype)


attend = rk.dot_product_attention
ATTENTION_CASES = {
    "D = 0": (lambda: (qkv(d=0), {}), ValueError, r"query and key need a feature dim D >= 1"),
    "negative key length": (lambda: (qkv(), {"key_lengths": torch.tensor([7, -1])}),
                            ValueError, r"key_lengths must lie in \[0, 7\] .* got min -1, max 7"),
    "key length past Tk": (lambda: (qkv(), {"key_lengths": torch.tensor([8, 1])}),
                           ValueError, r"key_lengths must lie in \[0, 7\]"),
    "key_lengths of the wrong count": (lambda: (qkv(), {"key_lengths": torch.tensor([7, 1, 1])}),
                                       ValueError, r"key_lengths must have shape \(2,\)"),
    "float key_lengths": (lambda: (qkv(), {"key_lengths": torch.tensor([7.0, 1.0])}),
                          TypeError, r"key_lengths must be an integer tensor"),
    "integer query": (lambda: ((torch.ones(2, 3, 4, dtype=torch.int64),) + qkv()[1:], {}),
                      TypeError, r"query must be a floating-point tensor"),
    "2-D query": (lambda: ((torch.randn(3, 4),) + qkv()[1:], {}), ValueError, r"query must be 3-D .* or 4-D"),
    "3-D query, 4-D key": (lambda: ((qkv()[0], qkv()[1][:, None], qkv()[2][:, None]), {}),
                           ValueError, r"must all be 3-D or all 4-D"),
    "dtypes differ": (lambda: ((qkv()[0].double(),) + qkv()[1:], {}), TypeError, r"must share a dtype"),
    "batches differ": (lambda: ((torch.randn(3, 3, 4),) + qkv()[1:], {}), ValueError, r"must agree on \(batch"),
    "key dim differs": (lambda: ((torch.randn(2, 3, 5),) + qkv()[1:], {}),
                        ValueError, r"key's last dim must equal query's \(5\), got 4"),
    "value steps differ": (lambda: (qkv()[:2] + (torch.randn(2, 6, 4),), {}),
                           ValueError, r"value must have as many steps as key \(7\), got 6"),
    "scale NaN": (lambda: (qkv(), {"scale": float("nan")}), ValueError, r"scale must be a finite number"),
    "scale Inf": (lambda: (qkv(), {"scale": float("inf")}), ValueError, r"scale must be a finite number"),
    "query a list": (lambda: (([[1.0]],) + qkv()[1:], {}), TypeError, r"query must be a tensor, got list"),
}


@pytest.fixture
def attention_calls(monkeypatch):
    calls = []
    real = backends.resolve

    def spy(*args, **kwargs):
        name, fn = real(*args, **kwargs)

        def counted(*a, **k):
            calls.append(name)
            return fn(*a, **k)

        return name, counted

    monkeypatch.setattr(backends, "resolve", spy)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ATTENTION_CASES))
def test_attention_bad_input_is_a_clear_error_before_any_kernel(name, backend, attention_calls):
    make, error, message = ATTENTION_CASES[name]
    args, kwargs = make()
    before = [t.clone() for t in tensors_in((args, kwargs))]
    with pytest.raises(error, match=message):
        attend(*args, backend=backend, **kwargs)
    assert attention_calls == []
    assert all(torch.equal(a, b) for a, b in zip(before, tensors_in((args, kwargs))))


LUONG_CASES = {
    "integer query": (lambda: (torch.ones(2, 6, dtype=torch.int64), torch.randn(2, 7, 5)), {},
                      TypeError, r"query must be a floating-point tensor, got torch.int64"),
    "integer memory": (lambda: (torch.randn(2, 6), torch.ones(2, 7, 5, dtype=torch.int64)), {},
                       TypeError, r"memory must be a floating-point tensor"),
    "bad memory_lengths": (lambda: (torch.randn(2, 6), torch.randn(2, 7, 5)),
                           {"memory_lengths": torch.tensor([7, -1])},
                           ValueError, r"memory_lengths must lie in \[0, 7\] \(the steps of keys\)"),
    "memory_lengths of the wrong count": (lambda: (torch.randn(2, 6), torch.randn(2, 7, 5)),
                                          {"memory_lengths": torch.tensor([7])},
                                          ValueError, r"memory_lengths must have shape \(2,\)"),
    "query and memory batches differ": (lambda: (torch.randn(3, 6), torch.randn(2, 7, 5)), {},
                                        ValueError, r"query, keys and memory must agree on \(batch"),
    "keys of the wrong shape": (lambda: (torch.randn(2, 6), torch.randn(2, 7, 5)), {"keys": torch.randn(2, 6, 6)},
                                ValueError, r"keys must be \(B, Tk, 6\)"),
}


@pytest.mark.parametrize("name", sorted(LUONG_CASES))
def test_luong_attention_errors_name_its_own_arguments(name, attention_calls):
    make, kwargs, error, message = LUONG_CASES[name]
    module = rk.nn.Attention(6, 5)
    query, memory = make()
    with pytest.raises(error, match=message):
        module(query, memory, **kwargs)
    assert attention_calls == []


# ------------------------------------------------------------------ compiled

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_lengths_out_of_range_raise_under_torch_compile(backend):
    # The graph is traced with valid lengths first; the same graph must then
    # refuse bad ones (a check skipped while tracing would pass them silently).
    weights = lstm_weights()

    def rnn(x, lengths):
        return F.lstm(x, None, weights, lengths=lengths, backend=backend)[0]

    def attention(q, k, v, key_lengths):
        return attend(q, k, v, key_lengths=key_lengths, backend=backend)

    compiled_rnn = torch.compile(rnn, backend="aot_eager", fullgraph=True)
    compiled_attention = torch.compile(attention, backend="aot_eager", fullgraph=True)
    x = x3()
    torch.testing.assert_close(compiled_rnn(x, torch.tensor([5, 1, 2])), rnn(x, torch.tensor([5, 1, 2])))
    with pytest.raises((ValueError, RuntimeError), match=r"lengths must lie in \[0, 5\]"):
        compiled_rnn(x, torch.tensor([9, 1, 2]))
    q, k, v = qkv()
    compiled_attention(q, k, v, torch.tensor([7, 2]))
    with pytest.raises((ValueError, RuntimeError), match=r"key_lengths must lie in \[0, 7\]"):
        compiled_attention(q, k, v, torch.tensor([7, -1]))


def test_shape_errors_hold_under_torch_compile():
    weights = lstm_weights()
    compiled = torch.compile(lambda x, hx: F.lstm(x, hx, weights, backend="reference")[0], backend="eager")
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 3, 5\), got \[2, 3, 5\]"):
        compiled(x3(), states(layers=2))
