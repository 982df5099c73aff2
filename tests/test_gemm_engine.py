"""The CPU GEMM engines under the recurrent loop (csrc/cpu/gemm.h): oneDNN and
the BLAS inside libtorch_cpu give the reference's numbers on every path that
prepares a weight, the choice is reported and switchable, thread settings
survive every call, padding never reaches a gradient, and the build without
oneDNN still compiles."""
import contextlib
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels as rk
from rnnkernels import _ext
from rnnkernels.check import TOLERANCE, RNNCase, run_rnn_case
from cpu_features import cpu_flags

pytestmark = pytest.mark.skipif(_ext.load_error() is not None, reason="needs the compiled extension")

PANELS_RUN = {"avx2", "fma"} <= cpu_flags()
ENGINES = ["blas"] + (["onednn"] if _ext.built_with("onednn") else []) + (["panels"] if PANELS_RUN else [])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def gemm_engine(name):
    torch.ops.rnnkernels.set_cpu_gemm_engine(name)
    try:
        yield
    finally:  # back to what the process chose (or the environment pinned)
        torch.ops.rnnkernels.set_cpu_gemm_engine(os.environ.get("RNNKERNELS_CPU_GEMM") or "auto")


def test_engine_choice_is_reported():
    info = torch.ops.rnnkernels.cpu_gemm_engine()
    assert info.startswith("float32: ")
    if _ext.built_with("onednn") and not os.environ.get("RNNKERNELS_CPU_GEMM"):
        assert "measured on float32 steps, GFLOP/s: onednn" in info and "oneDNN 3." in info
        assert (" panels " in info) == PANELS_RUN
    if not _ext.built_with("onednn"):
        assert "no oneDNN" in info
    if PANELS_RUN:  # the panels' tiles are named: AVX-512 where the CPU has it
        tiles = "AVX2" if "avx512f" not in cpu_flags() or os.environ.get("RNNKERNELS_CPU_PANELS_ISA") == "avx2" \
            else "AVX-512"
        with gemm_engine("panels"):
            assert torch.ops.rnnkernels.cpu_gemm_engine().startswith(f"float32: panels (pinned, {tiles} tiles; ")
    with gemm_engine("blas"):
        assert torch.ops.rnnkernels.cpu_gemm_engine().startswith("float32: blas (pinned); bfloat16: aten")


def test_bad_engine_names_are_refused():
    with pytest.raises(RuntimeError, match="must be 'auto', 'onednn', 'blas' or 'panels', got 'mkl'"):
        torch.ops.rnnkernels.set_cpu_gemm_engine("mkl")
    if not PANELS_RUN:
        with pytest.raises(RuntimeError, match="'panels' needs an x86-64 CPU with AVX2 and FMA"):
            torch.ops.rnnkernels.set_cpu_gemm_engine("panels")
    if not _ext.built_with("onednn"):
        with pytest.raises(RuntimeError, match="'onednn' is not in this build"):
            torch.ops.rnnkernels.set_cpu_gemm_engine("onednn")


# Cases that reach each way a step weight is multiplied: prepared (oneDNN's
# reorder or MKL's pack: T >= 4 and B * 4H * H above 2^18), row counts that
# shrink with uneven lengths (one oneDNN primitive per count), projection,
# the unprepared path of a few steps, and the transposed weight there.
ENGINE_CASES = [
    RNNCase(mode="lstm", steps=6, batch=20, input_size=24, hidden_size=64, lengths=[6, 2, 5, 1] * 5, with_h0=True),
    RNNCase(mode="gru", steps=5, batch=24, input_size=16, hidden_size=64, bidirectional=True, num_layers=2),
    RNNCase(mode="rnn_tanh", steps=7, batch=40, input_size=32, hidden_size=128, lengths=list(range(7, 0, -1)) * 5
            + [7] * 5),
    RNNCase(mode="lstm", steps=5, batch=18, input_size=20, hidden_size=64, proj_size=48),
    RNNCase(mode="lstm", steps=2, batch=3, input_size=5, hidden_size=7),
    # Gate widths that end in a partial panel of 16 columns (panels: 4H = 360, 3H = 225), 3 and 5 rows past 6s.
    RNNCase(mode="lstm", steps=5, batch=9, input_size=12, hidden_size=90, with_h0=True),
    RNNCase(mode="gru", steps=4, batch=17, input_size=10, hidden_size=75, lengths=[4, 3, 1] * 5 + [2, 2]),
    RNNCase(mode="gru", steps=3, batch=40, input_size=16, hidden_size=64, lengths=[3, 1] * 20),
    # A cell's single step: rows_times_weight (up to 32 rows; lengths shrink the step's rows), then BLAS.
    RNNCase(mode="lstm", steps=1, batch=13, input_size=37, hidden_size=20, lengths=[1] * 13),
    RNNCase(mode="rnn_tanh", steps=1, batch=32, input_size=16, hidden_size=33),
    RNNCase(mode="gru", steps=1, batch=33, input_size=24, hidden_size=16),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", ENGINE_CASES, ids=lambda c: f"{c.mode}-T{c.steps}-B{c.batch}-H{c.hidden_size}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engine_matches_float64_reference(engine, case, dtype, seed):
    if dtype == torch.bfloat16 and case.mode == "rnn_tanh" and case.hidden_size > 64:
        case = RNNCase(**{**case.__dict__, "hidden_size": 64})  # bfloat16 rounding grows with the fan-in
    case = RNNCase(**{**case.__dict__, "dtype": dtype})
    with gemm_engine(engine):
        errors = run_rnn_case(case, backend="cpu", seed=seed)
    assert max(errors.values()) < TOLERANCE[dtype], errors


def layer_grads(engine, threads, module, x, lengths):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with gemm_engine(engine):
            module.zero_grad()
            x = x.detach().requires_grad_()
            out, _ = module(x, lengths=lengths)
            out.backward(torch.ones_like(out))
            return [out.detach(), x.grad] + [p.grad.clone() for p in module.parameters()]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_threads_agree_and_repeats_are_bit_identical(engine, seed):
    module = rk.LSTM(32, 96, backend="cpu")
    x = torch.randn(6, 48, 32)
    lengths = torch.randint(1, 7, (48,))
    one = layer_grads(engine, 1, module, x, lengths)
    two = layer_grads(engine, 2, module, x, lengths)
    again = layer_grads(engine, 2, module, x, lengths)
    for a, b, c in zip(one, two, again):
        assert (a - b).abs().max() <= 1e-6 * a.abs().max()
        assert torch.equal(b, c)


@pytest.mark.parametrize("threads", [1, 2])
def test_calls_leave_the_thread_count_alone(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tiny = rk.LSTM(4, 8, backend="cpu")  # a tiny layer runs its steps on one thread
        tiny(torch.randn(3, 1, 4))[0].sum().backward()
        assert torch.get_num_threads() == threads
        with pytest.raises(RuntimeError):  # an error inside the kernel: w_hh of the wrong shape
            torch.ops.rnnkernels.rnn_layer_forward("lstm", torch.randn(3, 1, 4), None, None, torch.randn(32, 4),
                                                   torch.randn(32, 7), None, None, None, None, False, False)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_padding_never_reaches_an_output_or_gradient(engine, mode, poison):
    """Padded input with NaN/Inf past each sequence's end gives torch.nn's
    PackedSequence numbers on the same data, gradients included."""
    torch.manual_seed(0)
    kwargs = dict(proj_size=3) if mode == "lstm" else {}
    cls = {"lstm": (torch.nn.LSTM, rk.LSTM), "gru": (torch.nn.GRU, rk.GRU), "rnn_tanh": (torch.nn.RNN, rk.RNN)}[mode]
    ref = cls[0](4, 6, bidirectional=True, **kwargs).double()
    ours = cls[1](4, 6, bidirectional=True, backend="cpu", **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([2, 5, 4])
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        x[n:, b] = poison
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    with gemm_engine(engine):
        out_ref, _ = ref(pack_padded_sequence(x_ref, lengths, enforce_sorted=False))
        out_ref.data.sum().backward()
        out_ours, _ = ours(x_ours, lengths=lengths)
        out_ours.sum().backward()
    assert torch.isfinite(out_ours).all()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.isfinite(p.grad).all(), name
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12), name
    assert torch.allclose(torch.nan_to_num(x_ours.grad), torch.nan_to_num(x_ref.grad), rtol=1e-10, atol=1e-12)


ROWS_TIMES_WEIGHT_RUNS = "avx512f" in cpu_flags() or PANELS_RUN  # AVX-512, else AVX2 + FMA
# Each vector width the CPU has: "best" is one of them, the other is tested by name.
ROWS_TIMES_WEIGHT_ISAS = ["best"] + [isa for isa, runs in (("avx2", PANELS_RUN), ("avx512", "avx512f" in cpu_flags()))
                                     if runs]


def rows_times_weight(a, w, isa="best"):
    """The kernel's product, or None on a CPU without AVX-512 or AVX2 + FMA, after
    checking that it refuses there (the step then runs on BLAS) rather than answering."""
    if ROWS_TIMES_WEIGHT_RUNS:
        return torch.ops.rnnkernels.cpu_rows_times_weight(a, w, isa)
    with pytest.raises(RuntimeError, match="does not run here"):
        torch.ops.rnnkernels.cpu_rows_times_weight(a, w, isa)
    return None


@pytest.mark.parametrize("isa", ROWS_TIMES_WEIGHT_ISAS)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 16, 31, 32, 64])
def test_rows_times_weight_matches_float64(m, isa, seed):
    """Every tile shape (4 x 4 blocks, the last 1-3 rows, columns past the
    last block of 16, or 4 x 2 and 8 on AVX2) and every k tail, on each
    vector width the CPU has, within float32's worst-case bound for a
    length-k sum."""
    for k in (1, 15, 16, 17, 300, 512):
        if m > 32 and k < 512:
            continue
        for n in (1, 5, 8, 16, 40, 1024):
            a, w = torch.randn(m, k), torch.randn(n, k)
            got = rows_times_weight(a, w, isa)
            if got is None:
                continue
            got = got.double()
            expected = a.double() @ w.double().t()
            bound = (k + 1) * 2.0 ** -24 * (a.double().abs() @ w.double().abs().t())
            assert ((got - expected).abs() <= bound).all(), (m, k, n)


def test_rows_times_weight_is_thread_count_independent(seed):
    a, w = torch.randn(16, 300), torch.randn(2048, 300)  # enough work for both threads
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rows_times_weight(a, w)
        torch.set_num_threads(2)
        two, again = rows_times_weight(a, w), rows_times_weight(a, w)
    finally:
        torch.set_num_threads(previous)
    if ROWS_TIMES_WEIGHT_RUNS:
        assert torch.equal(one, two) and torch.equal(two, again)


def test_rows_times_weight_refuses_what_it_does_not_take():
    with pytest.raises(RuntimeError, match="isa must be 'best', 'avx2' or 'avx512', got 'sse'"):
        torch.ops.rnnkernels.cpu_rows_times_weight(torch.randn(3, 4), torch.randn(8, 4), "sse")
    if "avx512f" not in cpu_flags():
        with pytest.raises(RuntimeError, match="does not run here"):
            torch.ops.rnnkernels.cpu_rows_times_weight(torch.randn(3, 4), torch.randn(8, 4), "avx512")
    with pytest.raises(RuntimeError, match="does not run here"):
        torch.ops.rnnkernels.cpu_rows_times_weight(torch.randn(33, 256), torch.randn(8, 256))
    with pytest.raises(RuntimeError, match="expected a \\(m, k\\) and w \\(n, k\\)"):
        torch.ops.rnnkernels.cpu_rows_times_weight(torch.randn(3, 4), torch.randn(8, 5))
    with pytest.raises(RuntimeError, match="expected float32 CPU tensors"):
        torch.ops.rnnkernels.cpu_rows_times_weight(torch.randn(3, 4).double(), torch.randn(8, 4).double())


PANEL_ISAS = [isa for isa, runs in (("avx2", PANELS_RUN), ("avx512", "avx512f" in cpu_flags())) if runs]


@pytest.mark.parametrize("isa", PANEL_ISAS)
def test_panel_tiles_match_float64(isa, seed):
    """Every tile of the panels engine on each ISA the CPU has (AVX2's 6-row
    tiles, AVX-512's 8-row ones, the last rows across 1-6 panels, blocks cut
    short by a thread's range): row counts 1-25 and past whole tiles,
    columns that end in a partial panel, B packed from W (n, k) and from B
    (k, n) as stored, C = A B and C += A B, within float32's worst-case
    bound for a length-k sum."""
    for m in list(range(1, 26)) + [48, 67]:
        for k, n in ((1, 16), (37, 45), (64, 200), (130, 360), (24, 16 * 13 + 5)):
            a, w, c = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
            product = a.double() @ w.double().t()
            bound = (k + 2) * 2.0 ** -24 * (a.double().abs() @ w.double().abs().t() + c.double().abs())
            got = torch.ops.rnnkernels.cpu_panel_matmul(a, w, isa).double()
            assert ((got - product).abs() <= bound).all(), (isa, m, k, n)
            got = torch.ops.rnnkernels.cpu_panel_matmul(a, w, isa, c).double()
            assert ((got - product - c.double()).abs() <= bound).all(), (isa, m, k, n, "accumulate")
            got = torch.ops.rnnkernels.cpu_panel_matmul(a, w.t().contiguous(), isa, c, transpose=False).double()
            assert ((got - product - c.double()).abs() <= bound).all(), (isa, m, k, n, "B (k, n) as stored")


@pytest.mark.parametrize("isa", PANEL_ISAS)
def test_panel_tiles_are_thread_count_independent(isa, seed):
    a, w = torch.randn(20, 200), torch.randn(800, 200)  # enough panels for both threads
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.rnnkernels.cpu_panel_matmul(a, w, isa)
        torch.set_num_threads(2)
        two = torch.ops.rnnkernels.cpu_panel_matmul(a, w, isa)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


def test_panel_tiles_refuse_what_they_do_not_take():
    with pytest.raises(RuntimeError, match="isa must be 'avx2' or 'avx512', got 'sse'"):
        torch.ops.rnnkernels.cpu_panel_matmul(torch.randn(3, 4), torch.randn(8, 4), "sse")
    for isa in {"avx2", "avx512"} - set(PANEL_ISAS):
        with pytest.raises(RuntimeError, match=f"{isa} tiles do not run on this CPU"):
            torch.ops.rnnkernels.cpu_panel_matmul(torch.randn(3, 4), torch.randn(8, 4), isa)
    if PANEL_ISAS:
        with pytest.raises(RuntimeError, match="expected a \\(m, k\\) and w \\(n, k\\)"):
            torch.ops.rnnkernels.cpu_panel_matmul(torch.randn(3, 4), torch.randn(8, 5), PANEL_ISAS[0])


def test_fma_peak_is_measured():
    peak = torch.ops.rnnkernels.fma_peak_gflops(1)
    assert 1.0 < peak < 1e5


def test_the_build_without_onednn_compiles():
    """setup.py builds without oneDNN where it finds none (the GPU machine):
    the sources that mention it must compile with RNNKERNELS_WITH_ONEDNN unset."""
    from torch.utils.cpp_extension import include_paths
    import sysconfig

    flags = ["-std=c++17", "-fopenmp", "-fsyntax-only", "-I", os.path.join(REPO, "csrc"),
             "-I", sysconfig.get_paths()["include"]]
    for path in include_paths():
        flags += ["-isystem", path]
    for source in ("csrc/cpu/gemm.cpp", "csrc/cpu/onednn.cpp", "csrc/cpu/rows_times_weight.cpp"):
        result = subprocess.run(["g++", *flags, os.path.join(REPO, source)], capture_output=True, text=True)
        assert result.returncode == 0, f"{source}:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("make", [
    lambda: rk.LSTM(6, 8, num_layers=2, bidirectional=True, backend="cpu"),
    lambda: rk.GRU(6, 8, backend="cpu"),
    lambda: rk.LayerNormLSTM(6, 8, backend="cpu"),
], ids=["lstm-2bi", "gru", "layernorm-lstm"])
def test_bfloat16_without_avx512_computes_in_float32(make, monkeypatch, seed):
    """Where oneDNN has no native bfloat16 kernels (CPUs without AVX-512) a
    bfloat16 layer runs the float32 kernels: the float32 result rounded,
    gradients in bfloat16. Forced here, so it runs on every CPU."""
    from rnnkernels import functional
    monkeypatch.setattr(functional, "_CPU_BFLOAT16_NATIVE", False)
    ours = make().bfloat16()
    ours.train()  # torch.nn's default mode; nothing random in these layers
    twin = make().float()
    twin.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    x = torch.randn(5, 3, 6).bfloat16().requires_grad_()
    x32 = x.detach().float().requires_grad_()
    lengths = torch.tensor([5, 2, 4])
    out, _ = ours(x, lengths=lengths)
    expected, _ = twin(x32, lengths=lengths)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.bfloat16())
    grad = torch.randn_like(expected)
    out.backward(grad.bfloat16())
    expected.backward(grad.bfloat16().float())
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, x32.grad.bfloat16())
    for (name, p), q in zip(ours.named_parameters(), twin.parameters()):
        assert p.grad.dtype == torch.bfloat16 and torch.equal(p.grad, q.grad.bfloat16()), name
