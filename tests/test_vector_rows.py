"""The AVX-512 LSTM forward rows (csrc/cpu/lstm_row_avx512.h) against the
scalar-vectorised rows they replace on AVX-512 CPUs (set_cpu_vector_rows
switches between them) and against float64: one step whose four gates see
pre-activations over [-100, 100], the clamps and the special values, and
states whose tanh saturates; H = 203 leaves a masked tail of 11 units."""
import contextlib

import pytest
import torch

import rnnkernels  # noqa: F401  (loads torch.ops.rnnkernels)

forward_op = torch.ops.rnnkernels.rnn_layer_forward
H = 203
TANH_ONE = 9.0109138488769531  # the least float whose tanh rounds to 1 in float32

pytestmark = pytest.mark.skipif(
    "AVX512" not in torch.backends.cpu.get_cpu_capability(), reason="the vector rows need AVX-512")


@contextlib.contextmanager
def vector_rows(on: bool):
    was = torch.ops.rnnkernels.cpu_vector_rows()
    torch.ops.rnnkernels.set_cpu_vector_rows(on)
    try:
        yield
    finally:
        torch.ops.rnnkernels.set_cpu_vector_rows(was)


def step_inputs(dtype):
    """x (1, B, H) holds the pre-activations: W_ih stacks scaled identities, so
    gate g of unit j sees scale_g * x[j] (h0 = 0); c0 spans tiny to huge."""
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 88.0, -88.0, 89.0, -89.0,
                            TANH_ONE, -TANH_ONE, 0.625, -0.625, 1e-30, -1e-30])
    x = torch.cat([torch.empty(4 * H - special.numel()).uniform_(-100, 100), torch.empty(H).uniform_(-1, 1),
                   special]).view(5, H)
    c0 = torch.cat([torch.empty(3, H).uniform_(-20, 20), torch.logspace(-30, 30, H).view(1, H) *
                    torch.randn(1, H).sign(), torch.randn(1, H)]).view(5, H)
    eye = torch.eye(H)
    w_ih = torch.cat([eye, -eye, 2 * eye, 0.5 * eye])
    w_hh = torch.randn(4 * H, H)
    return [t.to(dtype) for t in (x.view(1, 5, H), torch.zeros(5, H), c0, w_ih, w_hh)]


def run(inputs, training):
    x, h0, c0, w_ih, w_hh = inputs
    out, _, c_n, _, _, gates, _ = forward_op("lstm", x, h0, c0, w_ih, w_hh, None, None, None, None, False, training)
    return out, c_n, gates


def both_paths(inputs, training):
    """(vector rows' results, scalar rows' results) of the same step."""
    with vector_rows(True):
        vector = run(inputs, training)
    with vector_rows(False):
        scalar = run(inputs, training)
    return vector, scalar


def test_vector_rows_are_on_here():
    assert torch.ops.rnnkernels.cpu_vector_rows()


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_float32_vector_rows_match_scalar_rows_and_float64(training, seed):
    inputs = step_inputs(torch.float32)
    vector, scalar = both_paths(inputs, training)
    exact = run([t.double() for t in inputs], training)
    # c = sigmoid(f) c0 + sigmoid(i) tanh(g) may cancel: its error is bounded
    # by the terms, |c0| + 1, not by |c| (and h = sigmoid(o) tanh(c) inherits
    # it); the activations do not cancel and are bounded relative to themselves.
    term_scale = inputs[2].double().abs() + 1
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


def test_bfloat16_vector_rows_round_as_the_scalar_rows(seed):
    vector, scalar = both_paths(step_inputs(torch.bfloat16), True)
    for got, expected in zip(vector, scalar):
        assert torch.equal(got.isnan(), expected.isnan())
        same = (got == expected) | (got.isnan() & expected.isnan())
        # The float results differ by an ulp of float at most, which moves a
        # bfloat16 rounding only next to a tie: nearly every element is equal,
        # and the others one bfloat16 ulp apart.
        assert same.float().mean().item() > 0.99
        bits_apart = (got.view(torch.int16).int() - expected.view(torch.int16).int()).abs()
        assert bits_apart[~same].le(1).all()
