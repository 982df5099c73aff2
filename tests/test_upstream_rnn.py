"""What PyTorch's own tests check of its recurrent modules, run twice: on
torch.nn's class ("stock") and on its rnnkernels twin ("swapped").

Ported (written anew from what the upstream tests check, not copied) from
test/test_modules.py (TestModule: every test that runs on the CPU), the
recurrent tests of test/test_nn.py, test/test_expanded_weights.py
(TestExpandedWeightModule.test_module) and test/nn/test_pruning.py (the RNN
ones). Inputs, reference functions and expected errors are upstream's own:
torch's module_db (torch.testing._internal.common_modules, in the wheel).
A swapped test that fails where its stock twin passes is an incompatibility.
"""
import copy
import io
import itertools
import re
from functools import partial

import pytest
import torch
import torch.nn.utils.rnn as rnn_utils
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils._per_sample_grad import call_for_per_sample_grads
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.testing._internal.common_utils import freeze_rng_state
from torch.utils._pytree import tree_flatten, tree_map_only, tree_unflatten

import rnnkernels as rk

SWAP = {nn.LSTM: rk.LSTM, nn.GRU: rk.GRU, nn.RNN: rk.RNN,
        nn.LSTMCell: rk.LSTMCell, nn.GRUCell: rk.GRUCell, nn.RNNCell: rk.RNNCell}
INFOS = {info.module_cls.__name__: info for info in module_db if info.module_cls in SWAP}
LAYERS = ["LSTM", "GRU", "RNN"]

impl = pytest.mark.parametrize("impl", ["stock", "swapped"])
every_module = pytest.mark.parametrize("name", sorted(INFOS))
training_modes = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


def nn_class(impl: str, torch_class):
    return torch_class if impl == "stock" else SWAP[torch_class]


def cls_of(name, impl):
    return nn_class(impl, INFOS[name].module_cls)


def module_inputs(name, dtype=torch.float64, requires_grad=False, training=True, **kwargs):
    info = INFOS[name]
    return [mi for mi in info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=requires_grad,
                                                 training=training, **kwargs) if mi.forward_input is not None]


def build(name, impl, module_input, dtype, training):
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    m = cls_of(name, impl)(*args, **kwargs).to(dtype)
    m.train(training)
    return m


def assert_equal(actual, expected, **tol):
    torch.testing.assert_close(actual, expected, **tol)


def param_check(m, dtype, device="cpu"):
    for item in itertools.chain(m.parameters(), m.buffers()):
        assert item.device == torch.device(device)
        if item.dtype.is_floating_point:
            assert item.dtype == dtype


# ------------------------------------------------------------ test_modules.TestModule


@impl
@every_module
@training_modes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward(impl, name, training, dtype):
    for mi in module_inputs(name, dtype, training=training):
        with freeze_rng_state():
            m = build(name, impl, mi, dtype, training)
            args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
            outputs = m(*args, **kwargs)
            assert_equal(outputs, mi.reference_fn(m, *args, **kwargs))
            (m.float() if dtype == torch.float32 else m.double())(*args, **kwargs)
            param_check(m, dtype)


@impl
@every_module
@training_modes
def test_factory_kwargs(impl, name, training):
    for mi in module_inputs(name, training=training):
        args, kwargs = mi.constructor_input.args, dict(mi.constructor_input.kwargs)
        m = cls_of(name, impl)(*args, **kwargs, device="cpu", dtype=torch.float64)
        param_check(m, torch.float64)


@impl
@every_module
def test_repr(impl, name):
    for mi in module_inputs(name):
        m = build(name, impl, mi, torch.float64, True)
        stock = build(name, "stock", mi, torch.float64, True)
        assert repr(m) == repr(stock) and str(m) == str(stock)


@impl
@every_module
@training_modes
def test_pickle(impl, name, training):
    for mi in module_inputs(name, training=training):
        with freeze_rng_state():
            m = build(name, impl, mi, torch.float64, training)
            args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
            output = m(*args, **kwargs)
            buffer = io.BytesIO()
            torch.save(m, buffer)
            buffer.seek(0)
            copy_ = torch.load(buffer, weights_only=False)
            assert type(copy_) is type(m)
            assert_equal(copy_(*args, **kwargs), output)


def _map_tensors(obj, fn):
    return tree_map_only(torch.Tensor, fn, obj)


@impl
@every_module
@training_modes
def test_non_contiguous_tensors(impl, name, training):
    def non_contiguous(t):
        out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
        return out.requires_grad_(t.requires_grad)

    for mi in module_inputs(name, requires_grad=True, training=training):
        m = build(name, impl, mi, torch.float64, training)
        args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
        inputs = tree_flatten((args, kwargs))[0]
        with freeze_rng_state():
            out = m(*args, **kwargs)
        flat_out = tree_flatten(out)[0]
        grad_out = [torch.randn_like(o) for o in flat_out]
        ref_grads = torch.autograd.grad(flat_out, inputs + list(m.parameters()), grad_out)
        nc_args, nc_kwargs = _map_tensors((args, kwargs), non_contiguous)
        for use_nc_input, use_nc_grad in itertools.product([False, True], repeat=2):
            a, k = (nc_args, nc_kwargs) if use_nc_input else (args, kwargs)
            with freeze_rng_state():
                out2 = m(*a, **k)
            flat2 = tree_flatten(out2)[0]
            grads = torch.autograd.grad(flat2, tree_flatten((a, k))[0] + list(m.parameters()),
                                        [non_contiguous(g) for g in grad_out] if use_nc_grad else grad_out)
            assert_equal(out2, out)
            assert_equal(list(grads), list(ref_grads), atol=1e-4, rtol=0)


def _spread(samples, count):
    """`count` samples spread over the list (module_db enumerates every flag
    combination; upstream checks all of them, which takes minutes here)."""
    step = max(1, len(samples) // count)
    return samples[::step][:count]


def _gradients(name, impl, training, check, count, partials=True):
    """test_modules' _test_gradients_helper on `count` of the samples: the
    total derivative; with `partials`, on the first sample also the input's
    alone and each parameter's alone (the kernels skip gradients nobody asked for)."""
    for k, mi in enumerate(_spread(module_inputs(name, requires_grad=True, training=training), count)):
        m = build(name, impl, mi, torch.float64, training)
        params = tuple(m.parameters())
        args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
        flat, spec = tree_flatten(args + params)

        def fn(*flat_inputs):
            rebuilt = tree_unflatten(list(flat_inputs), spec)
            with freeze_rng_state():
                return tree_flatten(m(*rebuilt[: len(args)], **kwargs))[0]

        assert check(fn, flat)
        if k > 0 or not partials:
            continue
        for p in params:
            p.requires_grad_(False)
        assert check(fn, tree_flatten(args + params)[0])  # the input's alone
        for p in params:
            p.requires_grad_(True)
            assert check(fn, tree_flatten(args + params)[0])
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)


@impl
@every_module
@training_modes
def test_grad(impl, name, training):
    _gradients(name, impl, training, torch.autograd.gradcheck, count=3)


@impl
@every_module
def test_gradgrad(impl, name):
    _gradients(name, impl, True, torch.autograd.gradgradcheck, count=1, partials=False)


@impl
@every_module
@training_modes
def test_memory_format(impl, name, training):
    """Recurrent inputs are 1- to 3-D: only the contiguous formats apply;
    outputs and input gradients must come back contiguous and equal."""
    for mi in module_inputs(name, requires_grad=True, training=training):
        with freeze_rng_state():
            m = build(name, impl, mi, torch.float64, training)
            args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
            desired = m(*args, **kwargs)
            diff_in = [t for t in tree_flatten((args, kwargs, tuple(m.parameters())))[0] if t.requires_grad]
            grad_out = [torch.rand_like(t) for t in tree_flatten(desired)[0]]
            ref = torch.autograd.grad(tree_flatten(desired)[0], diff_in, grad_out)
            for module_format in (torch.preserve_format, torch.contiguous_format):
                m.to(memory_format=module_format)
                outputs = m(*args, **kwargs)
                assert_equal(outputs, desired)
                assert all(o.is_contiguous() for o in tree_flatten(outputs)[0])
                grads = torch.autograd.grad(tree_flatten(outputs)[0], diff_in, grad_out)
                assert_equal(list(grads), list(ref))
                assert all(g.is_contiguous() for g in grads)


@impl
@every_module
def test_if_train_and_eval_modes_differ(impl, name):
    for mi in module_inputs(name):
        m = build(name, impl, mi, torch.float64, True)
        del m.training  # a forward that reads `training` must be one whose ModuleInfo says so
        try:
            m(*mi.forward_input.args, **mi.forward_input.kwargs)
        except AttributeError as exc:
            assert "'training'" in str(exc) and INFOS[name].train_and_eval_differ


@impl
@every_module
def test_device_ctx_init(impl, name):
    info = INFOS[name]
    with torch.device("meta"):
        meta_inputs = info.module_inputs_func(info, device=None, dtype=torch.float64, requires_grad=False,
                                              training=True)
    for mi, mi_meta in zip(module_inputs(name), meta_inputs):
        cpu = cls_of(name, impl)(*mi.constructor_input.args, **mi.constructor_input.kwargs)
        with torch.device("meta"):
            meta = cls_of(name, impl)(*mi_meta.constructor_input.args, **mi_meta.constructor_input.kwargs)
        for p_meta, p_cpu in zip(meta.parameters(), cpu.parameters()):
            assert p_meta.is_meta and p_meta.shape == p_cpu.shape and p_meta.dtype == p_cpu.dtype


@impl
@every_module
def test_errors(impl, name):
    info = INFOS[name]
    for error in info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                               training=True):
        mi = error.module_error_input
        args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
        if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error.error_type, match=error.error_regex):
                cls_of(name, impl)(*args, **kwargs)
        else:
            m = cls_of(name, impl)(*args, **kwargs)
            with pytest.raises(error.error_type, match=error.error_regex):
                m(*mi.forward_input.args, **mi.forward_input.kwargs)


# ------------------------------------------------------------------ test_nn.py


def _bad_shape_inputs(mode, shape_in, shape_h, correct_h, cell_shape=None):
    x, h = torch.randn(shape_in), torch.randn(shape_h)
    if mode != "LSTM":
        return [(x, h)]
    if cell_shape is not None:
        return [(x, (h, torch.randn(cell_shape)))]
    if shape_h == correct_h:
        return [(x, (h, h))]
    good = torch.randn(correct_h)
    return [(x, (h, good)), (x, (good, h))]


def _update(shape, dim, size):
    shape = list(shape)
    shape[dim] = size
    return tuple(shape)


@impl
@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_args_check(impl, mode):
    x_shape, h_shape, bad = (6, 4, 3), (2, 4, 5), 7
    cases = [(_update(x_shape, 1, bad), h_shape), (x_shape, _update(h_shape, 1, bad)),
             (_update(x_shape, 2, bad), h_shape), (x_shape, _update(h_shape, 2, bad)),
             (x_shape, _update(h_shape, 0, bad))]
    for shape_in, shape_h in cases:
        for x, hidden in _bad_shape_inputs(mode, shape_in, shape_h, h_shape):
            model = nn_class(impl, getattr(nn, mode))(3, 5, 2)
            with pytest.raises(RuntimeError):
                model(x, hidden)


@impl
def test_projections_lstm_args_check(impl):
    x_shape, h_shape, c_shape, bad = (6, 4, 3), (2, 4, 2), (2, 4, 5), 7
    cases = [(_update(x_shape, 1, bad), h_shape, c_shape),
             (x_shape, _update(h_shape, 1, bad), _update(c_shape, 1, bad)),
             (_update(x_shape, 2, bad), h_shape, c_shape),
             (x_shape, _update(h_shape, 2, bad), _update(c_shape, 2, bad)),
             (x_shape, _update(h_shape, 0, bad), _update(c_shape, 0, bad)),
             (x_shape, _update(h_shape, 0, 5), c_shape),
             (x_shape, _update(h_shape, 0, bad), c_shape),
             (x_shape, h_shape, _update(c_shape, 0, bad))]
    for shape_in, shape_h, shape_c in cases:
        model = nn_class(impl, nn.LSTM)(3, 5, 2, proj_size=2)
        with pytest.raises(RuntimeError):
            model(torch.randn(shape_in), (torch.randn(shape_h), torch.randn(shape_c)))


@impl
@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_initial_hidden_state(impl, mode):
    rnn = nn_class(impl, getattr(nn, mode))(30, 20, 2)
    x = torch.randn(10, 32, 30)
    hidden = torch.zeros(2, 32, 20)
    out1, hidden1 = rnn(x, (hidden, hidden) if mode == "LSTM" else hidden)
    out2, hidden2 = rnn(x)
    assert_equal(out1, out2)
    assert_equal(hidden1, hidden2)


@impl
@pytest.mark.parametrize("bidirectional", [False, True])
def test_projections_lstm_initial_hidden_state(impl, bidirectional):
    dirs = 2 if bidirectional else 1
    rnn = nn_class(impl, nn.LSTM)(30, 20, 2, bidirectional=bidirectional, proj_size=10)
    x = torch.randn(10, 32, 30)
    out1, hidden1 = rnn(x, (torch.zeros(2 * dirs, 32, 10), torch.zeros(2 * dirs, 32, 20)))
    out2, hidden2 = rnn(x)
    assert_equal(out1, out2)
    assert_equal(hidden1, hidden2)


@impl
def test_projections_errors_on_gru_and_rnn(impl):
    for mode in ("RNN", "GRU"):
        with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
            nn_class(impl, getattr(nn, mode))(30, 20, 2, proj_size=10)


@impl
@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_input_size_zero(impl, mode):
    rnn = nn_class(impl, getattr(nn, mode))(input_size=3, hidden_size=4)
    outs = rnn(torch.zeros((5, 0, 3)))
    assert outs[0].shape == torch.Size([5, 0, 4])
    outs[0].sum().backward()  # no hard error


@impl
@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_error_rnn_seq_len_zero(impl, mode, bidirectional):
    rnn = nn_class(impl, getattr(nn, mode))(5, 6, bidirectional=bidirectional)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        rnn(torch.ones(0, 10, 5))


@impl
def test_forward_exception_messages(impl):
    """test_cudnn_forward_exception, which runs on the CPU too."""
    rnns = [(nn.LSTM, {}, (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
            (nn.LSTM, {"proj_size": 10}, (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
            (nn.GRU, {}, torch.zeros(1, 2, 19)), (nn.RNN, {}, torch.zeros(1, 2, 19))]
    for torch_cls, kwargs, hidden in rnns:
        rnn = nn_class(impl, torch_cls)(10, 20, batch_first=True, **kwargs)
        with pytest.raises(RuntimeError, match="Expected hidden.*size.*got"):
            rnn(torch.randn(2, 3, 10), hidden)
        with pytest.raises(RuntimeError, match=re.escape("input.size(-1) must be equal to input_size")):
            rnn(torch.randn(2, 3, 3))


@impl
def test_rnn_nonlinearity(impl):
    cls = nn_class(impl, nn.RNN)
    assert cls(1, 10).nonlinearity == "tanh"
    assert cls(1, 10, nonlinearity="relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        cls(1, 10, nonlinearity="garbage")
    rnn = cls(2, 3, 1, "relu")  # nonlinearity passed positionally
    assert (rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.nonlinearity) == (2, 3, 1, "relu")


@impl
@pytest.mark.parametrize("p", [0.0, 0.276, 1.0])
@pytest.mark.parametrize("train", [True, False])
def test_rnn_dropout(impl, p, train):
    """test_RNN_dropout's CPU half: dropout sits between the layers."""
    rnn = nn_class(impl, nn.RNN)(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu").double()
    rnn.train(train)
    with torch.no_grad():
        for w in rnn.parameters():
            w.fill_(1)
    output, hy = rnn(torch.ones(1, 1, 10, dtype=torch.double), torch.zeros(2, 1, 1000, dtype=torch.double))
    value = output[0, 0, 0]
    assert output.min() == output.max() and hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
    if p == 0 or not train:
        assert value == 10000
    elif p == 1:
        assert value == 0
    else:
        assert 8000 < value < 12000
        denorm = float(value * (1 - p)) % 10
        assert min(denorm, 10 - denorm) < 1e-2
    assert hy[0, 0, 0] == 10 and hy[1, 0, 0] == value


@impl
@pytest.mark.parametrize("torch_cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell], ids=lambda c: c.__name__)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_smoke(impl, torch_cls, bias):
    """test_RNN_cell / test_LSTM_cell: six steps, then backward."""
    cell = nn_class(impl, torch_cls)(10, 20, bias=bias)
    x, hx = torch.randn(3, 10), torch.randn(3, 20)
    state = (hx, torch.randn(3, 20)) if torch_cls is nn.LSTMCell else hx
    for _ in range(6):
        state = cell(x, state)
    (sum(state) if isinstance(state, tuple) else state).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cell.parameters())


@impl
def test_cell_forward_zero_hidden_size(impl):
    x, hx = torch.randn(3, 10), torch.randn(3, 0)
    for cell in (nn_class(impl, nn.RNNCell)(10, 0, nonlinearity="relu"),
                 nn_class(impl, nn.RNNCell)(10, 0, nonlinearity="tanh"), nn_class(impl, nn.GRUCell)(10, 0)):
        assert cell(x, hx).shape == torch.Size([3, 0])


@impl
@pytest.mark.parametrize("torch_cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell], ids=lambda c: c.__name__)
def test_cell_forward_bad_sizes(impl, torch_cls):
    """test_RNN_cell_forward_input_size / _hidden_size, test_LSTM_cell_forward_*."""
    cell = nn_class(impl, torch_cls)(10, 20)
    lstm = torch_cls is nn.LSTMCell
    for x, h in ((torch.randn(3, 11), torch.randn(3, 20)), (torch.randn(3, 10), torch.randn(3, 21))):
        with pytest.raises(Exception):
            cell(x, (h, h) if lstm else h)


@impl
def test_cell_no_broadcasting(impl):
    def check(torch_cls, x, hx, input_size, hidden_size):
        cell = nn_class(impl, torch_cls)(input_size, hidden_size)
        with pytest.raises(RuntimeError):
            cell(x, hx)

    for torch_cls in (nn.RNNCell, nn.GRUCell):
        check(torch_cls, torch.randn(3, 2), torch.randn(1, 4), 2, 4)  # batch 3 against hidden batch 1
        check(torch_cls, torch.randn(1, 2), torch.randn(3, 4), 2, 4)
        check(torch_cls, torch.randn(3, 2), torch.randn(3, 1), 2, 4)  # hidden size 1 against 4
    check(nn.LSTMCell, torch.randn(3, 2), (torch.randn(1, 4), torch.randn(3, 4)), 2, 4)
    check(nn.LSTMCell, torch.randn(3, 2), (torch.randn(3, 4), torch.randn(1, 4)), 2, 4)
    check(nn.LSTMCell, torch.randn(3, 2), (torch.randn(3, 4), torch.randn(3, 1)), 2, 4)


@impl
def test_lstmcell_backward_only_one_output_grad(impl):
    cell = nn_class(impl, nn.LSTMCell)(2, 3).double()
    x = torch.randn(1, 2, dtype=torch.double, requires_grad=True)
    for i in range(2):
        out = cell(x, (torch.randn(1, 3, dtype=torch.double), torch.randn(1, 3, dtype=torch.double)))[i]
        out.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        x.grad = None


@impl
@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_retain_variables(impl, mode):
    rnn = nn_class(impl, getattr(nn, mode))(10, 20, num_layers=2).double()
    x = torch.randn(5, 6, 10, dtype=torch.double, requires_grad=True)
    output = rnn(x)
    output[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        x.grad = None
        output[0].sum().backward(retain_graph=True)
        assert_equal([x.grad] + [p.grad for p in rnn.parameters()], grads)


@impl
@pytest.mark.parametrize("lens_as_tensor", [False, True])
def test_variable_sequence(impl, lens_as_tensor):
    """Each sequence alone, padded, must match the packed batch (TestNNDeviceType.test_variable_sequence)."""
    lstm = nn_class(impl, nn.LSTM)(3, 4, num_layers=2, bidirectional=True).double()
    lengths = [4, 3, 3, 1]
    x = torch.randn(max(lengths), len(lengths), 3, dtype=torch.double, requires_grad=True)
    padded_out, padded_grads, padded_h = [], [], []
    for i, length in enumerate(lengths):
        xi = x[:length, i:i + 1].detach().clone().requires_grad_()
        out, (h, _) = lstm(xi)
        out.sum().backward()
        padded_out.append(out)
        padded_grads.append((xi.grad, [p.grad.clone() for p in lstm.parameters()]))
        padded_h.append(h)
        lstm.zero_grad()
    packed = rnn_utils.pack_padded_sequence(x, torch.tensor(lengths) if lens_as_tensor else lengths)
    out, (h, _) = lstm(packed)
    unpacked, unpacked_lengths = rnn_utils.pad_packed_sequence(out)
    assert unpacked_lengths.tolist() == lengths
    unpacked.sum().backward()
    for i, length in enumerate(lengths):
        assert_equal(unpacked[:length, i:i + 1], padded_out[i])
        assert_equal(h[:, i:i + 1], padded_h[i])
        assert_equal(x.grad[:length, i:i + 1], padded_grads[i][0])
    assert_equal([p.grad for p in lstm.parameters()],
                 [sum(g[1][k] for g in padded_grads) for k in range(len(padded_grads[0][1]))])


@impl
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("bias", [True, False])
def test_grad_and_gradgrad(impl, mode, bias):
    """test_LSTM_grad_and_gradgrad / test_GRU_grad_and_gradgrad."""
    mod = nn_class(impl, getattr(nn, mode))(4, 4, bias=bias).double()
    x = torch.rand(1, 3, 4, dtype=torch.double, requires_grad=True)

    def flat(inp):
        out = mod(inp)
        return tuple(t if isinstance(t, torch.Tensor) else tt for t in out for tt in t)

    assert torch.autograd.gradcheck(flat, x, check_batched_grad=False)
    assert torch.autograd.gradgradcheck(flat, x, check_batched_grad=False)


@impl
def test_lstm_differentiable_backward(impl):
    """test_LSTM_differentiable_backward_using_oneDNN: a gradient penalty (the
    derivative of the input gradient) gives torch.nn's numbers."""
    torch.manual_seed(0)
    stock = nn.LSTM(3, 3, 5, batch_first=True).double()
    ours = nn_class(impl, nn.LSTM)(3, 3, 5, batch_first=True).double()
    ours.load_state_dict(stock.state_dict())
    x = torch.rand(4, 6, 3, dtype=torch.double)
    results = []
    for net in (stock, ours):
        xi = x.clone().requires_grad_()
        out, _ = net(xi)
        d_out, = torch.autograd.grad(out, xi, torch.ones_like(out), create_graph=True)
        d_out.sum().backward()
        results.append((d_out.detach(), xi.grad, [p.grad for p in net.parameters()]))
    assert_equal(results[1], results[0])


# --------------------------------------------------------- test_nn/test_pruning.py


@impl
def test_rnn_pruning(impl):
    lstm = nn_class(impl, nn.LSTM)(32, 32)
    prune.l1_unstructured(lstm, "weight_ih_l0", 0.5)
    assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == 3
    out = lstm(torch.randn(3, 2, 32))[0]
    out.sum().backward()
    assert lstm.weight_ih_l0_orig.grad is not None
    prune.remove(lstm, "weight_ih_l0")
    assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == 4
    assert "weight_ih_l0" in lstm._parameters and "weight_ih_l0_orig" not in lstm._parameters
    assert "weight_ih_l0" in dict(lstm.named_parameters())


@impl
@pytest.mark.parametrize("proj_size", [0, 3])
def test_rnn_weight_norm(impl, proj_size):
    def check(lstm, name, count):
        x = torch.randn(3, 2, 5)
        expected = lstm(x)[0]
        lstm = torch.nn.utils.weight_norm(lstm, name=name)
        assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == count - 1
        assert_equal(lstm(x)[0], expected)
        lstm = torch.nn.utils.remove_weight_norm(lstm, name=name)
        assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == count
        assert name in lstm._parameters and f"{name}_g" not in lstm._parameters

    name = "weight_hr_l0" if proj_size else "weight_hh_l0"
    check(nn_class(impl, nn.LSTM)(5, 4, proj_size=proj_size), name, 5 if proj_size else 4)


# ------------------------------------------------------ test_expanded_weights.py


class _FirstOutput(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *inputs):
        return self.m(*inputs)[0]


def _batch_hidden(h):
    return h.unsqueeze(1).repeat([1, 2] + [1] * (h.dim() - 1))


def _per_sample_cases():
    for name in LAYERS:
        for dtype in (torch.float32, torch.float64):
            marks = []
            if name == "LSTM" and dtype == torch.float32:  # torch.nn's own fails the same way
                marks = [pytest.mark.xfail(strict=True, raises=RuntimeError,
                                           reason="torch.nn.LSTM's float32 CPU path (oneDNN) takes no ExpandedWeights")]
            yield pytest.param(name, dtype, marks=marks, id=f"{name}-{str(dtype)[6:]}")


@impl
@pytest.mark.parametrize("name, dtype", _per_sample_cases())
def test_expanded_weights_module(impl, name, dtype):
    """Per-sample gradients (call_for_per_sample_grads) against a loop over samples."""
    tol = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {}
    for mi in module_inputs(name, dtype, requires_grad=True, with_packed_sequence=True):
        m = _FirstOutput(build(name, impl, mi, dtype, True))
        batch_first = m.m.batch_first
        args = list(mi.forward_input.args)
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() == 2:  # unbatched samples: a batch of two
            x = x.detach()
            x = x.unsqueeze(0 if batch_first else 1).repeat([2, 1, 1] if batch_first else [1, 2, 1])
            if len(args) > 1:
                args[1] = _batch_hidden(args[1]) if isinstance(args[1], torch.Tensor) else tuple(
                    _batch_hidden(h) for h in args[1])
        packed = isinstance(x, rnn_utils.PackedSequence)
        batch = int(max(x.batch_sizes)) if packed else x.shape[0 if batch_first else 1]
        with freeze_rng_state():
            result = call_for_per_sample_grads(m, batch_size=batch, loss_reduction="sum")(x, *args[1:])
            (result.data if packed else result).sum().backward()
        actual = [p.grad_sample for p in m.parameters()]
        for p in m.parameters():
            del p.grad_sample
        expected = []
        if packed:
            padded, sizes = rnn_utils.pad_packed_sequence(x, batch_first=True)
            samples = [padded[i, : sizes[i]].unsqueeze(0 if batch_first else 1) for i in range(len(sizes))]
            hiddens = [()] * len(sizes)
        else:
            samples = [x.narrow(0 if batch_first else 1, i, 1).contiguous() for i in range(batch)]
            hiddens = [tuple(tree_map_only(torch.Tensor, lambda t: t.narrow(1, i, 1).contiguous(), args[1:]))
                       for i in range(batch)]
        for sample, hidden in zip(samples, hiddens):
            res = m(sample.detach(), *hidden).sum()
            expected.append(torch.autograd.grad(res, list(m.parameters())))
        for a, e in zip(actual, [torch.stack(g) for g in zip(*expected)]):
            assert_equal(a, e, **tol)
