"""torch.nn.LSTM/GRU/RNN against rnnkernels backends on the shared suite.

Each row times torch.nn and every requested backend side by side in one run,
forward and forward+backward, and reports ratios (torch time / ours) and the
achieved GFLOP/s of the GEMM work (the FLOP count in `rnn_flops`), and on
the CPU the fraction of the machine's measured FMA peak it is.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels as rk

from .suite import RNNConfig, rnn_configs
from .timing import time_side_by_side

_TORCH = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}), "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
          "rnn_relu": (nn.RNN, {"nonlinearity": "relu"})}
_RK = {nn.LSTM: rk.LSTM, nn.GRU: rk.GRU, nn.RNN: rk.RNN}
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def rnn_flops(config: RNNConfig, backward: bool) -> float:
    """GEMM FLOPs: per layer-direction 2*T*B*G*H*(I + H); backward costs twice
    the forward (input and weight gradients)."""
    shape, directions = config.shape, 2 if config.bidirectional else 1
    total = 0.0
    for layer in range(config.num_layers):
        in_size = shape.input_size if layer == 0 else shape.hidden_size * directions
        total += directions * 2.0 * shape.steps * shape.batch * _GATES[config.cell] * shape.hidden_size * (
            in_size + shape.hidden_size)
    return total * (3 if backward else 1)


def _lengths(config: RNNConfig, generator: torch.Generator) -> torch.Tensor:
    """Uneven lengths between T/4 and T, one sequence of full length."""
    shape = config.shape
    lengths = torch.randint(max(1, shape.steps // 4), shape.steps + 1, (shape.batch,), generator=generator)
    lengths[0] = shape.steps
    return lengths


def bench_config(config: RNNConfig, backends: Sequence[str], device, dtype, repeats: int,
                 peak_gflops: Optional[float] = None) -> List[Dict]:
    torch_cls, extra = _TORCH[config.cell]
    shape = config.shape
    kwargs = dict(input_size=shape.input_size, hidden_size=shape.hidden_size, num_layers=config.num_layers,
                  bidirectional=config.bidirectional, **extra)
    reference = torch_cls(**kwargs).to(device=device, dtype=dtype)
    models = {}
    for name in backends:
        models[name] = _RK[torch_cls](**kwargs, backend=name).to(device=device, dtype=dtype)
        models[name].load_state_dict(reference.state_dict())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=generator).to(device=device, dtype=dtype)
    lengths = _lengths(config, generator) if config.varlen else None

    def torch_call():
        if lengths is None:
            return reference(x)[0]
        return reference(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data

    def ours_call(model):
        return lambda: model(x, lengths=lengths)[0]

    rows = []
    for backward in (False, True):  # forward is timed as inference (no_grad)
        x.requires_grad_(backward)

        def timed(fn):
            if not backward:
                return fn
            return lambda: fn().sum().backward()

        candidates = {"torch": timed(torch_call)}
        candidates.update({name: timed(ours_call(model)) for name, model in models.items()})
        with torch.set_grad_enabled(backward):
            times = time_side_by_side(candidates, device, repeats=repeats)
        flops = rnn_flops(config, backward)
        row = {
            "cell": config.cell,
            "shape": str(shape),
            "layers": f"{config.num_layers}{'x2' if config.bidirectional else ''}",
            "input": "padded+lengths vs packed" if config.varlen else "dense",
            "pass": "fwd+bwd" if backward else "fwd",
            "torch_ms": times["torch"],
        }
        for name in backends:
            row[f"{name}_ms"] = times[name]
            row[f"{name}_speedup"] = times["torch"] / times[name]
            row[f"{name}_gflops"] = flops / times[name] / 1e6
            if peak_gflops:
                row[f"{name}_of_peak"] = f"{100 * flops / times[name] / 1e6 / peak_gflops:.0f}%"
        row["torch_gflops"] = flops / times["torch"] / 1e6
        rows.append(row)
    return rows


def run(device="cpu", dtype=torch.float32, backends: Optional[Sequence[str]] = None, full: bool = False,
        repeats: int = 5, progress=None, peak_gflops: Optional[float] = None) -> List[Dict]:
    """peak_gflops: the machine's measured FMA peak (CPU), for the `_of_peak` columns."""
    device = torch.device(device)
    if backends is None:  # the fastest built backends; the reference only when asked for
        backends = [b for b in rk.backends.available(device, dtype=dtype) if b != "reference"] or ["reference"]
    configs = rnn_configs(full=full, gpu=device.type == "cuda")
    rows = []
    for config in (progress(configs) if progress else configs):
        rows.extend(bench_config(config, backends, device, dtype, repeats,
                                 peak_gflops if device.type == "cpu" else None))
    return rows
