"""The backend registry: choice, precedence, errors."""
import pytest
import torch

import rnnkernels as rk
from rnnkernels import backends


def record_calls(monkeypatch):
    """Wraps every registered rnn implementation to record which one ran."""
    calls = []
    for (op, name), impl in list(backends._load().items()):
        if op != "rnn":
            continue

        def wrapped(*args, _fn=impl.fn, _name=name):
            calls.append(_name)
            return _fn(*args)

        monkeypatch.setitem(backends._impls, (op, name), impl._replace(fn=wrapped))
    return calls


def test_reference_always_available():
    assert "reference" in backends.available("cpu")
    assert "reference" in backends.available("cpu", op="attention")


def test_auto_picks_highest_priority(monkeypatch):
    calls = record_calls(monkeypatch)
    rk.GRU(3, 4)(torch.randn(2, 1, 3))
    assert calls == [backends.available("cpu", dtype=torch.float32)[0]] * 1


def test_precedence_call_over_module_over_context(monkeypatch):
    calls = record_calls(monkeypatch)
    x = torch.randn(2, 1, 3)
    auto_model, pinned = rk.RNN(3, 4), rk.RNN(3, 4, backend="reference")
    with rk.use_backend("reference"):
        auto_model(x)
    assert calls == ["reference"]
    with rk.use_backend("auto"):
        pinned(x)
    assert calls[-1] == "reference"
    calls.clear()
    pinned(x, backend="auto")
    assert calls == [backends.available("cpu", dtype=torch.float32)[0]]


def test_context_manager_rejects_unknown_name():
    with pytest.raises(rk.BackendUnavailableError, match="unknown backend"):
        with rk.use_backend("fastest"):
            pass


def test_unavailable_backend_is_an_error_not_a_fallback(monkeypatch):
    backends.register("rnn", "broken", lambda *a: None, priority={"cpu": 99},
                      unavailable_reason=lambda device, dtype: "not built in this test")
    try:
        with pytest.raises(rk.BackendUnavailableError, match="not built in this test"):
            rk.LSTM(3, 4, backend="broken")(torch.randn(2, 1, 3))
        assert "broken" not in backends.available("cpu")
    finally:
        backends.unregister("rnn", "broken")


def test_compiled_extension_is_built():
    """make install builds rnnkernels._C; a missing build must fail, not skip the kernel tests."""
    from rnnkernels import _ext

    assert _ext.load_error() is None
    assert backends.available("cpu", dtype=torch.float32)[0] == "cpu"
    assert "cpu" in backends.available("cpu", op="attention", dtype=torch.float32)
