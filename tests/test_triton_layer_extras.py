"""The triton backend's op "rnn_ext" (LayerNorm LSTM / GRU, zoneout of h and
c, every step's cell state; rnnkernels/triton_kernels/rnn.py
layer_forward_ext) on CPU tensors in Triton's interpreter, against
rnnkernels.reference.rnn_layer_extended run in float64 on the same (rounded)
inputs: outputs, final states, cell states and the gradients of x, h0, c0,
the weights, the biases and the LayerNorm gains and biases.

Triton has no float64, so there is no gradcheck here: float32 kernels
against the float64 reference (1e-5 relative, as tests/test_triton_rnn.py),
bfloat16 / float16 against a bound derived from torch's own error in that
dtype. The interpreter is set up as in tests/test_triton_rnn.py.
"""
import pytest
import torch

pytest.importorskip("triton")  # an optional dependency: without it these tests skip

from triton_helpers import interpreter_on, run_without_interpreter  # noqa: E402

with interpreter_on():
    from rnnkernels.triton_kernels import rnn as triton_rnn
    from rnnkernels.triton_kernels import rnn_step

import rnnkernels as rk  # noqa: E402
from rnnkernels import backends  # noqa: E402
from rnnkernels.backends import triton as triton_backend  # noqa: E402
from rnnkernels.check import TOLERANCE, relative_error  # noqa: E402
from rnnkernels.reference import LayerExtras, rnn_layer_extended as reference_layer  # noqa: E402
from layer_args import random_layer_args  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def triton_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras):
    return backends.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths, reverse, backend="triton",
                              extras=extras)


OPTIONS = {  # mode -> option sets (ln: LayerNorm of both projections; ln_c: of c; zh / zc: zoneout p)
    "lstm": [dict(ln=True), dict(ln=True, ln_c=True), dict(ln_c=True), dict(zh=0.3), dict(zc=0.4),
             dict(cells=True), dict(ln=True, ln_c=True, zh=0.2, zc=0.4, cells=True)],
    "gru": [dict(ln=True), dict(zh=0.3), dict(ln=True, zh=0.5)],
    "rnn_tanh": [dict(zh=0.3)],
    "rnn_relu": [dict(zh=0.3)],
}
CASES = [(mode, options) for mode, sets in OPTIONS.items() for options in sets]
LAYOUTS = [dict(), dict(lengths=[4, 0, 3]), dict(lengths=[2, 4, 1], reverse=True), dict(with_h0=False),
           dict(bias=False, reverse=True)]


def make_args(mode, T=4, B=3, I=5, H=4, **options):
    """Fresh random float64 arguments (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras),
    float32-representable (so the float32 kernels see exactly the reference's inputs)."""
    return random_layer_args(mode, T=T, B=B, I=I, H=H, float32_values=True, **options)


def cast(value, dtype):
    """A copy of an argument in dtype (a new leaf where the original was one)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(dtype).requires_grad_(value.requires_grad)
    if isinstance(value, LayerExtras):
        return LayerExtras(*[cast(t, dtype) for t in value])
    return value


def leaves(args):
    extras = args[-1]
    return [t for t in args[1:8] + [extras.ln_ih_weight, extras.ln_hh_weight, extras.ln_cell_weight,
                                    extras.ln_cell_bias] if isinstance(t, torch.Tensor) and t.requires_grad]


def outputs_and_grads(layer, args, seed=0):
    """The layer's outputs (None dropped) and the gradients of every leaf of a
    random weighting of all of them (out, h_n, c_n, cell_states)."""
    outputs = [o for o in layer(*args) if o is not None]
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, dtype=torch.float64, generator=gen).to(o.dtype) for o in outputs]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return outputs, list(torch.autograd.grad(loss, leaves(args)))


# As tests/test_fuzz.py CONDITIONING: where a float32 result misses 1e-5, torch's
# own float32 error on the same problem measures how ill-conditioned the draw
# is (LayerNorm's backward cancels), and the kernels may err 16 times that.
# Over 360 draws of CASES x LAYOUTS the worst was 1.2e-5 where torch's was
# 1.6e-6; averaged over draws, the kernels' errors and the CPU op's agree.
CONDITIONING = 16


def worst_error(actual, expected):
    assert len(actual) == len(expected)
    return max(relative_error(a.double(), e) for a, e in zip(actual, expected))


def assert_matches_reference(args, seed, dtype=torch.float32, bound=None):
    expected = sum(outputs_and_grads(reference_layer, args, seed), [])
    low = [cast(a, dtype) for a in args]
    actual_outputs, actual_grads = outputs_and_grads(triton_layer, low, seed)
    actual = actual_outputs + actual_grads
    assert len(actual) == len(expected) and all(a.dtype == dtype for a in actual)
    bound = TOLERANCE[dtype] if bound is None else bound
    error = worst_error(actual, expected)
    if error > bound and dtype == torch.float32:  # ill-conditioned? (CONDITIONING)
        torch_error = worst_error(sum(outputs_and_grads(reference_layer, low, seed), []), expected)
        bound = max(bound, CONDITIONING * torch_error)
    assert error < bound, f"worst of {len(actual_outputs)} outputs and {len(actual_grads)} gradients: " \
                          f"{error:.3e} >= {bound:.1e}; " + \
                          ", ".join(f"{relative_error(a.double(), e):.1e}" for a, e in zip(actual, expected))


def test_kernels_run_in_the_interpreter():
    for kernel in (rnn_step.step_forward_ext_kernel, rnn_step.step_backward_ext_kernel):
        assert type(kernel).__name__ == "InterpretedFunction"
    assert "triton" in backends.available("cpu", op="rnn_ext", dtype=torch.float32)
    assert backends.unavailable_reason("triton", "cpu", op="rnn_ext", dtype=torch.float64) is not None


@pytest.mark.parametrize("mode,options", CASES, ids=[f"{m}-{','.join(o)}" for m, o in CASES])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_matches_the_float64_reference(mode, options, layout, seed):
    args = make_args(mode, **options, **layout, generator=torch.Generator().manual_seed(seed))
    assert_matches_reference(args, seed)


def test_evaluation_zoneout_and_every_option_with_lengths(seed):
    """keep = p everywhere (evaluation zoneout), with every LSTM option at once."""
    args = make_args("lstm", ln=True, ln_c=True, zh=0.3, zc=0.6, cells=True, lengths=[3, 4, 0], reverse=True,
                     eval_zoneout=True, generator=torch.Generator().manual_seed(seed))
    assert_matches_reference(args, seed)


@pytest.mark.parametrize("mode,options", [("lstm", dict(zh=0.3, zc=0.3, cells=True)), ("gru", dict(zh=0.4)),
                                          ("lstm", dict(ln=True, ln_c=True, zc=0.3)), ("gru", dict(ln=True))],
                         ids=["lstm-zoneout", "gru-zoneout", "lstm-ln", "gru-ln"])
def test_several_programs_per_step(monkeypatch, mode, options, seed):
    """Tiles smaller than the layer: column blocks (zoneout alone splits the
    hidden units) and several row blocks (LayerNorm holds whole rows), B = 7
    with uneven lengths, H = 9 (not a power of two)."""
    monkeypatch.setattr(triton_rnn, "STEP_MAX_BLOCK_H", 4)
    monkeypatch.setattr(triton_rnn, "STEP_MAX_BLOCK_B", 2)
    monkeypatch.setattr(triton_rnn, "ROWS_MAX_ELEMENTS", 32)  # 2 rows of 16 columns per program
    block_b, block_h, grid = triton_rnn._ext_blocks(7, 9, triton_rnn.Extras(
        ln_hh=torch.ones(1) if options.get("ln") else None,
        ln_cell_w=torch.ones(1) if options.get("ln_c") else None))
    assert grid[0] == 4 and (grid[1] == 1 if options.get("ln") or options.get("ln_c") else grid[1] == 3)
    args = make_args(mode, **options, T=3, B=7, I=3, H=9, lengths=[3, 1, 0, 2, 3, 3, 1],
                     generator=torch.Generator().manual_seed(seed))
    assert_matches_reference(args, seed)


def test_the_sequence_path_setting_routes_to_the_step_path(monkeypatch, seed):
    """PATH = "sequence" (which the plain layers obey) does not reach the
    extras: they always run the step kernels."""
    monkeypatch.setattr(triton_backend, "PATH", "sequence")
    calls = []
    original = triton_rnn.layer_forward_ext
    monkeypatch.setattr(triton_rnn, "layer_forward_ext", lambda *a, **k: calls.append(1) or original(*a, **k))
    args = make_args("gru", ln=True, zh=0.3, lengths=[4, 2, 3], generator=torch.Generator().manual_seed(seed))
    assert_matches_reference(args, seed)
    assert calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode,options", [("lstm", dict(ln=True, ln_c=True, zh=0.2, zc=0.3, cells=True)),
                                          ("gru", dict(ln=True, zh=0.3)), ("rnn_tanh", dict(zh=0.4))],
                         ids=["lstm", "gru", "rnn_tanh"])
def test_half_precision_is_close_to_float64(dtype, mode, options, seed):
    """Against the float64 reference on the same (rounded) inputs. The bound:
    the dtype's tolerance, or 3x torch's own error computing the reference's
    math in that dtype on those inputs if larger (as tests/test_layer_extras.py
    for the CPU op; the kernels store gates, states and gate gradients in it)."""
    made = make_args(mode, **options, lengths=[5, 3, 4, 1], T=5, B=4, I=8, H=16,
                     generator=torch.Generator().manual_seed(seed))
    high = [cast(cast(a, dtype), torch.float64) for a in made]  # the inputs rounded to dtype
    expected = sum(outputs_and_grads(reference_layer, high, seed), [])
    torch_low = sum(outputs_and_grads(reference_layer, [cast(a, dtype) for a in high], seed), [])
    bound = max(TOLERANCE[dtype], 3 * max(relative_error(t.double(), e) for t, e in zip(torch_low, expected)))
    assert_matches_reference(high, seed, dtype=dtype, bound=bound)


def test_padding_with_nan_reaches_nothing():
    args = make_args("lstm", ln=True, ln_c=True, zh=0.2, zc=0.2, cells=True, lengths=[4, 2, 0])
    args = [cast(a, torch.float32) for a in args]
    with torch.no_grad():
        for b, n in enumerate(args[8].tolist()):
            args[1][n:, b] = float("nan")
    outputs, grads = outputs_and_grads(triton_layer, args)
    for t in outputs + grads:
        assert torch.isfinite(torch.nan_to_num(t, nan=0.0) if t is args[1] else t).all()
    assert torch.isnan(args[1]).any()


def test_double_backward_goes_through_the_reference(seed):
    """create_graph=True: the first gradients are differentiable (taken
    through the reference's math, as rnn_ext_ops.py does), and they and their
    own gradients match the float64 reference."""
    args = make_args("lstm", ln=True, ln_c=True, zh=0.3, zc=0.3, cells=True, lengths=[3, 1, 2], T=3, H=3,
                     generator=torch.Generator().manual_seed(seed))
    results = []
    for layer, dtype in ((reference_layer, torch.float64), (triton_layer, torch.float32),
                         (reference_layer, torch.float32)):
        a = [cast(t, dtype) for t in args]
        outputs = [o for o in layer(*a) if o is not None]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view(o.shape)).sum() for o in outputs)
        firsts = torch.autograd.grad(loss, leaves(a), create_graph=True)
        assert all(g.requires_grad for g in firsts)
        second = sum((g * g).sum() for g in firsts)
        results.append(list(firsts) + list(torch.autograd.grad(second, leaves(a))))
    expected, actual, torch32 = results
    assert worst_error(actual, expected) < max(1e-5, CONDITIONING * worst_error(torch32, expected))


# ------------------------------------------------------------------ modules

MODULES = {
    "ln_lstm": lambda **kw: rk.LayerNormLSTM(5, 4, **kw),
    "ln_gru": lambda **kw: rk.LayerNormGRU(5, 4, **kw),
    "zoneout_gru": lambda **kw: rk.GRU(5, 4, zoneout=0.4, **kw),
    "zoneout_rnn": lambda **kw: rk.RNN(5, 4, zoneout=0.25, nonlinearity="relu", **kw),
    "all_lstm": lambda **kw: rk.LayerNormLSTM(5, 4, zoneout=0.2, cell_zoneout=0.3, weight_drop=0.4, **kw),
}


def run_module(module, x, lengths, backend, seed, **kwargs):
    torch.manual_seed(seed)  # the same masks on both backends (drawn as float32 uniforms whatever the dtype)
    result = module(x, lengths=lengths, backend=backend, **kwargs)
    outputs = [result[0]] + list(result[1] if isinstance(result[1], tuple) else (result[1],)) + list(result[2:])
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outputs)
    return outputs + list(torch.autograd.grad(loss, [x] + list(module.parameters())))


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_modules_match_the_float64_reference(kind, training, seed):
    """rk.LayerNormLSTM(backend="triton") etc.: two layers, both directions,
    batch_first, lengths; float32 on triton against the same module in float64
    on the reference backend."""
    torch.manual_seed(seed)
    module = MODULES[kind](num_layers=2, bidirectional=True, batch_first=True, backend="triton").train(training)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(p.double().float())
            if name.startswith("layer_norm"):  # gains and biases away from 1 and 0, so that a wrong one shows
                p.add_(torch.randn_like(p) * 0.3)
    twin = MODULES[kind](num_layers=2, bidirectional=True, batch_first=True).double().train(training)
    twin.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    x = torch.randn(3, 5, 5)
    lengths = torch.tensor([5, 2, 4])
    cells = dict(return_cell_states=True) if "lstm" in kind else {}
    expected = run_module(twin, x.double().requires_grad_(), lengths, "reference", seed, **cells)
    actual = run_module(module, x.clone().requires_grad_(), lengths, None, seed, **cells)
    assert all(a.dtype == torch.float32 for a in actual)
    error, bound = worst_error(actual, expected), TOLERANCE[torch.float32]
    if error > bound:  # ill-conditioned? (CONDITIONING): torch's own float32 error on the same problem
        bound = max(bound, CONDITIONING * worst_error(
            run_module(module, x.clone().requires_grad_(), lengths, "reference", seed, **cells), expected))
    assert error < bound


# ------------------------------------------------------------ torch.compile


def test_torch_compile_traces_the_ops(seed):
    """Op "rnn_ext" on triton under torch.compile(fullgraph=True): the custom
    ops trace without graph breaks, forward and backward."""
    args = [cast(a, torch.float32) for a in make_args("lstm", ln=True, ln_c=True, zh=0.3, zc=0.2, cells=True,
                                                      lengths=[4, 2, 3], generator=torch.Generator().manual_seed(seed))]
    mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras = args

    def run(x, backend):
        out, h_n, c_n, cells = backends.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths, reverse,
                                                  backend=backend, extras=extras)
        return out.sum() + (h_n * c_n).sum() + (cells * cells).sum()

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    expected = run(x, "reference")
    expected_grads = torch.autograd.grad(expected, [x, w_hh, extras.ln_hh_weight, extras.ln_cell_bias])
    for fn in (run, compiled):
        loss = fn(x, "triton")
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(loss, [x, w_hh, extras.ln_hh_weight, extras.ln_cell_bias])
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,options", [("lstm", dict(ln=True, ln_c=True, zh=0.2, zc=0.3, cells=True)),
                                          ("gru", dict(ln=True, zh=0.3)), ("rnn_relu", dict(zh=0.3))],
                         ids=["lstm", "gru", "rnn_relu"])
def test_opcheck_forward_op(mode, options, seed):
    """Schema, fake kernel and autograd registration agree with the kernels."""
    args = [cast(a, torch.float32) for a in make_args(mode, **options, T=3, B=2, I=3, H=3, lengths=[3, 1],
                                                      generator=torch.Generator().manual_seed(seed))]
    mode_, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, e = args
    op_args = (mode_, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, e.ln_ih_weight, e.ln_hh_weight,
               e.ln_cell_weight, e.ln_cell_bias, e.keep_h, e.keep_c, e.return_cells)
    torch.library.opcheck(torch.ops.rnnkernels.triton_rnn_layer_forward_ext.default, op_args)


# ------------------------------------------------------------------ bad input

BAD = [  # the CPU op's messages (csrc/rnn_layer.cpp check_options)
    ("rnn_tanh", dict(ln=True), "LayerNorm is for lstm and gru, got rnn_tanh"),
    ("gru", dict(cells=True), r"return_cells is for lstm only \(a gru has no cell state\)"),
    ("rnn_relu", dict(cells=True), r"return_cells is for lstm only \(a plain rnn has no cell state\)"),
    ("gru", dict(zc=0.3), r"zoneout of c \(keep_c\) is for lstm only"),
    ("gru", dict(ln_c=True), "ln_cell_weight is for lstm only"),
]


@pytest.fixture
def no_kernels(monkeypatch):
    """Any kernel launch fails the test: errors must come before."""
    def refuse():
        raise AssertionError("a kernel ran before the error")
    monkeypatch.setattr(triton_backend, "_kernels", refuse)


@pytest.mark.parametrize("mode,options,message", BAD, ids=[b[2][:24] for b in BAD])
def test_bad_options_are_the_cpu_ops_errors(no_kernels, mode, options, message):
    args = [cast(a, torch.float32) for a in make_args(mode, **options)]
    with pytest.raises(RuntimeError, match="rnnkernels: " + message):
        triton_layer(*args)


def test_bad_option_tensors_name_the_option(no_kernels):
    args = [cast(a, torch.float32) for a in make_args("lstm", ln=True, ln_c=True, zh=0.3)]
    extras = args[-1]

    def call(**change):
        return triton_layer(*args[:-1], extras._replace(**change))

    with pytest.raises(RuntimeError, match=r"ln_hh_weight must have shape \(gates \* hidden_size,\) = \(16,\), "
                                           r"got \(15,\)"):
        call(ln_hh_weight=extras.ln_hh_weight[:-1].detach())
    with pytest.raises(RuntimeError, match="ln_ih_weight and ln_hh_weight go together"):
        call(ln_hh_weight=None)
    with pytest.raises(RuntimeError, match="ln_cell_weight and ln_cell_bias go together"):
        call(ln_cell_bias=None)
    with pytest.raises(RuntimeError, match=r"keep_h must have shape \(T, batch, hidden_size\) zoneout keep "
                                           r"factors = \(4, 3, 4\), got \(4, 3, 5\)"):
        call(keep_h=torch.ones(4, 3, 5))
    with pytest.raises(RuntimeError, match="keep_h must have dtype torch.float32 like x, got torch.float64"):
        call(keep_h=torch.ones(4, 3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="ln_cell_bias must have dtype torch.float32"):
        call(ln_cell_bias=torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"w_ih must have shape \(16, 5\)"):
        triton_layer(args[0], args[1], args[2], args[3], args[4][:, :-1], *args[5:])


# ------------------------------------------------------- compiled for sm_90, no GPU

_COMPILE_FOR_SM90 = """
from rnnkernels.triton_kernels import rnn_step
from rnnkernels.triton_kernels.rnn_cells import MODE_CODES, NUM_GATES, NUM_SAVED
from triton_helpers import compile_for_sm90 as compile_kernel, rnn_argument_types

FP32 = ("c_ptr", "c_prev_t_ptr", "saved_t_ptr", "dh_ptr", "dc_ptr", "xhat_hh_t_ptr", "stats_t_ptr", "d_ln_cell_t_ptr")

def compile_for_sm90(kernel, dtype, constexprs):
    compile_kernel(kernel, constexprs, rnn_argument_types(dtype, FP32))

everything = dict(LAYER_NORM=True, CELL_NORM=True, ZONEOUT_H=True, ZONEOUT_C=True, RETURN_CELLS=True)
for mode, dtype, flags, block_h in (
        ("lstm", "bf16", everything, 256),
        ("lstm", "fp32", dict(everything, LAYER_NORM=False, CELL_NORM=False), 128),
        ("gru", "fp16", dict(everything, CELL_NORM=False, ZONEOUT_C=False, RETURN_CELLS=False), 64),
        ("rnn_relu", "fp32", dict(LAYER_NORM=False, CELL_NORM=False, ZONEOUT_H=True, ZONEOUT_C=False,
                                  RETURN_CELLS=False), 128)):
    base = dict(MODE=MODE_CODES[mode], G=NUM_GATES[mode], S=NUM_SAVED[mode], HAS_LENGTHS=True, BLOCK_B=16,
                BLOCK_H=block_h, **flags)
    compile_for_sm90(rnn_step.step_forward_ext_kernel, dtype, dict(base, HAS_BIAS=True))
    compile_for_sm90(rnn_step.step_backward_ext_kernel, dtype, base)
    print(mode, dtype, "compiled")
print("all compiled")
"""


def test_ext_kernels_compile_for_sm90():
    """Triton's real compiler for an H100 (no GPU needed), in a process
    without TRITON_INTERPRET: the constexpr branches, row reductions and
    typing the interpreter does not check."""
    run_without_interpreter(_COMPILE_FOR_SM90, done="all compiled")


_COMPILED_CASES = """
import torch
from rnnkernels import backends
from rnnkernels.check import TOLERANCE, relative_error
from rnnkernels.reference import GATES, LayerExtras, rnn_layer_extended
assert type(__import__("rnnkernels.triton_kernels.rnn_step", fromlist=["x"]).step_forward_ext_kernel).__name__ == "JITFunction"
torch.manual_seed(0)
T, B, I, H = 6, 19, 5, 37
lengths = torch.tensor([6, 1, 3, 0] + [6] * 15)
for mode in ("lstm", "gru", "rnn_tanh"):
    G, lstm, ln = GATES[mode], mode == "lstm", mode != "rnn_tanh"
    def leaf(*shape, offset=0.0):
        return (torch.randn(*shape, dtype=torch.float64) * 0.5 + offset).requires_grad_()
    args = [leaf(T, B, I), leaf(B, H), leaf(B, H) if lstm else None, leaf(G * H, I), leaf(G * H, H), leaf(G * H),
            leaf(G * H)]
    keep = lambda: torch.bernoulli(torch.full((T, B, H), 0.3, dtype=torch.float64))
    extras = LayerExtras(leaf(G * H, offset=1) if ln else None, leaf(G * H, offset=1) if ln else None,
                         leaf(H, offset=1) if lstm else None, leaf(H) if lstm else None, keep(),
                         keep() if lstm else None, lstm)
    def run(args, extras, backend):
        outs = [o for o in backends.rnn_layer(mode, *args, None, lengths, True, backend=backend, extras=extras)
                if o is not None]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view(o.shape)).sum()
                   for o in outs)
        inputs = [t for t in list(args) + list(extras[:4]) if t is not None]
        return outs + list(torch.autograd.grad(loss, inputs))
    for dtype in (torch.float32, torch.bfloat16):
        def to(t, dtype, device):
            if not isinstance(t, torch.Tensor):
                return t
            return t.detach().to(dtype).to(device).requires_grad_(t.requires_grad)
        rounded = [to(to(a, dtype, "cpu"), torch.float64, "cpu") for a in args]
        rounded_extras = LayerExtras(*[to(to(t, dtype, "cpu"), torch.float64, "cpu") for t in extras])
        expected = run(rounded, rounded_extras, "reference")
        actual = run([to(a, dtype, "cuda") for a in rounded], LayerExtras(*[to(t, dtype, "cuda") for t in rounded_extras]),
                     "triton")
        worst = max(relative_error(a.double().cpu(), e) for a, e in zip(actual, expected))
        torch_low = run([to(a, dtype, "cpu") for a in rounded], LayerExtras(*[to(t, dtype, "cpu") for t in rounded_extras]),
                        "reference")
        torch_error = max(relative_error(a.double(), e) for a, e in zip(torch_low, expected))
        bound = max(TOLERANCE[dtype], 16 * torch_error if dtype == torch.float32 else 3 * torch_error)
        assert worst <= bound, (mode, dtype, worst, bound)
        print(mode, dtype, worst, bound)
print("compiled ext kernels ok")
"""


@pytest.mark.gpu
def test_compiled_ext_kernels_on_cuda():
    """The compiled kernels on CUDA tensors (fp32, bf16), a fresh process:
    this module's kernels are interpreted."""
    run_without_interpreter(_COMPILED_CASES, done="compiled ext kernels ok")
