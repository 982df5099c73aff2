"""Differential fuzz (hypothesis): every backend against torch.nn and the
float64 reference for the recurrent layers, and against a float64 softmax
written out here for attention.

Each example draws a configuration (cell, layers, directions, batch_first,
bias, proj_size, lengths including 0, h0 given or not, dtype, input scale
from 1e-3 to 1e30, what fills the padding: zeros, NaN, +-Inf or huge values,
sometimes an Inf in the data itself, sometimes one bad argument) and checks:
- a valid configuration matches torch.nn in float64 (on a PackedSequence, so
  torch never sees the padding; the float64 reference on zero padding where a
  length is 0, which torch cannot pack) to the dtype's tolerance, or to 16x
  torch's own error where the problem is ill-conditioned (CONDITIONING below):
  outputs, final states and the gradients of the input, the initial states
  and every weight;
- an Inf in the data gives torch.nn's pattern of NaN and Inf, in the same
  dtype, also where the Inf state then meets padding (the finite entries'
  accuracy is left to the other configurations: see check_rnn_config);
- a bad argument is a clear error naming it (TypeError / ValueError /
  RuntimeError), never a result.
Nothing past a sequence's end may reach any output or gradient.

CI runs a few seconds of examples; `pytest --runslow tests/test_fuzz.py` runs
the long mode (about 1,500 configurations). The counts (tried / clear error /
wrong) are printed in pytest's summary.
"""
import collections
import contextlib
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels as rk
from rnnkernels.check import TOLERANCE, relative_error

from triton_helpers import interpreter_on

try:  # the triton backend runs CPU tensors in Triton's interpreter (see tests/test_triton_rnn.py)
    with interpreter_on():
        from rnnkernels.triton_kernels import rnn as _triton_rnn  # noqa: F401
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

# (test, backend) -> Counter(tried=..., error=..., wrong=...); conftest prints it.
COUNTS = collections.defaultdict(collections.Counter)

TORCH_NN = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}
DTYPES = {"reference": [torch.float64, torch.float32], "cpu": [torch.float64, torch.float32],
          "triton": [torch.float32]}
PADDINGS = ["zeros", "nan", "inf", "-inf", "huge"]
FILL = {"zeros": 0.0, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 3e38}
# Conditioning yardstick: where a result misses TOLERANCE, torch's own error
# on the same problem measures how ill-conditioned it is, and the backend may
# err 16 times that much. Recurrent layers: torch.nn in float32; in float64
# (no higher precision at hand) the reference, a second float64 formula, with
# its sigmoid taken as 0.5 + 0.5 tanh(x / 2) and its tanh as 2 sigmoid(2x) - 1:
# these formulas and torch's round differently, and a saturated gate's
# 1 - sigmoid or 1 - tanh^2 (its derivative) keeps only a few digits of any
# of them, which the same functions on both sides would hide
# (GRU at input scale 1e3: kernel vs torch.nn 3e-9, reference vs torch.nn
# 3e-16 with torch's sigmoid, 1e-8 with the other). In both dtypes also the
# float64 reference with every gate's value stored in the dtype one ulp off:
# a saturated gate's derivative is its value's last bits, where one run's
# rounding may be lucky on every copy of the inputs (gates_stored_one_ulp_off).
# Attention: autograd's softmax in the dtype, against the truth's stable one.
CONDITIONING = 16
# One bad argument: what changes and the message the error must carry.
CORRUPTIONS = {
    "length past T": r"lengths must lie in",
    "negative length": r"lengths must lie in",
    "h0 of another batch": r"Expected hidden(\[0\])? size",
    "extra h0 layer": r"Expected hidden(\[0\])? size",
    "weight missing": r"expected \d+ weights",
    "dropout out of range": r"dropout should be a number in range",
}


def examples(request, quick: int, slow: int) -> int:
    return slow if request.config.getoption("--runslow") else quick


def fuzz_settings(n: int, shrink: bool = True):
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=n, deadline=None, database=None, phases=phases,
                    suppress_health_check=list(HealthCheck))


@st.composite
def rnn_configs(draw, backend: str, nonfinite_padding=None):
    mode = draw(st.sampled_from(["lstm", "gru", "rnn_tanh", "rnn_relu"]))
    hidden = draw(st.integers(1, 6))
    steps, batch = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    lengths = None
    if nonfinite_padding or draw(st.booleans()):
        lengths = draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    inf_in_data = False
    if nonfinite_padding:  # at least one sequence ends early, so there is padding to poison
        if steps == 1:
            steps = 2
        lengths = [min(n, steps - 1) if i == 0 else n for i, n in enumerate(lengths)]
        padding = draw(st.sampled_from(["nan", "inf", "-inf", "huge", "zeros"]))
        # An Inf inside a sequence makes its state Inf where it ends: the steps
        # after the end must not multiply it into a weight gradient either.
        inf_in_data = padding == "zeros" or draw(st.integers(0, 3)) == 0
        if inf_in_data:  # torch.nn compares the pattern, on a PackedSequence: no length 0
            lengths = [max(n, 1) for n in lengths]
    else:
        padding = draw(st.sampled_from(PADDINGS)) if lengths is not None else "zeros"
        padding = "zeros" if padding in ("nan", "inf", "-inf") else padding
        inf_in_data = lengths is None and draw(st.integers(0, 6)) == 0
    config = dict(
        mode=mode, hidden=hidden, steps=steps, batch=batch, lengths=lengths, padding=padding,
        num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()), batch_first=draw(st.booleans()),
        bias=draw(st.booleans()), input_size=draw(st.integers(1, 5)), with_h0=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)) if mode == "lstm" and hidden > 1 and draw(st.booleans()) else 0,
        dtype=draw(st.sampled_from(DTYPES[backend])),
        scale=10.0 ** draw(st.sampled_from([-3, 0, 0, 0, 3, 30])),
        inf_in_data=inf_in_data,
        corruption=None if nonfinite_padding or draw(st.integers(0, 4)) else draw(st.sampled_from(sorted(CORRUPTIONS))),
    )
    return config


def describe(c) -> str:
    return ", ".join(f"{k}={v}" for k, v in c.items())


def torch_module(c):
    """torch.nn's module for config c in float64, with fresh random weights."""
    kwargs = dict(num_layers=c["num_layers"], bidirectional=c["bidirectional"], bias=c["bias"],
                  batch_first=c["batch_first"], dtype=torch.float64)
    if c["mode"].startswith("rnn"):
        kwargs["nonlinearity"] = c["mode"][4:]
    if c["proj_size"]:
        kwargs["proj_size"] = c["proj_size"]
    module = TORCH_NN[c["mode"]](c["input_size"], c["hidden"], **kwargs)
    with torch.no_grad():  # weights of either sign and every size near torch's init
        for p in module.parameters():
            p.uniform_(-1.0, 1.0).mul_(c["hidden"] ** -0.5)
    return module


def make_inputs(c):
    """x (time-major, float64, padding filled), hx, lengths tensor."""
    T, B = c["steps"], c["batch"]
    x = torch.randn(T, B, c["input_size"], dtype=torch.float64) * c["scale"]
    lengths = torch.tensor(c["lengths"], dtype=torch.int64) if c["lengths"] is not None else None
    if lengths is not None:
        dead = torch.arange(T)[:, None] >= lengths[None, :]
        x[dead] = FILL[c["padding"]]
    if c["inf_in_data"]:
        alive_steps = [(t, b) for b in range(B) for t in range(T) if lengths is None or t < lengths[b]]
        if alive_steps:  # the first step of the first sequence when it ends early (padding tests), else the middle
            t, b = alive_steps[0] if lengths is not None else alive_steps[len(alive_steps) // 2]
            x[t, b, 0] = math.inf
    hx = None
    if c["with_h0"]:
        layers = c["num_layers"] * (2 if c["bidirectional"] else 1)
        h0 = torch.randn(layers, B, c["proj_size"] or c["hidden"], dtype=torch.float64)
        hx = (h0, torch.randn(layers, B, c["hidden"], dtype=torch.float64)) if c["mode"] == "lstm" else h0
    return x, hx, lengths


def leaves_of(x, hx, weights, dtype):
    states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    leaves = [t.detach().to(dtype).requires_grad_() for t in [x] + states + list(weights)]
    x_leaf, state_leaves, weight_leaves = leaves[0], leaves[1 : 1 + len(states)], leaves[1 + len(states) :]
    hx_leaf = None if hx is None else tuple(state_leaves) if isinstance(hx, tuple) else state_leaves[0]
    return leaves, x_leaf, hx_leaf, weight_leaves


def run_rk(c, backend, x, hx, weights, lengths, dtype):
    """Outputs [out, h_n(, c_n)] and the gradients of every leaf, for rnnkernels."""
    leaves, x_leaf, hx_leaf, weight_leaves = leaves_of(x, hx, weights, dtype)
    inp = x_leaf.transpose(0, 1) if c["batch_first"] else x_leaf
    out, state = rk.functional.rnn_forward(
        c["mode"], inp, hx_leaf, weight_leaves, num_layers=c["num_layers"], bidirectional=c["bidirectional"],
        has_bias=c["bias"], proj_size=c["proj_size"], batch_first=c["batch_first"], lengths=lengths,
        backend=backend)
    out = out.transpose(0, 1) if c["batch_first"] else out
    return [out] + (list(state) if isinstance(state, tuple) else [state]), leaves


def run_torch(c, module, x, hx, lengths, dtype):
    """The same for torch.nn (a PackedSequence when there are lengths)."""
    module = module.to(dtype)
    leaves, x_leaf, hx_leaf, _ = leaves_of(x, hx, [], dtype)
    leaves += list(module.parameters())
    for p in module.parameters():
        p.grad = None
    inp = x_leaf.transpose(0, 1) if c["batch_first"] else x_leaf
    if lengths is not None:
        inp = pack_padded_sequence(inp, lengths, batch_first=c["batch_first"], enforce_sorted=False)
    out, state = module(inp, hx_leaf)
    if lengths is not None:
        out = pad_packed_sequence(out, batch_first=c["batch_first"], total_length=c["steps"])[0]
    out = out.transpose(0, 1) if c["batch_first"] else out
    return [out] + (list(state) if isinstance(state, tuple) else [state]), leaves


def one_rounding_apart(t, generator):
    """t (float64) moved by one float32 rounding, either way, element by element."""
    signs = torch.randint(0, 2, t.shape, generator=generator, dtype=torch.int64) * 2 - 1
    return t * (1 + signs * torch.finfo(torch.float32).eps)


TORCH_SIGMOID, TORCH_TANH = torch.sigmoid, torch.tanh


@contextlib.contextmanager
def activations_replaced(sigmoid, tanh):
    """torch.sigmoid and torch.tanh replaced while the block runs (the
    reference backend looks them up at every call)."""
    saved = torch.sigmoid, torch.tanh
    torch.sigmoid, torch.tanh = sigmoid, tanh
    try:
        yield
    finally:
        torch.sigmoid, torch.tanh = saved


def sigmoid_from_tanh():
    """torch.sigmoid as 0.5 + 0.5 tanh(x / 2), and torch.tanh as 2 sigmoid(2x) - 1,
    while the block runs (the float64 yardstick)."""
    return activations_replaced(lambda x: 0.5 + 0.5 * TORCH_TANH(0.5 * x), lambda x: 2 * TORCH_SIGMOID(2 * x) - 1)


class _GateStored(torch.autograd.Function):
    """sigmoid or tanh in float64, its value rounded to `dtype` and moved one
    ulp of it either way (staying in the function's range), its derivative
    taken from that value, as a kernel that saves its gates in dtype does."""

    @staticmethod
    def forward(ctx, x, is_tanh, dtype, generator):
        y = TORCH_TANH(x) if is_tanh else TORCH_SIGMOID(x)  # torch's, not the patched ones
        rounded = y.to(dtype)
        up = torch.randint(0, 2, y.shape, generator=generator, dtype=torch.bool)
        moved = torch.where(up, torch.nextafter(rounded, torch.full_like(rounded, math.inf)),
                            torch.nextafter(rounded, torch.full_like(rounded, -math.inf))).double()
        moved = torch.where(torch.isnan(y), y, moved.clamp(-1.0 if is_tanh else 0.0, 1.0))
        ctx.save_for_backward(moved)
        ctx.is_tanh = is_tanh
        return moved

    @staticmethod
    def backward(ctx, grad):
        y, = ctx.saved_tensors
        return grad * ((1 - y * y) if ctx.is_tanh else y * (1 - y)), None, None, None


def gates_stored_one_ulp_off(dtype, generator):
    """torch.sigmoid and torch.tanh as _GateStored in dtype while the block runs
    (the reference then runs in float64)."""
    return activations_replaced(lambda x: _GateStored.apply(x, False, dtype, generator),
                                lambda x: _GateStored.apply(x, True, dtype, generator))


def gradients(outputs, leaves, upstream):
    dtype = outputs[0].dtype
    grads = torch.autograd.grad(outputs, leaves, [u.to(dtype) for u in upstream], allow_unused=True)
    return [g if g is not None else torch.zeros_like(leaf) for g, leaf in zip(grads, leaves)]


def worst_error(actual, expected):
    return max(relative_error(a, e) for a, e in zip(actual, expected))


def same_nonfinite_pattern(actual, expected):
    """NaN where expected is NaN, and the same infinities."""
    return all(torch.equal(a.isnan(), e.isnan()) and torch.equal(a == math.inf, e == math.inf)
               and torch.equal(a == -math.inf, e == -math.inf) for a, e in zip(actual, expected))


def corrupt(c, x, hx, weights, lengths):
    """Applies c["corruption"]; returns the call's (x, hx, weights, lengths, extra kwargs)."""
    kind, extra = c["corruption"], {}
    if kind == "length past T":
        lengths = torch.full((c["batch"],), c["steps"] + 1)
    elif kind == "negative length":
        lengths = torch.full((c["batch"],), -1)
    elif kind in ("h0 of another batch", "extra h0 layer"):
        dim, grow = (1, c["batch"] + 1) if kind == "h0 of another batch" else (0, None)

        def resize(h):
            shape = list(h.shape)
            shape[dim] = grow if grow is not None else shape[dim] + 1
            return torch.randn(shape, dtype=h.dtype)

        layers = c["num_layers"] * (2 if c["bidirectional"] else 1)
        h0 = hx if hx is not None else (
            (torch.zeros(layers, c["batch"], c["proj_size"] or c["hidden"], dtype=torch.float64),
             torch.zeros(layers, c["batch"], c["hidden"], dtype=torch.float64))
            if c["mode"] == "lstm" else torch.zeros(layers, c["batch"], c["hidden"], dtype=torch.float64))
        hx = tuple(resize(h) for h in h0) if isinstance(h0, tuple) else resize(h0)
    elif kind == "weight missing":
        weights = list(weights)[:-1]
    elif kind == "dropout out of range":
        extra = {"dropout": -0.25}
    return x, hx, weights, lengths, extra


def check_rnn_config(c, backend, counts):
    counts["tried"] += 1
    module = torch_module(c)
    x, hx, lengths = make_inputs(c)
    weights = [p.detach() for p in module._flat_weights]
    if c["corruption"]:
        x, hx, weights, lengths, extra = corrupt(c, x, hx, weights, lengths)
        leaves, x_leaf, hx_leaf, weight_leaves = leaves_of(x, hx, weights, c["dtype"])
        inp = x_leaf.transpose(0, 1) if c["batch_first"] else x_leaf
        try:
            rk.functional.rnn_forward(c["mode"], inp, hx_leaf, weight_leaves, num_layers=c["num_layers"],
                                      bidirectional=c["bidirectional"], has_bias=c["bias"],
                                      proj_size=c["proj_size"], batch_first=c["batch_first"], lengths=lengths,
                                      backend=backend, **extra)
        except (TypeError, ValueError, RuntimeError) as error:
            if not re.search(CORRUPTIONS[c["corruption"]], str(error)):
                counts["wrong"] += 1
                raise AssertionError(f"unclear error for {describe(c)}: {error!r}")
            counts["error"] += 1
            return
        counts["wrong"] += 1
        raise AssertionError(f"no error for {describe(c)}")

    dtype = c["dtype"]
    ours, our_leaves = run_rk(c, backend, x, hx, weights, lengths, dtype)
    upstream = [torch.randn(t.shape, dtype=torch.float64) for t in ours]
    packable = lengths is None or bool((lengths > 0).all())
    if c["inf_in_data"]:
        # Non-finite data: torch.nn's NaN/Inf pattern in the same dtype (overflow is the dtype's).
        theirs, their_leaves = run_torch(c, module, x, hx, lengths, dtype) if packable else (None, None)
        if theirs is None:
            counts["tried"] -= 1  # nothing to compare with
            return
        if not same_nonfinite_pattern(ours + gradients(ours, our_leaves, upstream),
                                      theirs + gradients(theirs, their_leaves, upstream)):
            counts["wrong"] += 1
            raise AssertionError(f"non-finite pattern differs from torch.nn for {describe(c)}")
        # The finite entries' accuracy is the other configurations' business: here
        # they are the few that no Inf touched, often all near saturation, where
        # a gate's derivative (~1e-7 there) is the last bits of its float32 value:
        # on such a tensor alone the relative-to-max measure blows a gate one ulp
        # off up to 0.2-0.4.
        return
    # The truth: torch.nn on a PackedSequence, else (a length is 0) the
    # reference (plain torch ops) on zero padding; float64.
    clean = x.clone()
    if lengths is not None:
        clean[torch.arange(c["steps"])[:, None] >= lengths[None, :]] = 0

    def torch_run(dtype, x=x, clean=clean, hx=hx):
        if packable:
            return run_torch(c, module, x, hx, lengths, dtype)
        return run_rk(c, "reference", clean, hx, weights, lengths, dtype)

    truth, truth_leaves = torch_run(torch.float64)
    truth_all = truth + gradients(truth, truth_leaves, upstream)
    ours_all = ours + gradients(ours, our_leaves, upstream)
    # Both leaf lists hold x, then the states, then the weights in torch.nn's flat order.
    error = worst_error(ours_all, truth_all)
    tolerance = TOLERANCE[dtype]
    if error > tolerance:  # ill-conditioned? (CONDITIONING)
        if dtype == torch.float32:
            # torch.nn on the inputs as given and on two copies of them a float32 rounding
            # apart: one run's error is a draw, now and then a lucky one, and the largest
            # of three tells how well float32 can do on these inputs at all. Then the
            # reference in float64 with every gate stored in float32 one ulp off: a
            # saturated gate's derivative (1 - sigmoid is a few ulps of 1) lives on its
            # stored value's last bits, which the inputs' roundings barely move at large
            # scales (lstm at scale 1e3, sigmoid(12.3): torch.nn erred 7e-4 in all three
            # runs by its lucky rounding there, any gate one ulp off errs 1e-2).
            torch_error, noise = 0.0, torch.Generator().manual_seed(0)
            for draw in range(3):
                xd, cleand, hxd = x, clean, hx
                if draw:
                    xd, cleand = (one_rounding_apart(t, noise) for t in (x, clean))
                    hxd = tuple(one_rounding_apart(h, noise) for h in hx) if isinstance(hx, tuple) else \
                        one_rounding_apart(hx, noise) if hx is not None else None
                theirs, their_leaves = torch_run(torch.float32, xd, cleand, hxd)
                torch_error = max(torch_error,
                                  worst_error(theirs + gradients(theirs, their_leaves, upstream), truth_all))
            yardsticks = [gates_stored_one_ulp_off(torch.float32, noise)]
        else:
            torch_error, noise = 0.0, torch.Generator().manual_seed(0)
            yardsticks = [sigmoid_from_tanh(), gates_stored_one_ulp_off(torch.float64, noise)]
        for yardstick in yardsticks:
            with yardstick:
                theirs, their_leaves = run_rk(c, "reference", clean, hx, weights, lengths, torch.float64)
            torch_error = max(torch_error, worst_error(theirs + gradients(theirs, their_leaves, upstream), truth_all))
        tolerance = max(tolerance, CONDITIONING * torch_error)
    if not error <= tolerance:
        counts["wrong"] += 1
        raise AssertionError(f"error {error:.3g} > {tolerance:.3g} for {describe(c)}")


def rnn_backends():
    names = ["reference", "cpu"]
    return names + (["triton"] if HAS_TRITON else [])


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


QUICK = {"reference": 40, "cpu": 60, "triton": 6}
SLOW = {"reference": 400, "cpu": 700, "triton": 150}


@pytest.mark.parametrize("backend", rnn_backends())
def test_fuzz_rnn_against_torch(backend, request, interpreter):
    counts = COUNTS[("rnn", backend)]

    @fuzz_settings(examples(request, QUICK[backend], SLOW[backend]))
    @given(rnn_configs(backend))
    def run(config):
        check_rnn_config(config, backend, counts)

    run()


@pytest.mark.parametrize("backend", rnn_backends())
def test_fuzz_rnn_nonfinite_padding_reaches_nothing(backend, request, interpreter):
    counts = COUNTS[("rnn, NaN/Inf padding", backend)]

    # No shrinking: a failure is reported as drawn (a known failure must not cost minutes).
    @fuzz_settings(examples(request, QUICK[backend] // 2, SLOW[backend] // 3), shrink=False)
    @given(rnn_configs(backend, nonfinite_padding=True))
    def run(config):
        check_rnn_config(config, backend, counts)

    run()


# ----------------------------------------------------------------- attention

@st.composite
def attention_configs(draw, backend: str):
    batch, tk = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, tk), min_size=batch, max_size=batch)))
    return dict(
        batch=batch, heads=draw(st.sampled_from([0, 1, 2])), tq=draw(st.integers(1, 7)), tk=tk,
        d=draw(st.integers(1, 9)), dv=draw(st.integers(1, 9)), lengths=lengths, causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 1.0, 0.05])), dtype=draw(st.sampled_from(DTYPES[backend])),
        # Not 10 on triton: with scores ~100 every row's softmax is one-hot, the
        # query gradient is ~1e-13, and the kernels' delta = dO . O in float32
        # leaves noise of eps |dO| |V| |K| ~ 1e-5 in it: FlashAttention's usual
        # absolute accuracy, but 1e7 times torch's error relative to dq itself
        # (the cpu kernel takes delta from P and dP in double; issue 16's note).
        magnitude=10.0 ** draw(st.sampled_from([-3, 0, 0] + ([1] if backend != "triton" else []))),
        padding=draw(st.sampled_from(PADDINGS)) if lengths is not None else "zeros",
        return_weights=draw(st.booleans()),
    )


class StableSoftmax(torch.autograd.Function):
    """softmax over the last dim whose backward takes no difference of large
    numbers: dS_j = sum_k P_j P_k (dP_j - dP_k), where autograd's
    P_j (dP_j - sum_k P_k dP_k) cancels for a near one-hot row (relative
    error eps e^gap): the truth for attention's gradients."""

    @staticmethod
    def forward(ctx, scores):
        weights = torch.softmax(scores, -1).nan_to_num(0.0)  # a row with no visible key: zeros
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        return (p[..., :, None] * p[..., None, :] * (grad[..., :, None] - grad[..., None, :])).sum(-1)


def attention_truth(c, q, k, v, lengths, stable=True):
    """Softmax attention written out here (not rnnkernels' reference), with
    StableSoftmax's backward or (stable=False) autograd's, as torch users get:
    visible[i, j] = j < length and (not causal or j <= i + Tk - Tq)."""
    scale = c["scale"] if c["scale"] is not None else 1.0 / math.sqrt(c["d"])
    rows, cols = torch.arange(c["tq"])[:, None], torch.arange(c["tk"])[None, :]
    visible = torch.ones(c["tq"], c["tk"], dtype=torch.bool)
    if c["causal"]:
        visible = cols <= rows + (c["tk"] - c["tq"])
    visible = visible.expand(c["batch"], c["tq"], c["tk"])
    if lengths is not None:
        visible = visible & (cols[None] < lengths[:, None, None])
    if q.dim() == 4:
        visible = visible[:, None]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, -math.inf)
    weights = StableSoftmax.apply(scores) if stable else torch.softmax(scores, -1).nan_to_num(0.0)
    return weights @ v, weights


def check_attention_config(c, backend, counts):
    counts["tried"] += 1
    lead = (c["batch"], c["heads"]) if c["heads"] else (c["batch"],)
    q, k, v = (torch.randn(*lead, steps, dim, dtype=torch.float64) * c["magnitude"]
               for steps, dim in ((c["tq"], c["d"]), (c["tk"], c["d"]), (c["tk"], c["dv"])))
    lengths = torch.tensor(c["lengths"]) if c["lengths"] is not None else None
    k_clean, v_clean = k.clone(), v.clone()
    if lengths is not None:
        dead = torch.arange(c["tk"])[None, :] >= lengths[:, None]  # (B, Tk)
        dead = dead[:, None].expand(c["batch"], c["heads"], c["tk"]) if c["heads"] else dead
        k[dead], v[dead] = FILL[c["padding"]], FILL[c["padding"]]
        k_clean[dead], v_clean[dead] = 0.0, 0.0
    truth_leaves = [t.clone().requires_grad_() for t in (q, k_clean, v_clean)]
    truth = attention_truth(c, *truth_leaves, lengths)
    our_leaves = [t.to(c["dtype"]).requires_grad_() for t in (q, k, v)]
    result = rk.dot_product_attention(*our_leaves, key_lengths=lengths, causal=c["causal"], scale=c["scale"],
                                      return_weights=c["return_weights"], backend=backend)
    ours = list(result) if c["return_weights"] else [result]
    truth = list(truth) if c["return_weights"] else [truth[0]]
    upstream = [torch.randn(t.shape, dtype=torch.float64) for t in truth]
    truth_all = truth + gradients(truth, truth_leaves, upstream)
    error = worst_error(ours + gradients(ours, our_leaves, upstream), truth_all)
    tolerance = TOLERANCE[c["dtype"]]
    if error > tolerance:  # ill-conditioned? (CONDITIONING)
        # torch in the dtype on the inputs as given and on two copies a float32 rounding
        # apart: one run's error is a draw, now and then a lucky one (a softmax
        # backward near saturation cancels to |dP| times the dtype's epsilon, or to much
        # less when the roundings happen to agree), and the largest of three tells how
        # well the dtype can do on these inputs at all.
        noise = torch.Generator().manual_seed(0)
        torch_error = 0.0
        for draw in range(3):
            moved = [one_rounding_apart(t, noise) if draw else t for t in (q, k_clean, v_clean)]
            leaves = [t.to(c["dtype"]).requires_grad_() for t in moved]
            theirs = attention_truth(c, *leaves, lengths, stable=False)
            theirs = list(theirs) if c["return_weights"] else [theirs[0]]
            torch_error = max(torch_error, worst_error(theirs + gradients(theirs, leaves, upstream), truth_all))
        tolerance = max(tolerance, CONDITIONING * torch_error)
    if not error <= tolerance:
        counts["wrong"] += 1
        raise AssertionError(f"error {error:.3g} > {tolerance:.3g} for {describe(c)}")


# Triton's attention kernels call triton.language helpers that are interpreted
# only when triton itself was imported with TRITON_INTERPRET=1, so without a GPU
# they are fuzzed here only in a process started with it (as
# tests/test_triton_attention.py does, the next test starts one).
TRITON_ATTENTION_HERE = HAS_TRITON and (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available())


def attention_backends():
    return ["reference", "cpu"] + (["triton"] if TRITON_ATTENTION_HERE else [])


@pytest.mark.parametrize("backend", attention_backends())
def test_fuzz_attention_against_softmax(backend, request):
    counts = COUNTS[("attention", backend)]

    @fuzz_settings(examples(request, 40 if backend != "triton" else 6, 300 if backend != "triton" else 60))
    @given(attention_configs(backend))
    def run(config):
        check_attention_config(config, backend, counts)

    run()


@pytest.mark.skipif(not HAS_TRITON or TRITON_ATTENTION_HERE, reason="triton missing, or fuzzed in this process")
def test_fuzz_triton_attention_in_an_interpreted_process(request):
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
               "-k", "test_fuzz_attention_against_softmax and triton"]
    command += ["--runslow"] if request.config.getoption("--runslow") else []
    child = subprocess.run(command, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                           timeout=3000, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    summary = re.search(r"attention\s+triton\s+tried\s+(\d+)\s+clear error\s+(\d+)\s+wrong\s+(\d+)", child.stdout)
    if summary:
        COUNTS[("attention", "triton")].update(dict(zip(("tried", "error", "wrong"), map(int, summary.groups()))))
    assert child.returncode == 0 and re.search(r"\b1 passed", child.stdout), child.stdout[-6000:] + child.stderr[-2000:]
