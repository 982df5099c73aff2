"""The triton backend's LSTM / GRU / RNN kernels on CPU tensors in Triton's
interpreter, against the float64 reference: outputs, final states and every
gradient, on both the step path and the sequence path.

Triton decides interpreter or compiler when a kernel is decorated, i.e. when
rnnkernels.triton_kernels.rnn is imported, and reads TRITON_INTERPRET again
while launching, so it is set for that import and for each test of this
module (and restored, so other test modules see the environment they expect);
test_kernels_run_in_the_interpreter checks that it took.
"""
import pytest
import torch

pytest.importorskip("triton")  # an optional dependency: without it these tests skip (tests/without_triton)

from triton_helpers import interpreter_on, run_without_interpreter  # noqa: E402

with interpreter_on():
    from rnnkernels.triton_kernels import rnn as triton_rnn
    from rnnkernels.triton_kernels import rnn_cells, rnn_sequence, rnn_step

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import rnnkernels as rk  # noqa: E402
from rnnkernels import backends  # noqa: E402
from rnnkernels.backends import triton as triton_backend  # noqa: E402
from rnnkernels.check import TOLERANCE, RNNCase, run_rnn_case  # noqa: E402

MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
PATHS = ["step", "sequence"]


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def path(request, monkeypatch):
    monkeypatch.setattr(triton_backend, "PATH", request.param)
    return request.param


def assert_close(case: RNNCase, seed: int):
    """Against the float64 reference, each error within the dtype's tolerance
    or, in float16 and bfloat16, within 3x the error torch's own math (the
    reference backend) makes in that dtype on the same inputs if larger, as
    tests/test_triton_layer_extras.py bounds them: at seed 2025496993 torch's
    bfloat16 weight gradients of an LSTM with projection were 0.0199 off,
    against a 0.02 tolerance."""
    errors = run_rnn_case(case, "triton", seed=seed)
    bounds = dict.fromkeys(errors, TOLERANCE[case.dtype])
    if case.dtype in (torch.float16, torch.bfloat16):
        own = run_rnn_case(case, "reference", seed=seed)
        bounds = {key: max(bound, 3 * own[key]) for key, bound in bounds.items()}
    assert all(errors[key] <= bounds[key] for key in errors), f"{case.describe()} seed {seed}: {errors}, bounds {bounds}"


def test_kernels_run_in_the_interpreter():
    for kernel in (rnn_step.step_forward_kernel, rnn_step.step_backward_kernel,
                   rnn_sequence.sequence_forward_kernel, rnn_sequence.sequence_backward_kernel):
        assert type(kernel).__name__ == "InterpretedFunction"
    assert "triton" in backends.available("cpu", dtype=torch.float32)
    assert backends.unavailable_reason("triton", "cpu", dtype=torch.float64) is not None


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_uneven_lengths_bidirectional(mode, path, seed):
    # Two directions: the reverse one starts each sequence at its own last step.
    case = RNNCase(mode=mode, bidirectional=True, steps=5, batch=4, input_size=3, hidden_size=5,
                   lengths=[5, 2, 4, 1], dtype=torch.float32)
    assert_close(case, seed)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_two_layers_no_bias_no_h0(mode, path, seed):
    case = RNNCase(mode=mode, num_layers=2, bias=False, with_h0=False, batch_first=True, steps=3, batch=2,
                   input_size=4, hidden_size=7, dtype=torch.float32)
    assert_close(case, seed)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_single_step(mode, path, seed):
    case = RNNCase(mode=mode, bidirectional=True, steps=1, batch=3, input_size=2, hidden_size=3,
                   dtype=torch.float32)
    assert_close(case, seed)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_several_tiles(mode, path, seed):
    # B = 17 > 16 rows per program; H = 37 spans two BLOCK_K chunks of the
    # sequence kernel's dot loop (and G*H several); uneven lengths with a zero.
    case = RNNCase(mode=mode, bidirectional=True, steps=3, batch=17, input_size=3, hidden_size=37,
                   lengths=[3, 0, 2, 1, 3, 2, 1, 3, 3, 2, 1, 1, 2, 3, 1, 2, 3], dtype=torch.float32)
    assert_close(case, seed)


def test_step_path_splits_hidden_into_column_blocks(monkeypatch, seed):
    monkeypatch.setattr(triton_backend, "PATH", "step")
    monkeypatch.setattr(triton_rnn, "STEP_MAX_BLOCK_H", 16)
    monkeypatch.setattr(triton_rnn, "STEP_MAX_BLOCK_B", 2)
    case = RNNCase(mode="lstm", steps=3, batch=5, input_size=3, hidden_size=37, lengths=[3, 1, 2, 3, 2],
                   dtype=torch.float32)
    assert_close(case, seed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_half_precision(mode, path, dtype, seed):
    """Within the dtype's tolerance, or within 3x the error of torch's own ops
    computing the same math in that dtype on the same inputs (the reference
    backend), whichever is larger (tests/test_layer_extras.py's bfloat16 rule):
    8 bits of mantissa in every stored state compound over the steps, and a
    draw's error now and then passes 2e-2 for torch as for the kernel."""
    case = RNNCase(mode=mode, bidirectional=True, steps=4, batch=3, input_size=3, hidden_size=6,
                   lengths=[4, 2, 3], dtype=dtype)
    errors = run_rnn_case(case, "triton", seed=seed)
    torch_errors = run_rnn_case(case, "reference", seed=seed)
    bound = max(TOLERANCE[dtype], 3 * max(torch_errors.values()))
    assert max(errors.values()) <= bound, f"{case.describe()} seed {seed}: {errors}, torch's own: {torch_errors}"


@pytest.mark.parametrize("mode", MODES)
def test_forward_on_one_path_backward_on_the_other(mode, seed):
    """Both paths write the same saved buffers; each pairing gives the same answer."""
    T, B, I, H = 4, 3, 3, 5
    G = {"lstm": 4, "gru": 3}.get(mode, 1)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H) if mode == "lstm" else None
    w_ih, w_hh, b_ih, b_hh = torch.randn(G * H, I), torch.randn(G * H, H) / 3, torch.randn(G * H), torch.randn(G * H)
    lengths = torch.tensor([4, 1, 3])
    grads = torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H) if mode == "lstm" else None
    results = {}
    for forward_path in PATHS:
        out, h_n, c_n, saved, h_prev, c_prev, h_raw = triton_rnn.layer_forward(
            mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths, True, forward_path)
        for backward_path in PATHS:
            results[forward_path, backward_path] = (out, h_n, c_n) + triton_rnn.layer_backward(
                mode, x, w_ih, w_hh, None, True, lengths, True, *grads, saved, h_prev, c_prev, h_raw, backward_path)
    expected = results["step", "step"]
    for key, values in results.items():
        for a, b in zip(values, expected):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{key}")


def test_auto_path_heuristic():
    assert triton_rnn.choose_path("auto", 8, 256) == "sequence"
    assert triton_rnn.choose_path("auto", 8, 257) == "step"
    assert triton_rnn.choose_path("auto", 10_000, 64) == "step"
    assert triton_rnn.choose_path("step", 1, 16) == "step"


def test_module_drop_in(seed):
    """rk.LSTM on the triton backend matches torch.nn.LSTM with the same weights."""
    theirs = torch.nn.LSTM(3, 5, bidirectional=True)
    ours = rk.LSTM(3, 5, bidirectional=True, backend="triton")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 2, 3)
    expected, (h, c) = theirs(x)
    out, (h_n, c_n) = ours(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_n, h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_n, c, rtol=1e-5, atol=1e-6)


def test_torch_compile_traces_the_ops(seed):
    """The functional API on the triton backend under torch.compile(fullgraph=True):
    the custom ops trace without graph breaks, forward and backward."""
    T, B, I, H = 4, 2, 3, 5
    weights = [torch.randn(4 * H, I) / 2, torch.randn(4 * H, H) / 2, torch.randn(4 * H), torch.randn(4 * H)]
    weights = [w.requires_grad_() for w in weights]
    lengths = torch.tensor([4, 2])

    def run(x, backend):
        return rk.functional.lstm(x, None, weights, lengths=lengths, backend=backend)[0]

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    x = torch.randn(T, B, I)
    for fn in (run, compiled):
        xi = x.clone().requires_grad_()
        out = fn(xi, "triton")
        ref_x = x.clone().requires_grad_()
        ref = run(ref_x, "reference")
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        upstream = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, xi, upstream)
        (ref_grad,) = torch.autograd.grad(ref, ref_x, upstream)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode, proj, path", [("gru", False, "sequence"), ("lstm", True, "step")])
def test_opcheck_forward_op(mode, proj, path, seed):
    T, B, I, H, P = 3, 2, 3, 4, 2 if proj else 4
    G = {"lstm": 4, "gru": 3}[mode]

    def leaf(*shape):
        return torch.randn(*shape, requires_grad=True)

    args = (mode, leaf(T, B, I), leaf(B, P), leaf(B, H) if mode == "lstm" else None, leaf(G * H, I),
            leaf(G * H, P), leaf(G * H), leaf(G * H), leaf(P, H) if proj else None, torch.tensor([3, 1]), False, path)
    torch.library.opcheck(torch.ops.rnnkernels.triton_rnn_layer_forward.default, args)


# ------------------------------------------------------------------ bad input


def layer_args(mode="lstm", T=3, B=2, I=4, H=5, dtype=torch.float32):
    G = {"lstm": 4, "gru": 3}.get(mode, 1)
    return dict(mode=mode, x=torch.randn(T, B, I, dtype=dtype), h0=torch.randn(B, H, dtype=dtype),
                c0=torch.randn(B, H, dtype=dtype) if mode == "lstm" else None,
                w_ih=torch.randn(G * H, I, dtype=dtype), w_hh=torch.randn(G * H, H, dtype=dtype),
                b_ih=torch.randn(G * H, dtype=dtype), b_hh=torch.randn(G * H, dtype=dtype), w_hr=None,
                lengths=None, reverse=False)


@pytest.mark.parametrize("change, error, match", [
    (dict(w_hr=torch.randn(3, 5)), ValueError, r"w_hh must have shape \(20, 3\)"),
    (dict(w_hr=torch.randn(3, 5), w_hh=torch.randn(20, 3), h0=torch.randn(2, 3), mode="gru"), ValueError,
     "w_hr .* only defined for lstm"),
    (dict(w_hr=torch.randn(3, 4), w_hh=torch.randn(20, 3), h0=torch.randn(2, 3)), ValueError,
     r"w_hr must have shape \(3, 5\)"),
    (dict(w_ih=torch.randn(20, 3)), ValueError, r"w_ih must have shape \(20, 4\)"),
    (dict(w_hh=torch.randn(20, 4)), ValueError, "w_hh must have shape"),
    (dict(h0=torch.randn(3, 5)), ValueError, r"h0 must have shape \(2, 5\)"),
    (dict(c0=None), ValueError, "c0 is required"),
    (dict(b_hh=torch.randn(20, dtype=torch.float64)), TypeError, "b_hh must have x's dtype"),
    (dict(b_ih=None), ValueError, "b_ih and b_hh"),
    (dict(lengths=torch.tensor([3, 4])), ValueError, r"lengths must lie in \[0, 3\]"),
    (dict(lengths=torch.tensor([3, 1, 1])), ValueError, r"lengths must be an int64 tensor of shape \(2,\)"),
    (dict(x=torch.randn(3, 2, 4, dtype=torch.float64)), TypeError, "x must be float32"),
    (dict(x=torch.randn(3, 4)), ValueError, "x must be 3-D"),
])
def test_bad_input_names_the_argument(change, error, match):
    args = layer_args()
    args.update(change)
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(error, match=match):
        triton_backend.rnn_layer(**args)
    for name, tensor in before.items():
        assert torch.equal(args[name], tensor), f"{name} was modified"


@pytest.mark.parametrize("path", PATHS, indirect=True)  # a projection always takes the step path
def test_lstm_projection(path, seed):
    case = RNNCase(mode="lstm", proj_size=3, bidirectional=True, num_layers=2, steps=4, batch=3, input_size=2,
                   hidden_size=5, lengths=[4, 1, 3], dtype=torch.float32)
    assert_close(case, seed)


def test_lstm_projection_bf16(seed):
    case = RNNCase(mode="lstm", proj_size=2, bidirectional=True, steps=3, batch=3, input_size=2,
                   hidden_size=4, lengths=[3, 1, 2], dtype=torch.bfloat16)
    assert_close(case, seed)


def test_float64_is_unavailable():
    with pytest.raises(rk.BackendUnavailableError, match="float32, float16 and bfloat16"):
        rk.GRU(3, 4, backend="triton").double()(torch.randn(2, 1, 3, dtype=torch.float64))


_FRESH_PROCESS = """
import os, torch, triton, rnnkernels as rk
from rnnkernels.check import run_rnn_case, RNNCase
from rnnkernels.backends import triton as triton_backend
try:
    rk.GRU(3, 4, backend="triton")(torch.randn(2, 1, 3))
except rk.BackendUnavailableError as e:
    print(e)
# triton (and its @jit standard library) was imported before the variable:
# the kernels must still run in the interpreter.
os.environ["TRITON_INTERPRET"] = "1"
for mode, path in (("lstm", "step"), ("gru", "sequence")):
    triton_backend.PATH = path
    errors = run_rnn_case(RNNCase(mode=mode, steps=3, batch=2, hidden_size=5, lengths=[3, 1], dtype=torch.float32),
                          "triton")
    print(mode, path, "ok" if max(errors.values()) < 1e-5 else errors)
"""


def test_fresh_process_without_then_with_interpreter():
    """In a fresh process without TRITON_INTERPRET the backend refuses CPU
    tensors with a clear message; once it is set, the kernels run, even
    though triton itself was imported before."""
    result = run_without_interpreter(_FRESH_PROCESS, done="set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors",
                                     timeout=120)
    assert "lstm step ok" in result.stdout and "gru sequence ok" in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------ on a GPU

_COMPILED_CASES = """
import torch
from rnnkernels.backends import triton as triton_backend
from rnnkernels.check import TOLERANCE, RNNCase, run_rnn_case
assert type(__import__("rnnkernels.triton_kernels.rnn_step", fromlist=["x"]).step_forward_kernel).__name__ == "JITFunction"
worst = {}
for path in ("step", "sequence"):
    triton_backend.PATH = path
    for dtype in (torch.float32, torch.bfloat16):
        for mode, proj in (("lstm", 0), ("gru", 0), ("rnn_tanh", 0), ("lstm", 3)):
            case = RNNCase(mode=mode, proj_size=proj, bidirectional=True, steps=6, batch=19, input_size=5,
                           hidden_size=37, lengths=[6, 1, 3, 0] + [6] * 15, dtype=dtype, device="cuda")
            errors = run_rnn_case(case, "triton", seed=1)
            assert max(errors.values()) <= TOLERANCE[dtype], (path, case.describe(), errors)
print("compiled kernels ok")
"""


@pytest.mark.gpu
def test_compiled_kernels_on_cuda():
    """The compiled (not interpreted) kernels on CUDA tensors, both paths, fp32
    and bf16: a fresh process, since this module's kernels are interpreted."""
    run_without_interpreter(_COMPILED_CASES, done="compiled kernels ok")


# ------------------------------------------------------- compiled for sm_90, no GPU

_COMPILE_FOR_SM90 = """
from rnnkernels.triton_kernels import rnn, rnn_sequence, rnn_step
from rnnkernels.triton_kernels.rnn_cells import MODE_CODES, NUM_GATES, NUM_SAVED
from triton_helpers import compile_for_sm90 as compile_kernel, rnn_argument_types

FP32_BUFFERS = ("c_ptr", "c_prev_t_ptr", "saved_t_ptr", "dh_ptr", "dc_ptr", "c0_ptr", "c_prev_ptr", "saved_ptr",
                "c_n_ptr", "grad_h_n_ptr", "grad_c_n_ptr", "grad_h0_ptr", "grad_c0_ptr")

def compile_for_sm90(kernel, dtype, constexprs, num_warps):
    return compile_kernel(kernel, constexprs, rnn_argument_types(dtype, FP32_BUFFERS), num_warps)

for mode, dtype, has_proj in (("lstm", "bf16", False), ("gru", "bf16", False), ("rnn_relu", "fp16", False),
                              ("rnn_tanh", "fp32", False), ("lstm", "fp32", True)):
    base = dict(MODE=MODE_CODES[mode], G=NUM_GATES[mode], S=NUM_SAVED[mode], HAS_LENGTHS=True)
    for kernel in (rnn_step.step_forward_kernel, rnn_step.step_backward_kernel):
        compile_for_sm90(kernel, dtype, dict(base, HAS_PROJ=has_proj, BLOCK_B=16, BLOCK_H=128), 4)
    if not has_proj:  # projections never take the sequence path
        block_h = 256 if dtype == "fp32" else 64  # the widest tile and a narrow one
        block_b, _, block_k, num_warps, _ = rnn._sequence_blocks(1, block_h)
        sequence = dict(base, REVERSE=True, UPCAST_DOT=False, BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)
        forward = compile_for_sm90(rnn_sequence.sequence_forward_kernel, dtype, dict(sequence, HAS_BIAS=True),
                                   num_warps)
        compile_for_sm90(rnn_sequence.sequence_backward_kernel, dtype, sequence, num_warps)
        # The launcher turns int arguments equal to 1 into constants (batch 1, one step).
        compile_for_sm90(rnn_sequence.sequence_forward_kernel, dtype, dict(sequence, HAS_BIAS=False, B=1, T=1),
                         num_warps)
        assert dtype == "fp32" or "mma" in forward.asm["ptx"], "bf16/fp16 products should use tensor cores"
    print(mode, dtype, "compiled")
print("all compiled")
"""


def test_kernels_compile_for_sm90():
    """Triton's real compiler (TTIR -> TTGIR -> LLVM -> PTX -> cubin with its
    bundled ptxas) for an H100, without a GPU, in a process without
    TRITON_INTERPRET: catches what the interpreter cannot (typing, constexpr
    branches, tl.dot layouts, resource limits). Checked with Triton 3.9."""
    run_without_interpreter(_COMPILE_FOR_SM90, done="all compiled")


def _tanh_rows(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, rnn_cells._tanh(tl.load(X + offs, mask=offs < N, other=0.0)), mask=offs < N)


def test_tanh_is_accurate_for_every_magnitude():
    # 2 sigmoid(2x) - 1 lost 7.7e-5 relative for small |x| (issue 16 item 3);
    # against float64 now, over [-20, 20] and magnitudes 1e-38 to 1e38, exactly
    # +-1 where tanh rounds to 1 in float32, and NaN stays NaN.
    kernel = triton.jit(_tanh_rows)  # decorated here, under the interpreter
    magnitudes = torch.logspace(-38, 38, 8001, dtype=torch.float64).float()
    x = torch.cat([torch.linspace(-20, 20, 100001), magnitudes, -magnitudes, torch.tensor([9.0109138488769531, 8.5])])
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0])
    x_all = torch.cat([x, special])
    y = torch.empty_like(x_all)
    kernel[(triton.cdiv(x_all.numel(), 4096),)](x_all, y, x_all.numel(), BLOCK=4096)
    y, y_special = y[: x.numel()], y[x.numel():]
    exact = torch.tanh(x.double())
    nonzero = x != 0
    rel = ((y.double() - exact).abs() / exact.abs())[nonzero]
    assert rel.max().item() < 5e-7, f"worst x = {x[nonzero][rel.argmax()]}"
    saturated = x.abs() >= 9.0109138488769531
    assert torch.equal(y[saturated], x[saturated].sign())
    assert y_special[:2].tolist() == [1.0, -1.0] and y_special[2].isnan() and y_special[3] == 0
