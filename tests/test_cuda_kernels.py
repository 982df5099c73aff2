"""The cuda backend (csrc/cuda/) against the float64 reference.

GPU tests (marked `gpu`, skipped without a CUDA device) cover both paths,
chosen with RNNKERNELS_CUDA_PERSISTENT: "0" the step-kernel loop, "1" the
persistent forward and backward kernels (an error if the call could not take
them, so a passing persistent test did run them), and the two mixed. Cases: every cell, float64 / float32 (tf32 off)
/ bfloat16, uneven lengths (including 0), reverse (bidirectional), B=1,
hidden sizes not multiples of 8, projection, several layers, no h0, no bias,
inference (no saved activations) and bad input. Without a GPU: asking for the
cuda backend is a clear BackendUnavailableError.
"""
import pytest
import torch

from rnnkernels import _ext, backends, reference
from rnnkernels.backends import BackendUnavailableError
from rnnkernels.check import RNNCase, relative_error, run_rnn_case
from rnnkernels.functional import rnn_forward

# The bars: bfloat16 within 1e-2 of the float64 reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}
MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
PERSISTENT_MODES = ["lstm", "gru"]


@pytest.fixture
def no_tf32():
    """float32 GEMMs in full float32 (the 1e-5 bar is not for tf32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def step_path(monkeypatch):
    monkeypatch.setenv("RNNKERNELS_CUDA_PERSISTENT", "0")


@pytest.fixture
def persistent_path(monkeypatch):
    monkeypatch.setenv("RNNKERNELS_CUDA_PERSISTENT", "1")


def assert_matches_reference(case: RNNCase, seed: int):
    errors = run_rnn_case(case, "cuda", seed=seed)
    worst = max(errors.values())
    assert worst <= TOLERANCE[case.dtype], f"{case.describe()} seed={seed}: {errors}"


def shapes(mode: str, dtype: torch.dtype):
    """The shapes every path must get right (all have batch <= 32, no projection)."""
    return [
        # reverse direction, uneven lengths with an empty sequence, hidden 13
        RNNCase(mode, bidirectional=True, steps=6, batch=4, input_size=5, hidden_size=13, lengths=[6, 3, 0, 5],
                dtype=dtype, device="cuda"),
        # B=1, a length short of T
        RNNCase(mode, steps=5, batch=1, input_size=3, hidden_size=10, lengths=[4], dtype=dtype, device="cuda"),
        # two layers, no h0, no bias, batch_first
        RNNCase(mode, num_layers=2, steps=4, batch=3, input_size=4, hidden_size=9, with_h0=False, bias=False,
                batch_first=True, dtype=dtype, device="cuda"),
    ]


# ------------------------------------------------------------- step loop

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_step_path_matches_reference(mode, dtype, seed, no_tf32, step_path):
    for case in shapes(mode, dtype):
        assert_matches_reference(case, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_step_path_lstm_projection(dtype, seed, no_tf32, step_path):
    case = RNNCase("lstm", bidirectional=True, proj_size=5, steps=6, batch=4, input_size=5, hidden_size=11,
                   lengths=[2, 6, 0, 5], dtype=dtype, device="cuda")
    assert_matches_reference(case, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_step_path_large_batch(mode, seed, no_tf32, step_path):
    """Batches above the persistent kernel's 32, several blocks per step kernel."""
    case = RNNCase(mode, bidirectional=True, steps=4, batch=70, input_size=6, hidden_size=37,
                   lengths=[(i * 7) % 5 for i in range(70)], dtype=torch.float32, device="cuda")
    assert_matches_reference(case, seed)


# ------------------------------------------------------- persistent kernel

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", PERSISTENT_MODES)
def test_persistent_path_matches_reference(mode, dtype, seed, no_tf32, persistent_path):
    for case in shapes(mode, dtype):
        assert_matches_reference(case, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", PERSISTENT_MODES)
def test_persistent_path_wide(mode, dtype, seed, no_tf32, persistent_path):
    """Batch tile 32 (B=20), W_hh over many blocks, h staged in two chunks (H=300 > 256 columns)."""
    case = RNNCase(mode, bidirectional=True, steps=5, batch=20, input_size=7, hidden_size=300,
                   lengths=[(i * 3) % 6 for i in range(20)], dtype=dtype, device="cuda")
    assert_matches_reference(case, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["0", "1"], ids=["step", "persistent"])
@pytest.mark.parametrize("steps", [4, 5])  # both parities of the two alternating state slots
@pytest.mark.parametrize("mode", PERSISTENT_MODES)
def test_inference_matches_reference(mode, steps, path, seed, no_tf32, monkeypatch):
    """Without autograd the op keeps two state slots instead of T + 1."""
    monkeypatch.setenv("RNNKERNELS_CUDA_PERSISTENT", path)
    G = reference.GATES[mode]
    B, I, H = 6, 5, 19
    args = [torch.randn(steps, B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
            torch.randn(B, H, dtype=torch.float64) if mode == "lstm" else None,
            torch.randn(G * H, I, dtype=torch.float64) * 0.3, torch.randn(G * H, H, dtype=torch.float64) * 0.3,
            torch.randn(G * H, dtype=torch.float64) * 0.3, torch.randn(G * H, dtype=torch.float64) * 0.3]
    lengths = torch.tensor([steps, 1, 0, steps - 1, 2, steps], dtype=torch.int64)
    for reverse in (False, True):
        expected = reference.rnn_layer(mode, *args[:7], None, lengths, reverse)
        on_gpu = [a.to(device="cuda", dtype=torch.float32) if a is not None else None for a in args]
        with torch.no_grad():
            actual = backends.rnn_layer(mode, *on_gpu, None, lengths, reverse, backend="cuda")
        for name, a, e in zip(("output", "h_n", "c_n"), actual, expected):
            error = relative_error(a, e)
            assert error <= TOLERANCE[torch.float32], f"{mode} reverse={reverse} {name}: {error}"


@pytest.mark.gpu
@pytest.mark.parametrize("forward_path,backward_path", [("1", "0"), ("0", "1")])
@pytest.mark.parametrize("mode", PERSISTENT_MODES)
def test_forward_and_backward_paths_mix(mode, forward_path, backward_path, seed, no_tf32, monkeypatch):
    """Either backward reads what either forward saved (one activation layout)."""
    G = reference.GATES[mode]
    T, B, I, H = 5, 3, 4, 11
    leaves = [torch.randn(T, B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
              torch.randn(B, H, dtype=torch.float64), torch.randn(G * H, I, dtype=torch.float64) * 0.3,
              torch.randn(G * H, H, dtype=torch.float64) * 0.3, torch.randn(G * H, dtype=torch.float64) * 0.3,
              torch.randn(G * H, dtype=torch.float64) * 0.3]
    if mode != "lstm":
        leaves[2] = None
    lengths = torch.tensor([5, 2, 4], dtype=torch.int64)
    upstream = [torch.randn(T, B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
                torch.randn(B, H, dtype=torch.float64)]

    def grads(run, dtype, device):
        inputs = [t.detach().to(dtype=dtype, device=device).requires_grad_() if t is not None else None
                  for t in leaves]
        outs = run(inputs)
        pairs = [(o, u.to(dtype=dtype, device=device)) for o, u in zip(outs, upstream) if o is not None]
        present = [t for t in inputs if t is not None]
        return torch.autograd.grad([o for o, _ in pairs], present, [u for _, u in pairs])

    expected = grads(lambda a: reference.rnn_layer(mode, *a, None, lengths, True), torch.float64, "cpu")

    def ours(a):
        monkeypatch.setenv("RNNKERNELS_CUDA_PERSISTENT", forward_path)
        outs = backends.rnn_layer(mode, *a, None, lengths, True, backend="cuda")
        monkeypatch.setenv("RNNKERNELS_CUDA_PERSISTENT", backward_path)  # read when backward runs
        return outs

    actual = grads(ours, torch.float32, "cuda")
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert relative_error(a, e) <= TOLERANCE[torch.float32], f"{mode} gradient {i}: {relative_error(a, e)}"


@pytest.mark.gpu
def test_persistent_path_refuses_ineligible_calls(persistent_path):
    """RNNKERNELS_CUDA_PERSISTENT=1 never falls back silently."""
    x = torch.randn(3, 33, 4, device="cuda")
    w = [torch.randn(4 * 8, 4, device="cuda"), torch.randn(4 * 8, 8, device="cuda")]
    with pytest.raises(RuntimeError, match="batch 33 > 32"):
        torch.ops.rnnkernels.rnn_layer_forward("lstm", x, None, None, *w, None, None, None, None, False, False)
    w1 = [torch.randn(8, 4, device="cuda"), torch.randn(8, 8, device="cuda")]
    with pytest.raises(RuntimeError, match="only lstm and gru"):
        torch.ops.rnnkernels.rnn_layer_forward("rnn_tanh", x[:, :4], None, None, *w1, None, None, None, None,
                                               False, False)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["0", "1", "auto"])
def test_bad_input_raises_the_shared_error(path, monkeypatch):
    """A malformed call never reaches a kernel, whichever path is asked for."""
    monkeypatch.setenv("RNNKERNELS_CUDA_PERSISTENT", path)
    x = torch.randn(3, 2, 4, device="cuda")
    h0 = torch.randn(2, 7, device="cuda")  # hidden is 8
    w = [torch.randn(4 * 8, 4, device="cuda"), torch.randn(4 * 8, 8, device="cuda")]
    before = h0.clone()
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        torch.ops.rnnkernels.rnn_layer_forward("lstm", x, h0, None, *w, None, None, None, None, False, True)
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[0, 3\]"):
        torch.ops.rnnkernels.rnn_layer_forward("lstm", x, None, None, *w, None, None, None,
                                               torch.tensor([1, 4]), False, True)
    assert torch.equal(h0, before)


@pytest.mark.gpu
def test_auto_picks_cuda_for_cuda_tensors():
    assert backends.available("cuda", dtype=torch.float32)[0] == "cuda"


# ----------------------------------------------------------- without GPU

def test_asking_for_cuda_backend_on_this_build_is_a_clear_error():
    x = torch.randn(3, 2, 4)
    w = [torch.randn(4 * 5, 4), torch.randn(4 * 5, 5)]
    if _ext.built_with("cuda"):
        expected = "runs on CUDA tensors only, got a cpu tensor"
        assert "supports" in backends.unavailable_reason("cuda", "cuda", dtype=torch.float16)
    else:
        expected = "built without CUDA; rebuild it on a machine with a CUDA toolkit and a CUDA build of torch"
    assert expected in backends.unavailable_reason("cuda", "cpu")
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run rnn") as info:
        rnn_forward("lstm", x, None, w, has_bias=False, backend="cuda")
    assert expected in str(info.value)
    with pytest.raises(BackendUnavailableError, match="backend 'cuda'"):
        with backends.use_backend("cuda"):
            rnn_forward("gru", x, None, [torch.randn(15, 4), torch.randn(15, 5)], has_bias=False)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_two_streams_match_one_stream(mode, backend, no_tf32, monkeypatch):
    """RNNKERNELS_CUDA_TWO_STREAMS=1 runs a bidirectional layer's reverse
    direction on a side stream: outputs, states and every gradient must equal
    the one-stream run bit for bit (same kernels, only the order of issue differs)."""
    import rnnkernels as rk

    if backend not in backends.available("cuda", "rnn"):
        pytest.skip(f"{backend} not built")
    torch.manual_seed(0)
    module = {"lstm": rk.LSTM, "gru": rk.GRU}[mode](24, 40, num_layers=2, bidirectional=True, backend=backend)
    module = module.cuda()
    x = torch.randn(9, 16, 24, device="cuda")
    lengths = torch.randint(1, 10, (16,))
    grad_out = torch.randn(9, 16, 80, device="cuda")

    def run(two_streams):
        monkeypatch.setenv("RNNKERNELS_CUDA_TWO_STREAMS", two_streams)
        module.zero_grad()
        x_leaf = x.clone().requires_grad_()
        out, state = module(x_leaf, lengths=lengths)
        out.backward(grad_out)
        torch.cuda.synchronize()
        h_n = state[0] if mode == "lstm" else state
        return [out.detach(), h_n.detach(), x_leaf.grad] + [p.grad.clone() for p in module.parameters()]

    for one, two in zip(run("0"), run("1")):
        assert torch.equal(one, two)
