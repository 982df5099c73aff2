"""The cuda backend (csrc/cuda/) against the float64 reference.

GPU tests (marked `gpu`, skipped without a CUDA device) cover both paths,
chosen with RNNKERNELS_CUDA_PERSISTENT: "0" the step-kernel loop, "1" the
persistent forward and backward kernels (an error if the call could not take
them, so a passing persistent test did run them), and the two mixed. Cases: every cell, float64 / float32 (tf32 off)
/ bfloat16, uneven lengths (including 0), reverse (bidirectional), B=1,
hidden sizes not multiples of 8, projection, several layers, no h0, no bias,
inference (no saved activations) and bad input. The extended op (LayerNorm
LSTM / GRU, zoneout, return_cells: csrc/cuda/pointwise_ext_kernels.cu) against
the float64 reference and the CPU op, gradients included. Without a GPU:
asking for the cuda backend is a clear BackendUnavailableError.
"""
import pytest
import torch

from rnnkernels import _ext, backends, reference
from rnnkernels.reference import LayerExtras
from rnnkernels.backends import BackendUnavailableError
from rnnkernels.check import RNNCase, relative_error, run_rnn_case
from rnnkernels.functional import rnn_forward
from layer_args import random_layer_args

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
    assert expected in backends.unavailable_reason("cuda", "cpu", op="rnn_ext")
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


# ------------------------------------------ extended op (LayerNorm, zoneout, return_cells)
# The extended step kernels (one block per batch row, LayerNorm's reductions in
# the block) against the float64 reference (rnnkernels.reference.rnn_layer_extended)
# and against the CPU op in the same dtype: outputs, final states, cell states
# and the gradients of every input.

EXT_OPTIONS = {  # mode -> option sets (ln: LayerNorm of both projections; ln_c: of c; zh/zc: zoneout p)
    "lstm": [dict(ln=True), dict(ln=True, ln_c=True), dict(ln_c=True), dict(zh=0.3), dict(zc=0.4),
             dict(cells=True), dict(ln=True, ln_c=True, zh=0.2, zc=0.4, cells=True)],
    "gru": [dict(ln=True), dict(zh=0.3), dict(ln=True, zh=0.5)],
    "rnn_tanh": [dict(zh=0.3)],
    "rnn_relu": [dict(zh=0.3)],
}
EXT_CASES = [(mode, options) for mode, sets in EXT_OPTIONS.items() for options in sets]
EXT_IDS = [f"{m}-{','.join(o)}" for m, o in EXT_CASES]
EXT_LAYOUTS = [dict(), dict(lengths=[5, 2, 4, 1]), dict(lengths=[3, 5, 0, 2], reverse=True), dict(with_h0=False),
               dict(bias=False, reverse=True)]
# CUDA against the CPU op: each is within TOLERANCE of the float64 truth, so
# in float32 they may differ by twice that (float64: both at rounding level).
CPU_TOLERANCE = {torch.float64: TOLERANCE[torch.float64], torch.float32: 2 * TOLERANCE[torch.float32]}
EXT_ALL = dict(lstm=dict(ln=True, ln_c=True, zh=0.2, zc=0.3, cells=True), gru=dict(ln=True, zh=0.3),
               rnn_tanh=dict(zh=0.4), rnn_relu=dict(zh=0.4))


def ext_args(mode, seed=0, **options):
    """float64 CPU arguments (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras);
    the weights' entries have standard deviation `weight_scale` (default 0.5)."""
    return random_layer_args(mode, generator=torch.Generator().manual_seed(seed), requires_grad=False, **options)


def ext_on(args, dtype, device, requires_grad=True):
    """The same arguments in `dtype` on `device`: the weights, x and states as
    fresh leaves; the zoneout masks as constants; lengths stay on the CPU."""
    def move(t, leaf):
        if t is None:
            return None
        t = t.detach().to(dtype=dtype, device=device)
        return t.requires_grad_() if leaf and requires_grad else t

    mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, e = args
    extras = LayerExtras(move(e.ln_ih_weight, True), move(e.ln_hh_weight, True), move(e.ln_cell_weight, True),
                         move(e.ln_cell_bias, True), move(e.keep_h, False), move(e.keep_c, False), e.return_cells)
    return [mode] + [move(t, True) for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)] + [lengths, reverse, extras]


def ext_leaves(args):
    e = args[-1]
    return [t for t in args[1:8] + [e.ln_ih_weight, e.ln_hh_weight, e.ln_cell_weight, e.ln_cell_bias]
            if isinstance(t, torch.Tensor) and t.requires_grad]


def ext_run(backend, args, seed):
    """Outputs (out, h_n, c_n, cell_states; the present ones) and the gradients
    of every leaf under fixed random upstream gradients, all as float64 on the CPU."""
    outputs = [o for o in backends.rnn_layer(*args[:8], None, args[8], args[9], backend=backend, extras=args[10])
               if o is not None]
    gen = torch.Generator().manual_seed(seed + 1)
    upstream = [torch.randn(o.shape, dtype=torch.float64, generator=gen).to(o) for o in outputs]
    grads = torch.autograd.grad(outputs, ext_leaves(args), upstream)
    return [t.detach().to(device="cpu", dtype=torch.float64) for t in outputs + list(grads)]


def ext_compare(actual, expected, bound, what):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        error = relative_error(a, e)
        assert error <= bound, f"{what}: tensor {i} (outputs, then gradients) off by {error}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", EXT_LAYOUTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("mode,options", EXT_CASES, ids=EXT_IDS)
def test_ext_matches_reference_and_cpu(mode, options, layout, dtype, seed, no_tf32):
    # float32 on wider rows (as tests/test_layer_extras.py): LayerNorm over
    # 6 values cancels enough that the CPU op itself misses 1e-5 now and then.
    size = dict(H=6) if dtype == torch.float64 else dict(H=16, I=8)
    args = ext_args(mode, **options, **layout, **size, seed=seed)
    expected = ext_run("reference", ext_on(args, torch.float64, "cpu"), seed)
    cpu = ext_run("cpu", ext_on(args, dtype, "cpu"), seed)
    actual = ext_run("cuda", ext_on(args, dtype, "cuda"), seed)
    what = f"{mode} {options} {layout} {dtype} seed={seed}"
    ext_compare(actual, expected, TOLERANCE[dtype], what + " vs the reference")
    ext_compare(actual, cpu, CPU_TOLERANCE[dtype], what + " vs the cpu op")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("H", [16, 31, 33, 300, 600, 1100], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_ext_block_geometry(mode, H, dtype, seed, no_tf32):
    """Hidden sizes around and beyond the block: part of one warp or just
    past it (H 16, 31, 33), G*H several times the block (300: 320 threads), H itself
    past the 512-thread cap (600, 1100: two and three units per thread,
    lstm's shared rows indexed past blockDim); many blocks (B 37) with uneven
    lengths. W_hh scaled like 1/sqrt(H), so that float32's own conditioning
    stays inside its 1e-5 bar (at entries of 0.5 a tanh rnn at H = 1100 is
    1e-4 off in float32 on the CPU too)."""
    B = 37
    lengths = [(i * 3) % 5 + 1 for i in range(B)]
    lengths[3] = 0
    args = ext_args(mode, **EXT_ALL[mode], lengths=lengths, reverse=H % 2 == 1, T=5, B=B, I=4, H=H, seed=seed,
                    weight_scale=min(0.5, 2 / H ** 0.5))
    cpu = ext_run("cpu", ext_on(args, dtype, "cpu"), seed)
    actual = ext_run("cuda", ext_on(args, dtype, "cuda"), seed)
    ext_compare(actual, cpu, CPU_TOLERANCE[dtype], f"{mode} H={H} {dtype} seed={seed} vs the cpu op")
    if H <= 300:
        expected = ext_run("reference", ext_on(args, torch.float64, "cpu"), seed)
        ext_compare(actual, expected, TOLERANCE[dtype], f"{mode} H={H} {dtype} seed={seed} vs the reference")


@pytest.mark.gpu
def test_ext_lstm_past_the_default_shared_memory(seed):
    """float64 lstm with H = 3200: the two (H,) rows per block take 51 KiB of
    shared memory, past the default 48 KiB (the launch opts in)."""
    args = ext_args("lstm", **EXT_ALL["lstm"], lengths=[3, 1, 2], T=3, B=3, I=4, H=3200, seed=seed)
    cpu = ext_run("cpu", ext_on(args, torch.float64, "cpu"), seed)
    actual = ext_run("cuda", ext_on(args, torch.float64, "cuda"), seed)
    ext_compare(actual, cpu, TOLERANCE[torch.float64], f"lstm H=3200 seed={seed} vs the cpu op")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_ext_bfloat16_within_bound(mode, seed):
    """bfloat16 storage, float compute: against the float64 reference on the
    same (rounded) inputs, within 2e-2 or 3x torch's own error computing the
    reference's math in bfloat16 (the bar of tests/test_layer_extras.py)."""
    args = ext_args(mode, **EXT_ALL[mode], lengths=[5, 3, 4, 1], T=5, B=4, I=8, H=16, seed=seed)
    rounded = ext_on(args, torch.bfloat16, "cpu", requires_grad=False)
    expected = ext_run("reference", ext_on(rounded, torch.float64, "cpu"), seed)
    torch_low = ext_run("reference", ext_on(rounded, torch.bfloat16, "cpu"), seed)
    actual = ext_run("cuda", ext_on(rounded, torch.bfloat16, "cuda"), seed)
    bound = max(TOLERANCE[torch.bfloat16], 3 * max(relative_error(t, e) for t, e in zip(torch_low, expected)))
    ext_compare(actual, expected, bound, f"{mode} bfloat16 seed={seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("mode,options", [("lstm", dict(ln=True, ln_c=True, zh=0.3, zc=0.3, cells=True,
                                                        lengths=[3, 1])),
                                          ("gru", dict(ln=True, zh=0.4, lengths=[2, 3], reverse=True)),
                                          ("rnn_tanh", dict(zh=0.5, reverse=True))], ids=["lstm", "gru", "rnn_tanh"])
def test_ext_gradcheck(mode, options):
    args = ext_on(ext_args(mode, **options, T=3, B=2, I=2, H=3), torch.float64, "cuda")
    inputs = ext_leaves(args)
    extras = args[-1]

    def fn(*tensors):
        it = iter(tensors)
        take = lambda t: next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t  # noqa: E731
        positional = [take(t) for t in args[1:8]]
        ex = LayerExtras(*[take(t) for t in extras[:4]], extras.keep_h, extras.keep_c, extras.return_cells)
        outs = backends.rnn_layer(args[0], *positional, None, args[8], args[9], backend="cuda", extras=ex)
        return tuple(o for o in outs if o is not None)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_relu"])
def test_ext_inference_and_evaluation_zoneout(mode, seed):
    """No autograd: nothing saved (no x_hat, row_stats, fresh, gates), two
    state slots; zoneout's keep = p (evaluation). Equal to the CPU op in float64."""
    options = dict(EXT_ALL[mode])
    for T in (4, 5):  # both parities of the alternating state slots
        args = ext_args(mode, **options, lengths=[T, 2, 0, T - 1], T=T, eval_zoneout=True, seed=seed)
        with torch.no_grad():
            cpu = backends.rnn_layer(*ext_on(args, torch.float64, "cpu", False)[:8], None, args[8], args[9],
                                     backend="cpu", extras=ext_on(args, torch.float64, "cpu", False)[10])
            on_gpu = ext_on(args, torch.float64, "cuda", False)
            actual = backends.rnn_layer(*on_gpu[:8], None, args[8], args[9], backend="cuda", extras=on_gpu[10])
        for name, a, e in zip(("output", "h_n", "c_n", "cell_states"), actual, cpu):
            if e is None:
                assert a is None
                continue
            assert relative_error(a.cpu(), e) <= TOLERANCE[torch.float64], f"{mode} T={T} {name}"


@pytest.mark.gpu
def test_ext_padding_with_nan_reaches_nothing():
    args = ext_on(ext_args("lstm", **EXT_ALL["lstm"], lengths=[5, 2, 4, 1]), torch.float64, "cuda")
    with torch.no_grad():
        for b, n in enumerate(args[8].tolist()):
            args[1][n:, b] = float("nan")
    for t in ext_run("cuda", args, 0):  # every output and every gradient, x's included (zero there)
        assert torch.isfinite(t).all()


@pytest.mark.gpu
def test_ext_modules_run_the_cuda_kernels(no_tf32):
    """LayerNormLSTM / LayerNormGRU on the cuda backend match the same module
    on the cpu backend (layers, directions, lengths)."""
    import rnnkernels as rk

    assert "cuda" in backends.available("cuda", op="rnn_ext", dtype=torch.float32)
    for make in (lambda: rk.LayerNormLSTM(5, 12, num_layers=2, bidirectional=True),
                 lambda: rk.LayerNormGRU(5, 12, bidirectional=True)):
        torch.manual_seed(0)
        module = make().double()
        x = torch.randn(6, 3, 5, dtype=torch.float64)
        lengths = torch.tensor([6, 2, 4])
        expected, _ = module(x, lengths=lengths, backend="cpu")
        gpu = module.cuda()
        actual, _ = gpu(x.cuda(), lengths=lengths, backend="cuda")
        assert relative_error(actual.cpu(), expected) <= TOLERANCE[torch.float64]


@pytest.mark.gpu
def test_ext_refused_by_the_persistent_policy(persistent_path):
    """RNNKERNELS_CUDA_PERSISTENT=1: the extended op has no persistent kernel, an error, not a fallback."""
    args = ext_on(ext_args("gru", zh=0.3), torch.float32, "cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match="RNNKERNELS_CUDA_PERSISTENT=1"):
        backends.rnn_layer(*args[:8], None, args[8], args[9], backend="cuda", extras=args[10])
