"""The `cpu` backend (csrc/rnn_layer.cpp, csrc/cpu/): gradients, equality with
the float64 reference, thread independence, bad input, opcheck, torch.compile."""
import itertools

import pytest
import torch

import rnnkernels as rk
from rnnkernels import _ext, backends
from rnnkernels.check import TOLERANCE, RNNCase, relative_error, run_rnn_case
from rnnkernels.reference import GATES


MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
forward_op = torch.ops.rnnkernels.rnn_layer_forward
backward_op = torch.ops.rnnkernels.rnn_layer_backward


def layer_inputs(mode, T=3, B=3, I=2, H=3, proj=0, bias=True, with_h0=True, lengths=None, dtype=torch.float64,
                 seed=0, requires_grad=True):
    """Fresh random arguments of rnn_layer_forward (before `reverse, training`)."""
    gen = torch.Generator().manual_seed(seed)
    P = proj or H
    G = GATES[mode] * H

    def rand(*shape):
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype).requires_grad_(requires_grad)

    x = rand(T, B, I)
    h0 = rand(B, P) if with_h0 else None
    c0 = rand(B, H) if with_h0 and mode == "lstm" else None
    w_ih, w_hh = rand(G, I), rand(G, P)
    b_ih, b_hh = (rand(G), rand(G)) if bias else (None, None)
    w_hr = rand(P, H) if proj else None
    lengths = torch.tensor(lengths, dtype=torch.int64) if lengths is not None else None
    return [mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths]


# ---------------------------------------------------------------- gradcheck

GRADCHECK_OPTIONS = [
    dict(),
    dict(lengths=[3, 1, 2]),
    dict(lengths=[0, 3, 2], reverse=True),
    dict(reverse=True),
    dict(with_h0=False),
    dict(bias=False, lengths=[2, 3, 3]),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", GRADCHECK_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_gradcheck(mode, options):
    options = dict(options)
    reverse = options.pop("reverse", False)
    args = layer_inputs(mode, **options)
    check_layer_gradients(args, reverse)


@pytest.mark.parametrize("options", [dict(), dict(lengths=[3, 1, 2], reverse=True), dict(with_h0=False, lengths=[2, 0, 3])],
                         ids=["plain", "lengths-reverse", "no-h0"])
def test_gradcheck_lstm_projection(options):
    options = dict(options)
    reverse = options.pop("reverse", False)
    check_layer_gradients(layer_inputs("lstm", H=4, proj=2, **options), reverse)


def check_layer_gradients(args, reverse):
    mode = args[0]
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def fn(*tensors):
        full = list(args)
        for i, t in zip(tensor_positions, tensors):
            full[i] = t
        out, h_n, c_n, *_ = forward_op(*full, reverse, True)
        return (out, h_n, c_n) if mode == "lstm" else (out, h_n)

    inputs = tuple(args[i] for i in tensor_positions)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------- equality with the reference

CASES = [
    RNNCase(mode=m, **kw)
    for m, kw in itertools.product(MODES, [
        dict(),
        dict(steps=1),
        dict(batch=1, steps=7),
        dict(hidden_size=13, lengths=[5, 2, 4]),
        dict(bidirectional=True, lengths=[1, 5, 3], num_layers=2),
        dict(batch_first=True, bias=False, with_h0=False, lengths=[5, 0, 1]),
        dict(batch=9, steps=6, hidden_size=21, input_size=7, bidirectional=True, lengths=[6, 1, 2, 3, 4, 5, 6, 6, 2]),
    ])
] + [
    RNNCase(mode="lstm", proj_size=3, hidden_size=7, bidirectional=True, lengths=[5, 1, 3], num_layers=2),
    RNNCase(mode="lstm", proj_size=1, hidden_size=5, steps=1, batch=1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.describe())
def test_matches_reference(case, dtype):
    case.dtype = dtype
    errors = run_rnn_case(case, "cpu", seed=3)
    assert max(errors.values()) < TOLERANCE[dtype], errors


@pytest.mark.parametrize("case", [
    RNNCase("lstm", bidirectional=True, steps=6, batch=24, input_size=10, hidden_size=100,
            lengths=[6, 1, 4, 6, 0, 3] * 4),
    RNNCase("lstm", steps=5, batch=40, input_size=7, hidden_size=90, proj_size=70, lengths=[5, 2, 4, 1] * 10),
    RNNCase("gru", bidirectional=True, steps=5, batch=24, input_size=9, hidden_size=110, lengths=[5, 3, 1] * 8),
    RNNCase("rnn_tanh", steps=4, batch=32, input_size=5, hidden_size=300),
], ids=lambda c: c.describe())
def test_float32_packed_weight_path_matches_reference(case):
    # Batch x weight size above csrc/rnn_layer.cpp's kTinyStepMacs: the step
    # GEMMs run on MKL-packed weights (when torch's BLAS is MKL), and uneven
    # lengths shrink their row count below the packed maximum.
    case.dtype = torch.float32
    errors = run_rnn_case(case, "cpu", seed=5)
    assert max(errors.values()) < TOLERANCE[torch.float32], errors


def lengths_summing_to(total, T, B):
    """B lengths in [1, T], the first T, summing to `total` (B <= total <= T * B), spread over the batch."""
    lengths = [1] * B
    lengths[0] = T
    left, b = total - (T + B - 1), 1
    while left > 0:
        step = min(left, T - lengths[b])
        lengths[b] += step
        left -= step
        b = b % (B - 1) + 1
    return [lengths[(5 * i) % B] for i in range(B)]  # a permutation (gcd(5, B) = 1): unsorted, as callers pass them


@pytest.mark.parametrize("rows", [31, 32, 33, 64, 65, 107])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_packed_rows_of_any_count_match_reference(mode, rows):
    # Uneven lengths run the products over all steps on the packed rows,
    # N = sum(lengths) of them rounded up to 32 with zero rows (BatchOrder in
    # csrc/rnn_layer.cpp): N below, at and above a multiple of 32, and one
    # short of T * B, where the rounding stops at T * B.
    T, B = 9, 12
    lengths = lengths_summing_to(rows, T, B)
    assert sum(lengths) == rows and max(lengths) == T and min(lengths) >= 1
    case = RNNCase(mode=mode, steps=T, batch=B, input_size=5, hidden_size=7, lengths=lengths, bidirectional=True)
    errors = run_rnn_case(case, "cpu", seed=rows)
    assert max(errors.values()) < TOLERANCE[torch.float64], errors


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_bfloat16_close_to_reference(mode):
    # bfloat16 storage, float32 gate math: within the harness' bfloat16 tolerance.
    # (rnn_relu is left out: its unbounded state amplifies bfloat16 rounding.)
    case = RNNCase(mode=mode, hidden_size=16, input_size=8, lengths=[5, 3, 4], dtype=torch.bfloat16)
    errors = run_rnn_case(case, "cpu", seed=1)
    assert max(errors.values()) < TOLERANCE[torch.bfloat16], errors


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_float32_gate_math_is_accurate_elementwise(mode):
    # The float32 pointwise pass uses polynomial exp/tanh and a Newton
    # reciprocal (csrc/cpu/fast_math.h). One step from a zero state with
    # input_size 1 and unit input weights makes every gate's pre-activation the
    # input itself, so h is a product of sigmoids and tanhs of x with no
    # cancellation: each element must match float64 to a few ulp, over
    # pre-activations from -100 to 100 (where the exp and reciprocal clamp).
    x = torch.cat([torch.empty(3000).uniform_(-100, 100), torch.empty(1000).uniform_(-1, 1)])
    x = x.view(1, -1, 1)
    w_ih = torch.ones(GATES[mode], 1)
    if mode == "gru":  # z = sigmoid(0) = 1/2: 1 - z would cancel in float32 for large x (in torch.nn too)
        w_ih[1] = 0
    w_hh = torch.randn(GATES[mode], 1)
    h32 = forward_op(mode, x, None, None, w_ih, w_hh, None, None, None, None, False, False)[0].double()
    s = torch.sigmoid(x.double())
    t = torch.tanh(x.double())
    h64 = {"lstm": s * torch.tanh(s * t), "gru": 0.5 * t, "rnn_tanh": t}[mode]
    tiny = h64.abs() < 1e-30  # sigmoid below 1e-30: only an absolute bound is meaningful there
    assert ((h32 - h64).abs()[tiny] < 1e-30).all()
    rel = ((h32 - h64).abs() / h64.abs())[~tiny]
    assert rel.max().item() < 3e-6, f"worst element x = {x.view(-1)[~tiny.view(-1)][rel.view(-1).argmax()]}"


TANH_ONE = 9.0109138488769531  # the least float whose tanh rounds to 1 in float32


def test_float32_tanh_sweep_saturates_exactly_and_keeps_nan():
    # RNN-tanh, one step from a zero state, unit input weight: h = tanh(x) elementwise.
    magnitudes = torch.logspace(-38, 38, 40001, dtype=torch.float64).float()
    x = torch.cat([torch.linspace(-20, 20, 400001), magnitudes, -magnitudes,
                   torch.tensor([TANH_ONE, -TANH_ONE, 7.9053111, 8.5, 1e30, 3e38])])
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0])
    h = forward_op("rnn_tanh", torch.cat([x, special]).view(1, -1, 1), None, None, torch.ones(1, 1),
                   torch.zeros(1, 1), None, None, None, None, False, False)[0].view(-1)
    h, h_special = h[: x.numel()], h[x.numel():]
    exact = torch.tanh(x.double())
    nonzero = x != 0
    rel = ((h.double() - exact).abs() / exact.abs())[nonzero]
    assert rel.max().item() < 5e-7, f"worst x = {x[nonzero][rel.argmax()]}"
    saturated = x.abs() >= TANH_ONE
    assert torch.equal(h[saturated], x[saturated].sign()), "tanh must be exactly +-1 where it rounds to 1"
    assert h_special[:2].tolist() == [1.0, -1.0] and h_special[2].isnan() and h_special[3] == 0


def test_float32_saturated_tanh_derivative_is_as_accurate_as_torch():
    """d tanh(x) / dx through an Elman layer with W_ih = 1 is 1 - tanh(x)^2,
    which for a saturated unit keeps only what tanh's rounding leaves (the
    rational tanh used before kept a third of it: issue 16's fuzz). Against
    float64 over x in [1, 10], drawn afresh: within 1.5 times the relative
    error of torch's own float32 tanh; exactly 0 where float32 tanh is 1."""
    x = ((torch.rand(4000) * 9 + 1) * (torch.randint(0, 2, (4000,)) * 2 - 1)).view(1, -1, 1).requires_grad_()
    out, *_ = forward_op("rnn_tanh", x, None, None, torch.ones(1, 1), torch.zeros(1, 1), None, None, None, None,
                         False, True)
    derivative, = torch.autograd.grad(out.sum(), x)
    truth = 1 - torch.tanh(x.detach().double()) ** 2
    relative = lambda d: ((d.double() - truth).abs() / truth).max().item()
    assert relative(derivative) < 1.5 * relative(1 - torch.tanh(x.detach()).double() ** 2)
    assert (derivative[x.detach().abs() >= TANH_ONE] == 0).all()


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("magnitude", [1e30, float("inf")])
def test_saturated_gates_give_torch_gradients(mode, magnitude):
    # Derivatives of saturated tanh and sigmoid must be exactly 0, as torch's
    # are: a floor of 1e-7 times an input of 1e30 gave weight gradients of
    # 1e23, and times Inf gave Inf where torch gives NaN (0 * Inf).
    torch.manual_seed(0)
    torch_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[mode]
    rk_cls = {"lstm": rk.LSTM, "gru": rk.GRU, "rnn_tanh": rk.RNN}[mode]
    ours, theirs = rk_cls(3, 4, backend="cpu"), torch_cls(3, 4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 2, 3).sign() * magnitude
    h0 = torch.randn(1, 2, 4) * 1e13  # |h0| >= 1e13 gave NaN GRU gradients
    hx = (h0, torch.randn(1, 2, 4)) if mode == "lstm" else h0
    for module in (ours, theirs):
        out, _ = module(x, hx)
        out.backward(torch.ones_like(out))
    for (name, mine), theirs_p in zip(ours.named_parameters(), theirs.parameters()):
        a, b = mine.grad, theirs_p.grad
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf()), name
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-5, atol=1e-5, msg=name)


# ------------------------------------------------ threads and determinism

def run_module_with_grads(mode, threads, seed=0):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        # large enough that the pointwise pass splits rows over two threads
        module = {"lstm": rk.LSTM, "gru": rk.GRU, "rnn_tanh": rk.RNN}[mode](16, 48, backend="cpu")
        x = torch.randn(6, 64, 16, requires_grad=True)
        lengths = torch.randint(1, 7, (64,))
        out, _ = module(x, lengths=lengths)
        out.backward(torch.randn_like(out))
        return [out.detach(), x.grad] + [p.grad for p in module.parameters()]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_threads_agree_and_repeats_are_bit_identical(mode):
    one = run_module_with_grads(mode, 1)
    two = run_module_with_grads(mode, 2)
    again = run_module_with_grads(mode, 2)
    for a, b, c in zip(one, two, again):
        assert relative_error(b, a) < 1e-6
        assert torch.equal(b, c)


# ---------------------------------------------------------------- bad input

def call_forward(args, reverse=False, training=False):
    return forward_op(*args, reverse, training)


def replaced(args, index, value):
    args = list(args)
    args[index] = value
    return args


BAD_INPUTS = [
    # (description, change to valid lstm args, expected message fragment)
    ("mode", lambda a: replaced(a, 0, "lstn"), "mode must be one of"),
    ("x not 3-D", lambda a: replaced(a, 1, a[1][0]), "x must be 3-D"),
    ("x integer", lambda a: replaced(a, 1, a[1].long()), "x must be float32, float64 or bfloat16"),
    ("x float16", lambda a: replaced(a, 1, a[1].half()), "x must be float32, float64 or bfloat16"),
    ("h0 shape", lambda a: replaced(a, 2, a[2][:, :2]), "h0 must have shape"),
    ("h0 dtype", lambda a: replaced(a, 2, a[2].float()), "h0 must have dtype"),
    ("c0 shape", lambda a: replaced(a, 3, a[3][:2]), "c0 must have shape"),
    ("w_ih rows", lambda a: replaced(a, 4, a[4][:5]), "w_ih must have shape"),
    ("w_ih cols", lambda a: replaced(a, 4, a[4][:, :1]), "w_ih must have shape"),
    ("w_hh", lambda a: replaced(a, 5, a[5][:, :2]), "w_hh must have shape"),
    ("b_ih", lambda a: replaced(a, 6, a[6][:4]), "b_ih must have shape"),
    ("b_hh dtype", lambda a: replaced(a, 7, a[7].float()), "b_hh must have dtype"),
    ("w_hr", lambda a: replaced(a, 8, torch.randn(3, 5, dtype=torch.float64)), "w_hr must have shape"),
    ("lengths too long", lambda a: replaced(a, 9, torch.tensor([3, 4, 1])), "lengths must lie in [0, 3]"),
    ("lengths negative", lambda a: replaced(a, 9, torch.tensor([3, -1, 1])), "lengths must lie in [0, 3]"),
    ("lengths shape", lambda a: replaced(a, 9, torch.tensor([3, 1])), "lengths must have shape (3,)"),
    ("lengths dtype", lambda a: replaced(a, 9, torch.tensor([3.0, 1.0, 2.0])), "lengths must be int64"),
]


@pytest.mark.parametrize("name,change,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_named_before_any_work(name, change, message):
    args = change(layer_inputs("lstm", requires_grad=False, lengths=[3, 1, 2]))
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        call_forward(args)
    for a, b in zip(args, before):  # the caller's tensors are untouched
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_state_arguments_for_the_wrong_cell_are_rejected():
    args = layer_inputs("gru", requires_grad=False)
    with pytest.raises(RuntimeError, match="c0 is only for lstm"):
        call_forward(replaced(args, 3, torch.zeros(3, 3, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match=r"w_hr \(projection\) is only for lstm"):
        call_forward(replaced(args, 8, torch.zeros(3, 3, dtype=torch.float64)))


def test_backward_without_training_forward_is_a_clear_error():
    args = layer_inputs("lstm")
    out, *_ = call_forward(args, training=False)
    with pytest.raises(RuntimeError, match="training=False"):
        out.sum().backward()


def test_non_contiguous_inputs_are_read_correctly():
    args = layer_inputs("lstm", requires_grad=False, H=4, proj=2, lengths=[3, 2, 1])
    strided = list(args)
    strided[1] = args[1].transpose(0, 1).contiguous().transpose(0, 1)  # (T, B, I) with batch-major strides
    strided[4] = args[4].t().contiguous().t()
    strided[5] = args[5].t().contiguous().t()
    strided[8] = args[8].t().contiguous().t()
    strided[6] = torch.stack([args[6], args[6]], 1)[:, 0]
    assert not strided[1].is_contiguous() and not strided[4].is_contiguous() and not strided[6].is_contiguous()
    for a, b in zip(call_forward(args), call_forward(strided)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,B,lengths", [(4, 0, None), (3, 2, [0, 0]), (3, 2, [0, 3])])
def test_empty_shapes_match_reference(mode, T, B, lengths):
    torch.manual_seed(0)
    cls = {"lstm": rk.LSTM, "gru": rk.GRU, "rnn_tanh": rk.RNN, "rnn_relu": rk.RNN}[mode]
    kwargs = {"nonlinearity": "relu"} if mode == "rnn_relu" else {}
    module = cls(3, 4, bidirectional=True, **kwargs).double()
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    length_tensor = torch.tensor(lengths, dtype=torch.int64) if lengths is not None else None
    out, state = module(x, lengths=length_tensor, backend="cpu")
    ref_out, ref_state = module(x, lengths=length_tensor, backend="reference")
    states = state if isinstance(state, tuple) else (state,)
    ref_states = ref_state if isinstance(ref_state, tuple) else (ref_state,)
    assert out.shape == ref_out.shape and torch.allclose(out, ref_out)
    for s, r in zip(states, ref_states):
        assert s.shape == r.shape and torch.allclose(s, r)
    (out.sum() + sum(s.sum() for s in states)).backward()  # backward runs too
    assert x.grad is None or x.grad.shape == x.shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B", [0, 3])
def test_zero_steps_raise_torch_error(mode, B):
    """T=0: the modules raise torch.nn's own error on every backend."""
    cls = {"lstm": rk.LSTM, "gru": rk.GRU, "rnn_tanh": rk.RNN, "rnn_relu": rk.RNN}[mode]
    module = cls(3, 4, bidirectional=True)
    for backend in ("cpu", "reference"):
        with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
            module(torch.randn(0, B, 3), backend=backend)


# ------------------------------------------------------ backend selection

def test_auto_picks_cpu_for_cpu_tensors():
    assert backends.available("cpu", dtype=torch.float32)[0] == "cpu"
    assert backends.resolve(None, "cpu", "rnn", torch.float64)[0] == "cpu"
    assert "float16" in backends.unavailable_reason("cpu", "cpu", dtype=torch.float16)
    assert "CPU tensors only" in backends.unavailable_reason("cpu", "cuda", dtype=torch.float32)


def test_inference_saves_nothing():
    args = layer_inputs("lstm", requires_grad=False, H=4, proj=2)
    *_, states, cells, gates, hidden_raw = call_forward(args, training=False)
    assert states.numel() == cells.numel() == gates.numel() == hidden_raw.numel() == 0
    *_, states, cells, gates, hidden_raw = call_forward(args, training=True)
    assert states.shape == (4, 3, 2) and cells.shape == (4, 3, 4) and gates.shape == (3, 3, 16)
    assert hidden_raw.shape == (3, 3, 4)


# ------------------------------------------------------------------ opcheck

OPCHECK_CASES = [("lstm", dict(proj=2, H=4, lengths=[3, 1, 2])), ("lstm", dict(with_h0=False)),
                 ("gru", dict(lengths=[2, 3, 0])), ("rnn_tanh", dict(bias=False)), ("rnn_relu", dict())]


@pytest.mark.parametrize("mode,options", OPCHECK_CASES, ids=[c[0] + str(i) for i, c in enumerate(OPCHECK_CASES)])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck(mode, options, reverse):
    args = layer_inputs(mode, dtype=torch.float32, **options)
    torch.library.opcheck(forward_op, tuple(args) + (reverse, True))
    no_grad_args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(forward_op, tuple(no_grad_args) + (reverse, False))
    # the backward op on a training forward's saved activations
    out, h_n, c_n, states, cells, gates, hidden_raw = forward_op(*no_grad_args, reverse, True)
    x, w_ih, w_hh, w_hr, lengths = no_grad_args[1], no_grad_args[4], no_grad_args[5], no_grad_args[8], no_grad_args[9]
    grad_c_n = torch.randn_like(c_n) if mode == "lstm" else None
    backward_args = (mode, torch.randn_like(out), torch.randn_like(h_n), grad_c_n, x, w_ih, w_hh, w_hr, lengths, reverse,
                     states, cells, gates, hidden_raw, no_grad_args[6] is not None, True, True)
    torch.library.opcheck(backward_op, backward_args)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("reverse", [False, True])
def test_gate_grads_are_what_the_weight_grads_are_products_of(mode, reverse, seed):
    """rnn_layer_gate_grads (what rk's cells gather over steps): its input and
    state gradients are rnn_layer_backward's, and d_gi^T x, d_gh^T h_entering,
    and their row sums are its weight and bias gradients; float64, T = 4."""
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in layer_inputs(mode, T=4, seed=seed)]
    _, _, c_n, states, cells, gates, hidden_raw = forward_op(*args, reverse, True)
    x, w_ih, w_hh = args[1], args[4], args[5]
    T, B = x.shape[0], x.shape[1]
    grad_output, grad_h_n = torch.randn(T, B, w_hh.shape[1], dtype=x.dtype), torch.randn_like(states[0])
    grad_c_n = torch.randn_like(c_n) if mode == "lstm" else None
    expected = backward_op(mode, grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, None, None, reverse, states, cells,
                           gates, hidden_raw, True, True, True)
    gate_grads = torch.ops.rnnkernels.rnn_layer_gate_grads
    grad_x, grad_h0, grad_c0, d_gi, d_gh = gate_grads(mode, grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, reverse,
                                                      states, cells, gates, True)
    assert (d_gh.numel() == 0) == (mode != "gru")
    d_gi, d_gh = d_gi.reshape(T * B, -1), (d_gh if mode == "gru" else d_gi).reshape(T * B, -1)
    entering = states.narrow(0, 1 if reverse else 0, T).reshape(T * B, -1)
    got = (grad_x, grad_h0, grad_c0 if mode == "lstm" else expected[2], d_gi.t() @ x.reshape(T * B, -1),
           d_gh.t() @ entering, d_gi.sum(0), d_gh.sum(0))
    torch.testing.assert_close(got, tuple(expected[:7]), rtol=1e-10, atol=1e-12)
    torch.library.opcheck(gate_grads, (mode, grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, reverse, states, cells,
                                       gates, True))


# ---------------------------------------------------------- torch.compile

class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rk.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x, lengths):
        out, (h, c) = self.rnn(x, lengths=lengths)
        return self.head(out).square().mean() + h.square().mean() + c.mean()


def compile_and_compare(backend):
    torch.manual_seed(0)
    model = Tagger()
    x, lengths = torch.randn(5, 3, 4), torch.tensor([5, 2, 4])
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: a graph break is an error
    loss = compiled(x, lengths)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(x, lengths)
    expected.backward()
    assert relative_error(loss, expected) < 1e-5
    for g, p in zip(grads, model.parameters()):
        assert relative_error(g, p.grad) < 1e-5


def test_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    compile_and_compare("aot_eager")


def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    compile_and_compare("inductor")


def test_torch_nn_lstm_keeps_dynamo_default():
    # The Dynamo patch for rnnkernels modules leaves torch.nn's own alone.
    from torch._dynamo import config

    torch._dynamo.reset()
    assert config.allow_rnn is False
    with pytest.raises(Exception, match="LSTM"):
        torch.compile(torch.nn.LSTM(2, 3), fullgraph=True, backend="eager")(torch.randn(2, 1, 2))


@pytest.mark.parametrize("mode", MODES)
def test_gradient_through_final_state_only(mode):
    # The output is unused: its gradient reaches backward as None, not zeros.
    args = layer_inputs(mode, lengths=[3, 1, 2], H=4, proj=2 if mode == "lstm" else 0)
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    _, h_n, *_ = forward_op(*args, True, True)
    grads = torch.autograd.grad(h_n.square().sum(), tensors)
    _, ref_h_n, _ = rk.reference.rnn_layer(*args, reverse=True)
    ref_grads = torch.autograd.grad(ref_h_n.square().sum(), tensors)
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) < 1e-10


def test_float32_tanh_saturates_exactly_and_keeps_non_finite_values():
    """h = tanh(x) through an Elman layer with W_ih = I: exactly +-1 where
    tanh rounds to +-1 in float32 (so the derivative is 0, not 2.4e-7), +-1
    for +-Inf, NaN for NaN, and within a few ulp of torch.tanh on the way
    there (9.0109, a float below TANH_ONE, has tanh 1 - 2.98031e-8, which
    rounds to 1 - 2^-24: torch's tanh gives 1 there, ours the rounded value)."""
    x = torch.tensor([TANH_ONE, 9.5, 20.0, 1e13, 1e30, float("inf"), float("nan"), 9.0109, 8.0, 7.9, 3.0, 0.625,
                      1e-3, 0.0])
    x = torch.cat([x, -x]).view(1, -1, 1)  # one unit, a value per batch row (a GEMM would spread a NaN)
    one, zero = torch.ones(1, 1), torch.zeros(1, 1)
    out, _, _, *_ = forward_op("rnn_tanh", x, None, None, one, zero, None, None, None, None, False, False)
    expected = torch.tanh(x)
    finite = torch.isfinite(x) & (x.abs() < TANH_ONE)
    assert torch.equal(out[~finite & ~x.isnan()], expected[~finite & ~x.isnan()])
    assert out[x.isnan()].isnan().all()
    assert ((out[finite] - expected[finite]).abs() <= 4 * torch.finfo(torch.float32).eps * expected[finite].abs()).all()
    # The gradient of a saturated unit is 0 (torch's), whatever the input's size.
    x = torch.tensor([[[1e30], [-1e30], [50.0]]], requires_grad=True)
    w = torch.ones(1, 1, requires_grad=True)
    out, *_ = torch.ops.rnnkernels.rnn_layer_forward("rnn_tanh", x, None, None, w, torch.zeros(1, 1), None, None, None,
                                                     None, False, True)
    grad_w, = torch.autograd.grad(out.sum(), w)
    assert torch.equal(grad_w, torch.zeros(1, 1))


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_inference_states_match_training_and_leave_h0_alone(mode):
    """Inference reads h0 / c0 in place and alternates two buffers (csrc/rnn_layer.cpp,
    StateSequence): its outputs equal training's bit for bit, h0 and c0 are never
    written, and the final states are tensors of their own, for every T from 0
    (the final state is then h0's value) with and without reverse and lengths."""
    G = GATES[mode]
    for T in range(5):
        for reverse in (False, True):
            for lengths in (None, torch.tensor([T, max(T - 1, 0), T])):
                x, h0 = torch.randn(T, 3, 5), torch.randn(3, 4)
                c0 = torch.randn(3, 4) if mode == "lstm" else None
                weights = (torch.randn(G * 4, 5), torch.randn(G * 4, 4), torch.randn(G * 4), torch.randn(G * 4))
                kept = [t.clone() for t in (h0, c0) if t is not None]
                inference = forward_op(mode, x, h0, c0, *weights, None, lengths, reverse, False)[:3]
                training = forward_op(mode, x, h0, c0, *weights, None, lengths, reverse, True)[:3]
                for ours, theirs in zip(inference, training):
                    assert torch.equal(ours, theirs), (T, reverse, lengths)
                for state, before, final in zip((h0, c0), kept, inference[1:]):
                    assert torch.equal(state, before)
                    assert final.data_ptr() != state.data_ptr()
