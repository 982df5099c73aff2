"""Beyond torch.nn, as modules: rk.LayerNormLSTM / LayerNormGRU, zoneout,
cell_zoneout, weight_drop and return_cell_states, with everything the plain
layers have (layers, directions, batch_first, lengths, PackedSequence, h0,
state_dict, torch.compile), on every CPU backend against the reference."""
import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels as rk
from rnnkernels import backends
from rnnkernels.check import TOLERANCE, relative_error

# tests/test_fuzz.py's conditioning rule: where torch's own float32 misses the
# tolerance, a backend may err this many times torch's error.
CONDITIONING = 16

CPU_BACKENDS = [b for b in backends.available("cpu", op="rnn_ext") if b != "reference"]

LAYERS = {
    "ln_lstm": lambda **kw: rk.LayerNormLSTM(5, 6, **kw),
    "ln_gru": lambda **kw: rk.LayerNormGRU(5, 6, **kw),
    "zoneout_lstm": lambda **kw: rk.LSTM(5, 6, zoneout=0.3, cell_zoneout=0.2, **kw),
    "zoneout_gru": lambda **kw: rk.GRU(5, 6, zoneout=0.4, **kw),
    "zoneout_rnn": lambda **kw: rk.RNN(5, 6, zoneout=0.25, nonlinearity="relu", **kw),
    "all_lstm": lambda **kw: rk.LayerNormLSTM(5, 6, zoneout=0.2, cell_zoneout=0.3, weight_drop=0.4, **kw),
}


def perturbed(module):
    """Gains and biases away from 1 and 0, so that a wrong one shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("layer_norm"):
                p.add_(torch.randn_like(p) * 0.3)
    return module


def run(module, x, lengths, backend, seed, **kwargs):
    torch.manual_seed(seed)  # the same masks on every backend
    result = module(x, lengths=lengths, backend=backend, **kwargs)
    outputs = [result[0]] + list(result[1] if isinstance(result[1], tuple) else (result[1],)) + list(result[2:])
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, [x] + list(module.parameters()))
    return outputs, list(grads)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("layout", [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True)],
                         ids=["1-layer", "2-layer-bi", "batch-first"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_the_reference_in_float64(backend, kind, layout, training, seed):
    torch.manual_seed(seed)
    module = perturbed(LAYERS[kind](**layout).double()).train(training)
    shape = (3, 7, 5) if layout.get("batch_first") else (7, 3, 5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([7, 2, 5])
    expected, expected_grads = run(module, x, lengths, "reference", seed)
    actual, actual_grads = run(module, x, lengths, backend, seed)
    for a, e in zip(actual + actual_grads, expected + expected_grads):
        assert relative_error(a, e) < TOLERANCE[torch.float64]


def float32_yardstick(module, x, lengths, seed, expected, draws=2):
    """How far torch's float32 ops land from float64 on this draw, for each of
    `expected` (outputs and states, then gradients): the largest error of the
    reference backend run in float32 on the inputs as given and on `draws`
    copies whose inputs and parameters moved by one float32 rounding
    (relative 2^-24, fresh random signs). One float32 run's error is itself a
    random draw and now and then lucky; the largest of a few tells how well
    float32 can do on these inputs at all."""
    errors = [0.0] * len(expected)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    noise = torch.Generator().manual_seed(seed)
    for draw in range(draws + 1):
        xd = x.detach().clone()
        if draw:
            with torch.no_grad():
                for t in [xd] + list(module.parameters()):
                    t.mul_(1 + (torch.randint(0, 2, t.shape, generator=noise) * 2 - 1) * 2.0**-24)
        outputs, grads = run(module, xd.requires_grad_(), lengths, "reference", seed)
        errors = [max(e, relative_error(g, want)) for e, g, want in zip(errors, outputs + grads, expected)]
        module.load_state_dict(state)
    return errors


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["ln_lstm", "ln_gru", "all_lstm"])
@pytest.mark.parametrize("layout", [dict(), dict(num_layers=2, bidirectional=True)], ids=["1-layer", "2-layer-bi"])
def test_float32_within_1e5_of_float64(backend, kind, layout, seed):
    """Outputs, states and gradients within 1e-5 of float64, or where torch's
    own float32 ops miss 1e-5 on the draw, within CONDITIONING times
    float32_yardstick (tests/test_fuzz.py's rule). LayerNorm keeps gates near
    saturation and its gains' gradients sum T*B terms that cancel: torch's
    float32 misses 1e-5 on some draws (one layer, gradients: about 1 draw in
    40, at 1.1-1.6e-5; two bidirectional layers, outputs: 4 of 300 draws at
    1.4-3.9e-5), and there the kernel's error was up to 16x torch's, with its
    activations' few-ulp rounding on an ill-conditioned sequence."""
    torch.manual_seed(seed)
    module = perturbed(LAYERS[kind](**layout))
    x = torch.randn(6, 4, 5, requires_grad=True)
    lengths = torch.tensor([6, 3, 1, 5])
    actual, actual_grads = run(module, x, lengths, backend, seed)
    module64 = copy.deepcopy(module).double()
    expected, expected_grads = run(module64, x.detach().double().requires_grad_(), lengths, "reference", seed)
    yardstick = float32_yardstick(module, x, lengths, seed, expected + expected_grads)
    for a, e, torch_error in zip(actual + actual_grads, expected + expected_grads, yardstick):
        assert relative_error(a, e) < max(TOLERANCE[torch.float32], CONDITIONING * torch_error)


def test_layer_norm_parameters_and_checkpoints():
    module = rk.LayerNormLSTM(4, 3, num_layers=2, bidirectional=True)
    names = [n for n, _ in module.named_parameters()]
    torch_names = [n for n, _ in torch.nn.LSTM(4, 3, num_layers=2, bidirectional=True).named_parameters()]
    assert names[:len(torch_names)] == torch_names  # torch.nn's parameters first, named as torch names them
    for suffix in ("l0", "l0_reverse", "l1", "l1_reverse"):
        assert getattr(module, f"layer_norm_ih_weight_{suffix}").shape == (12,)
        assert torch.equal(getattr(module, f"layer_norm_cell_weight_{suffix}"), torch.ones(3))
        assert torch.equal(getattr(module, f"layer_norm_cell_bias_{suffix}"), torch.zeros(3))
    gru = rk.LayerNormGRU(4, 3)
    assert sorted(n for n, _ in gru.named_parameters() if n.startswith("layer_norm")) == [
        "layer_norm_hh_weight_l0", "layer_norm_ih_weight_l0"]
    perturbed(module)
    copy = rk.LayerNormLSTM(4, 3, num_layers=2, bidirectional=True)
    copy.load_state_dict(module.state_dict())
    x = torch.randn(5, 2, 4)
    assert torch.equal(copy(x)[0], module(x)[0])
    module.reset_parameters()
    assert torch.equal(module.layer_norm_hh_weight_l1, torch.ones(12))


def test_packed_sequence_and_unbatched_input():
    torch.manual_seed(0)
    module = perturbed(rk.LayerNormLSTM(5, 6, bidirectional=True)).double()
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    lengths = torch.tensor([4, 7, 2])
    padded_out, _, padded_cells = module(x, lengths=lengths, return_cell_states=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed_out, _, packed_cells = module(packed, return_cell_states=True)
    assert torch.allclose(pad_packed_sequence(packed_out, total_length=7)[0], padded_out, atol=1e-12)
    assert torch.allclose(pad_packed_sequence(packed_cells, total_length=7)[0], padded_cells, atol=1e-12)
    out, (h, c), cells = module(x[:, 1], return_cell_states=True)
    assert out.shape == cells.shape == (7, 12) and h.shape == (2, 6)
    assert torch.allclose(out, module(x[:, 1:2])[0][:, 0], atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_cell_states_equal_a_step_by_step_cell_loop(bidirectional):
    torch.manual_seed(0)
    module = rk.LSTM(5, 6, bidirectional=bidirectional).double()
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5])
    out, (h_n, c_n), cells = module(x, lengths=lengths, return_cell_states=True)
    directions = []
    for d, suffix in enumerate(["", "_reverse"][: 1 + bidirectional]):
        cell = torch.nn.LSTMCell(5, 6).double()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(module, f"{name}_l0{suffix}"))
        expected = torch.zeros(7, 3, 6, dtype=torch.float64)
        for b in range(3):
            h = c = torch.zeros(1, 6, dtype=torch.float64)
            steps = range(lengths[b] - 1, -1, -1) if d else range(lengths[b])
            for t in steps:
                h, c = cell(x[t, b:b + 1], (h, c))
                expected[t, b] = c[0]
            assert torch.allclose(c_n[d, b], c[0], atol=1e-12)
        directions.append(expected)
    assert torch.allclose(cells, torch.cat(directions, -1), atol=1e-12)
    assert (cells[5:, 1] == 0).all() and (cells[3:, 1] == 0).all()  # zero past the end


def test_evaluation_zoneout_is_the_expectation_formula():
    """In evaluation h = p h_prev + (1 - p) h_fresh, checked by hand with a GRUCell."""
    torch.manual_seed(0)
    p = 0.35
    module = rk.GRU(5, 6, zoneout=p).double().eval()
    cell = torch.nn.GRUCell(5, 6).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(module, f"{name}_l0"))
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    h = torch.zeros(2, 6, dtype=torch.float64)
    expected = []
    for t in range(6):
        h = p * h + (1 - p) * cell(x[t], h)
        expected.append(h)
    for backend in CPU_BACKENDS + ["reference"]:
        assert torch.allclose(module(x, backend=backend)[0], torch.stack(expected), atol=1e-12)


def test_training_masks_come_from_the_generator():
    module = rk.LSTM(5, 6, zoneout=0.5, cell_zoneout=0.5, weight_drop=0.5)
    x = torch.randn(8, 4, 5)
    first = [module(x, backend=b)[0] for b in CPU_BACKENDS + ["reference"] for _ in [torch.manual_seed(3)]]
    for out in first[1:]:
        assert torch.allclose(out, first[0], atol=1e-6)
    torch.manual_seed(4)
    assert not torch.allclose(module(x)[0], first[0])  # another seed, other masks
    module.eval()
    assert torch.equal(module(x)[0], module(x)[0])  # no draws in evaluation


def test_weight_drop_masks_w_hh_and_leaves_the_parameter_alone():
    torch.manual_seed(0)
    p = 0.4
    module = rk.LSTM(5, 6, weight_drop=p).double()
    before = module.weight_hh_l0.detach().clone()
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    generator_state = torch.get_rng_state()
    out = module(x)[0]
    assert torch.equal(module.weight_hh_l0, before)
    torch.set_rng_state(generator_state)
    mask = (torch.rand(before.shape) < 1 - p).double() / (1 - p)
    plain = torch.nn.LSTM(5, 6).double()
    plain.load_state_dict(module.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(mask)
    assert torch.allclose(out, plain(x)[0], atol=1e-12)
    module.eval()
    plain.load_state_dict(module.state_dict())
    assert torch.allclose(module(x)[0], plain(x)[0], atol=1e-12)  # no weight drop in evaluation


def test_compile_fullgraph():
    torch.manual_seed(0)
    module = perturbed(rk.LayerNormLSTM(5, 6, num_layers=2, zoneout=0.2))
    x = torch.randn(7, 3, 5)
    lengths = torch.tensor([7, 2, 5])
    module.eval()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    expected = module(x, lengths=lengths)[0]
    assert torch.allclose(compiled(x, lengths=lengths)[0], expected, atol=1e-6)
    module.train()
    x.requires_grad_()
    torch.manual_seed(5)
    out = compiled(x, lengths=lengths)[0]
    out.sum().backward()
    torch.manual_seed(5)
    eager = module(x, lengths=lengths)[0]
    assert torch.allclose(out, eager, atol=1e-6)


BAD = [
    (lambda: rk.LSTM(3, 4, zoneout=1.0), ValueError, r"zoneout must be a probability in \[0, 1\), got 1.0"),
    (lambda: rk.GRU(3, 4, weight_drop=-0.1), ValueError, "weight_drop must be a probability"),
    (lambda: rk.GRU(3, 4, cell_zoneout=0.1), ValueError, "cell_zoneout is for LSTM layers"),
    (lambda: rk.LSTM(3, 4, proj_size=2, zoneout=0.1), ValueError, "do not combine with proj_size"),
    (lambda: rk.LayerNormLSTM(3, 4, proj_size=2), TypeError, "LayerNormLSTM has no proj_size"),
    (lambda: rk.GRU(3, 4)(torch.randn(2, 1, 3), return_cell_states=True), ValueError,
     "return_cell_states is for LSTM layers"),
    (lambda: rk.unconvert(rk.LSTM(3, 4, zoneout=0.1)), ValueError, "has options torch.nn's LSTM lacks"),
]


@pytest.mark.parametrize("make,error,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_options_are_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_layer_norm_on_a_backend_without_it_is_a_clear_error():
    unsupported = [b for b in backends.names() if b not in backends.available("cpu", op="rnn_ext")]
    module = rk.LayerNormGRU(3, 4)
    for name in unsupported:
        with pytest.raises(rk.BackendUnavailableError):
            module(torch.randn(2, 1, 3), backend=name)
