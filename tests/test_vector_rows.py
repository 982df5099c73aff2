"""The AVX-512 LSTM and GRU forward rows (csrc/cpu/vector_rows.h) against the
scalar-vectorised rows they replace on AVX-512 CPUs (set_cpu_vector_rows
switches between them) and against float64: one step whose gates see
pre-activations over [-100, 100], the clamps and the special values, and
states whose tanh saturates; H = 203 leaves a masked tail of 11 units."""
import contextlib

import pytest
import torch

import rnnkernels  # noqa: F401  (loads torch.ops.rnnkernels)
from cpu_features import cpu_flags

forward_op = torch.ops.rnnkernels.rnn_layer_forward
H = 203
TANH_ONE = 9.0109138488769531  # the least float whose tanh rounds to 1 in float32

# Without these the vector rows stay off: both paths below are then the scalar
# rows, which the float64 comparisons still check.
HAS_VECTOR_ROWS = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags()


@contextlib.contextmanager
def vector_rows(on: bool):
    was = torch.ops.rnnkernels.cpu_vector_rows()
    torch.ops.rnnkernels.set_cpu_vector_rows(on)
    try:
        yield
    finally:
        torch.ops.rnnkernels.set_cpu_vector_rows(was)


def step_inputs(mode, dtype, w_hh_scale=0.0, b_hh_scale=0.0):
    """One step's arguments. x (1, B, H) holds the pre-activations: W_ih stacks
    scaled identities, so gate g of unit j sees scale_g * x[j] + b_ih[gH + j];
    b_ih is 0 but for +-Inf and NaN on a few units of each gate (in x they
    would reach every unit of the row through the GEMM, as Inf * 0 = NaN).
    The state (LSTM's c0, GRU's h0) spans tiny to huge; LSTM's h0 is 0, and
    GRU's W_hh and b_hh are w_hh_scale and b_hh_scale times randn (0: gh = 0,
    every gate's argument exact; LSTM's b_hh is 0 too)."""
    finite_special = torch.tensor([0.0, -0.0, 88.0, -88.0, 89.0, -89.0, TANH_ONE, -TANH_ONE, 0.625, -0.625,
                                   1e-30, -1e-30, 3e38, -3e38])
    x = torch.cat([torch.empty(4 * H - finite_special.numel()).uniform_(-100, 100), torch.empty(H).uniform_(-1, 1),
                   finite_special]).view(1, 5, H)
    state = torch.cat([torch.empty(3, H).uniform_(-20, 20), torch.logspace(-30, 30, H).view(1, H) *
                       torch.randn(1, H).sign(), torch.randn(1, H)]).view(5, H)
    eye = torch.eye(H)
    if mode == "lstm":
        h0, c0, w_ih, w_hh = torch.zeros(5, H), state, torch.cat([eye, -eye, 2 * eye, 0.5 * eye]), torch.randn(4 * H, H)
    else:
        h0, c0, w_ih, w_hh = state, None, torch.cat([eye, -eye, 0.5 * eye]), w_hh_scale * torch.randn(3 * H, H)
    b_ih = torch.zeros(w_ih.shape[0]).view(-1, H)
    b_ih[:, 7:10] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    b_hh = b_hh_scale * torch.randn(w_ih.shape[0])
    return mode, [t.to(dtype) if t is not None else None for t in (x, h0, c0, w_ih, w_hh, b_ih.flatten(), b_hh)]


def run(case, training):
    """(out, the state after the step: c for LSTM, h for GRU, saved gates)."""
    mode, (x, h0, c0, w_ih, w_hh, b_ih, b_hh) = case
    out, h_n, c_n, _, _, gates, _ = forward_op(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, None, False, training)
    return out, (c_n if mode == "lstm" else h_n), gates


def as_double(case):
    mode, tensors = case
    return mode, [t.double() if t is not None else None for t in tensors]


def both_paths(inputs, training):
    """(vector rows' results, scalar rows' results) of the same step."""
    with vector_rows(True):
        vector = run(inputs, training)
    with vector_rows(False):
        scalar = run(inputs, training)
    return vector, scalar


def test_vector_rows_run_exactly_where_the_cpu_has_them():
    assert torch.ops.rnnkernels.cpu_vector_rows() == HAS_VECTOR_ROWS
    with vector_rows(True):
        assert torch.ops.rnnkernels.cpu_vector_rows() == HAS_VECTOR_ROWS
    with vector_rows(False):
        assert not torch.ops.rnnkernels.cpu_vector_rows()


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_float32_vector_rows_match_scalar_rows_and_float64(mode, training, seed):
    case = step_inputs(mode, torch.float32)
    vector, scalar = both_paths(case, training)
    exact = run(as_double(case), training)
    # LSTM's c = sigmoid(f) c0 + sigmoid(i) tanh(g) and GRU's h = (1 - z) n +
    # z h0 may cancel: their error is bounded by the terms, |state| + 1, not
    # by the result (and LSTM's h = sigmoid(o) tanh(c) inherits c's); the
    # activations do not cancel and are bounded relative to themselves.
    state = case[1][2] if mode == "lstm" else case[1][1]
    term_scale = state.double().abs() + 1
    for got, expected, reference, scale in zip(vector, scalar, exact, (term_scale, term_scale, None)):
        bound = 4 * 2.0**-24 * (scale if scale is not None else reference.abs())
        for result in (got, expected):  # each path within 4 float32 ulp of the terms of float64's value
            error = (result.double() - reference).abs()
            assert torch.equal(result.isnan(), reference.isnan())
            finite = reference.isfinite()
            assert (error[finite] <= bound.expand_as(error)[finite] + 1e-37).all()
        # Where the scalar rows saturate (sigmoid 0 or 1, tanh +-1) the vector rows must too.
        saturated = (expected.abs() == 1) | (expected == 0)
        assert torch.equal(got[saturated], expected[saturated])


def test_float32_gru_vector_rows_use_r_on_the_recurrent_n(seed):
    """With W_hh and b_hh != 0, n = tanh(gi_n + r gh_n), gh_n holding b_hh's
    n part: both paths form the same arguments, so they differ only by their
    sigmoid's ulp, times |gh_n|."""
    case = step_inputs("gru", torch.float32, w_hh_scale=0.3, b_hh_scale=1.0)
    (out, h_n, gates), (out_s, h_s, gates_s) = both_paths(case, True)
    gh_n = (case[1][1] @ case[1][4][2 * H:].t() + case[1][6][2 * H:]).abs().view(1, 5, H)
    slack = 8 * 2.0**-24

    def within(got, expected, scale):
        assert torch.equal(got.isnan(), expected.isnan())
        finite = expected.isfinite()
        assert ((got - expected).abs()[finite] <= (slack * scale).expand_as(got)[finite]).all()
        assert torch.equal(got[~finite & ~got.isnan()], expected[~finite & ~expected.isnan()])

    for got, expected in ((out, out_s), (h_n.view(1, 5, H), h_s.view(1, 5, H))):
        within(got, expected, case[1][1].abs() + 1 + gh_n)
    r, z, n, saved_gh_n = gates.view(1, 5, 4, H).unbind(2)
    r_s, z_s, n_s, saved_gh_n_s = gates_s.view(1, 5, 4, H).unbind(2)
    assert torch.equal(saved_gh_n, saved_gh_n_s)
    within(r, r_s, r_s.abs())
    within(z, z_s, z_s.abs())
    within(n, n_s, n_s.abs() + gh_n)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_bfloat16_vector_rows_round_as_the_scalar_rows(mode, seed):
    vector, scalar = both_paths(step_inputs(mode, torch.bfloat16), True)
    for got, expected in zip(vector, scalar):
        assert torch.equal(got.isnan(), expected.isnan())
        same = (got == expected) | (got.isnan() & expected.isnan())
        # The float results differ by an ulp of float at most, which moves a
        # bfloat16 rounding only next to a tie: nearly every element is equal,
        # and the others one bfloat16 ulp apart.
        assert same.float().mean().item() > 0.99
        bits_apart = (got.view(torch.int16).int() - expected.view(torch.int16).int()).abs()
        assert bits_apart[~same].le(1).all()
