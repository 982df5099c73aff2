"""Backend registry: which implementation runs a recurrent layer or attention.

A backend is a name ("reference", "cpu", "cuda", "triton") under which
implementations of ops register themselves:

    register(op, name, fn, priority={"cpu": 10}, unavailable_reason=lambda device, dtype: None)
    unregister(op, name)

op "rnn"        fn(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
                -> (out, h_n, c_n); the contract of rnnkernels.reference.rnn_layer
op "rnn_ext"    fn(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras)
                -> (out, h_n, c_n, cell_states); what a layer adds to torch.nn's cell
                (LayerNorm, zoneout, every step's c: rnnkernels.reference.LayerExtras),
                the contract of rnnkernels.reference.rnn_layer_extended
op "attention"  fn(query, key, value, key_lengths, causal, scale, return_weights)
                -> (context, weights or None); 4-D inputs, the contract of
                rnnkernels.attention.reference_attention

`unavailable_reason(device, dtype)` is None when the implementation is built
and runs on that device and dtype (dtype None: some dtype), else a sentence
saying why not (it is shown to the user).
`priority[device.type]` ranks implementations for backend="auto"; higher wins.

Choosing a backend, most specific first: the per-call `backend=` argument, a
module's `backend=` when it is not "auto", the innermost `use_backend(...)`
block, then "auto". Naming a backend that cannot run the call is an error
(BackendUnavailableError): there is never a silent fallback.
"""
import contextlib
import importlib
import threading
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

# Modules under rnnkernels.backends whose import registers implementations. A
# kernel issue adds its module here; nothing else in the package changes.
_BACKEND_MODULES = ("reference", "cpu", "cuda", "triton", "cpu_attention", "triton_attention")

OPS = ("rnn", "rnn_ext", "attention")


class BackendUnavailableError(RuntimeError):
    """The requested backend is unknown, not built, or cannot run on this device."""


class Implementation(NamedTuple):
    fn: Callable
    priority: Dict[str, int]
    unavailable_reason: Callable[[torch.device, Optional[torch.dtype]], Optional[str]]


_impls: Dict[Tuple[str, str], Implementation] = {}
# (op, device type) -> names best first: the ranking changes only with
# register(); each implementation, and whether it can run (an environment
# variable, an import), is looked up on every call.
_ranked: Dict[Tuple[str, str], List[str]] = {}
_loaded = False
_state = threading.local()


def register(op: str, name: str, fn: Callable, priority: Dict[str, int],
             unavailable_reason: Callable[[torch.device, Optional[torch.dtype]], Optional[str]] = (
                 lambda device, dtype: None)) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    _impls[(op, name)] = Implementation(fn, priority, unavailable_reason)
    _ranked.clear()


def unregister(op: str, name: str) -> None:
    """Removes what register(op, name, ...) added (tests, plug-ins)."""
    del _impls[(op, name)]
    _ranked.clear()


def _load() -> Dict[Tuple[str, str], Implementation]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module_name in _BACKEND_MODULES:
            importlib.import_module(f"{__name__}.{module_name}")
    return _impls


def names() -> List[str]:
    """Every backend name this version knows, built or not."""
    return sorted({name for _, name in _load()})


def available(device=None, op: str = "rnn", dtype: Optional[torch.dtype] = None) -> List[str]:
    """Backends that can run `op` on `device` (default: on the CPU, and on
    CUDA when a GPU is present) for `dtype` (default: any), best first."""
    if device is not None:
        devices = [torch.device(device)]
    else:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    found: List[str] = []
    for dev in devices:
        for name in _ranked_names(op, dev.type):
            if name not in found and _impls[(op, name)].unavailable_reason(dev, dtype) is None:
                found.append(name)
    return found


def _ranked_names(op: str, device_type: str) -> List[str]:
    """The names of `op`'s implementations, best first for `device_type`."""
    ranked = _ranked.get((op, device_type))
    if ranked is None:
        named = sorted(((name, impl) for (o, name), impl in _load().items() if o == op),
                       key=lambda item: -item[1].priority.get(device_type, -1))
        ranked = _ranked[(op, device_type)] = [name for name, _ in named]
    return ranked


def unavailable_reason(name: str, device, op: str = "rnn", dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """None when backend `name` can run `op` on `device` for `dtype`, else why not."""
    impls = _load()
    if name not in names():
        return f"unknown backend {name!r}; known backends: {', '.join(names())} (or 'auto')"
    if (op, name) not in impls:
        return f"backend {name!r} does not implement {op}"
    return impls[(op, name)].unavailable_reason(torch.device(device), dtype)


@contextlib.contextmanager
def use_backend(name: str):
    """Runs the block on backend `name`, except calls and modules naming their own."""
    if name != "auto" and name not in names():
        raise BackendUnavailableError(
            f"unknown backend {name!r}; known backends: {', '.join(names())} (or 'auto')"
        )
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def current() -> str:
    """The backend a call with no explicit choice asks for ("auto" outside use_backend)."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else "auto"


def resolve(requested: Optional[str], device, op: str = "rnn", dtype: Optional[torch.dtype] = None
            ) -> Tuple[str, Callable]:
    """(name, fn) of the implementation that runs `op` on `device` for `dtype`."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    if requested is None or requested == "auto":
        requested = current()
    if requested == "auto":  # the best that can run: a cell's step asks this every call
        for name in _ranked_names(op, device.type):
            impl = _impls[(op, name)]
            if impl.unavailable_reason(device, dtype) is None:
                return name, impl.fn
        raise BackendUnavailableError(f"no backend can run {op} on {device.type} in {dtype}")
    else:
        reason = unavailable_reason(requested, device, op, dtype)
        if reason is not None:
            here = ", ".join(available(device, op, dtype)) or "none"
            raise BackendUnavailableError(
                f"backend {requested!r} cannot run {op} on {device.type} in {dtype}: {reason}. "
                f"Available there: {here}"
            )
    return requested, _impls[(op, requested)].fn


def rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, backend=None, extras=None):
    """One layer, one direction on the chosen backend (contract: rnnkernels.reference.rnn_layer).
    With `extras` (a LayerExtras; no w_hr) it runs op "rnn_ext" and returns
    (out, h_n, c_n, cell_states)."""
    if extras is not None:
        _, fn = resolve(backend, x.device, "rnn_ext", x.dtype)
        return fn(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras)
    _, fn = resolve(backend, x.device, "rnn", x.dtype)
    return fn(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
