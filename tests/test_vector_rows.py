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


def test_vector_rows_are_on_here():
    assert torch.ops.rnnkernels.cpu_vector_rows()


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_float32_vector_rows_match_scalar_rows_and_float64(training, seed):
    inputs = step_inputs(torch.float32)
    with vector_rows(True):
        vector = run(inputs, training)
    with vector_rows(False):
        scalar = run(inputs, training)
    for got, expected in zip(vector, scalar):
        # Both are within a few ulp of the exact values; where the scalar
        # rows saturate (sigmoid 0 or 1, tanh +-1) the vector rows must too.
        torch.testing.assert_close(got, expected, rtol=5e-7, atol=1e-37, equal_nan=True)
        saturated = (expected.abs() == 1) | (expected == 0)
        assert torch.equal(got[saturated], expected[saturated])
    exact = run([t.double() for t in inputs], training)
    finite = exact[0].isfinite() & (exact[0].abs() > 1e-30)
    rel = ((vector[0].double() - exact[0]).abs() / exact[0].abs())[finite]
    assert rel.max().item() < 3e-6
    assert torch.equal(vector[0].isnan(), exact[0].isnan())


def test_bfloat16_vector_rows_round_as_the_scalar_rows(seed):
    inputs = step_inputs(torch.bfloat16)
    with vector_rows(True):
        vector = run(inputs, True)
    with vector_rows(False):
        scalar = run(inputs, True)
    for got, expected in zip(vector, scalar):
        assert torch.equal(got.isnan(), expected.isnan())
        same = (got == expected) | (got.isnan() & expected.isnan())
        # The float results differ by an ulp of float at most, which moves a
        # bfloat16 rounding only next to a tie: nearly every element is equal,
        # and the others one bfloat16 ulp apart.
        assert same.float().mean().item() > 0.99
        bits_apart = (got.view(torch.int16).int() - expected.view(torch.int16).int()).abs()
        assert bits_apart[~same].max().item() <= 1 if (~same).any() else True
