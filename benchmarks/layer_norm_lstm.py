"""LayerNorm LSTM: rnnkernels' fused layer against what users write today.

    python benchmarks/layer_norm_lstm.py [--repeats 7] [--no-compile] [--keep-freed-memory] [--out FILE.md]

The baseline is a Python loop over a LayerNorm LSTM cell built from nn.Linear
and nn.LayerNorm (as PyTorch's benchmarks/fastrnns/custom_lstms.py does),
with exactly rk.LayerNormLSTM's semantics (checked here before timing), run
eagerly and with the cell under torch.compile. Forward+backward times,
interleaved, median of repeats; ratios > 1 mean rk is faster. Also rk's own
plain LSTM at the same shape: the price of the LayerNorms.
"""
import argparse
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

import rnnkernels as rk
from rnnkernels.benchmarks.machine import describe, one_line
from rnnkernels.benchmarks.timing import add_keep_freed_memory_flag, apply_keep_freed_memory_flag

SHAPES = [(35, 20, 200, 200), (100, 8, 128, 256), (50, 64, 256, 512)]  # (T, B, I, H)


class LayerNormLSTMCell(nn.Module):
    """gates = LN(W_ih x) + LN(W_hh h) + b_ih + b_hh; c' = sig(f) c + sig(i) tanh(g); h' = sig(o) tanh(LN(c'))."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input = nn.Linear(input_size, 4 * hidden_size)
        self.hidden = nn.Linear(hidden_size, 4 * hidden_size)
        self.norm_input = nn.LayerNorm(4 * hidden_size, bias=False)
        self.norm_hidden = nn.LayerNorm(4 * hidden_size, bias=False)
        self.norm_cell = nn.LayerNorm(hidden_size)

    def forward(self, x, h, c):
        gates = (self.norm_input(x @ self.input.weight.t()) + self.norm_hidden(h @ self.hidden.weight.t())
                 + self.input.bias + self.hidden.bias)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.norm_cell(c))
        return h, c


def loop(cell, x):
    h = x.new_zeros(x.shape[1], cell.hidden.in_features)
    c = torch.zeros_like(h)
    outputs = []
    for t in range(x.shape[0]):
        h, c = cell(x[t], h, c)
        outputs.append(h)
    return torch.stack(outputs)


def copy_into_rk(cell, layer):
    with torch.no_grad():
        layer.weight_ih_l0.copy_(cell.input.weight)
        layer.weight_hh_l0.copy_(cell.hidden.weight)
        layer.bias_ih_l0.copy_(cell.input.bias)
        layer.bias_hh_l0.copy_(cell.hidden.bias)
        layer.layer_norm_ih_weight_l0.copy_(cell.norm_input.weight)
        layer.layer_norm_hh_weight_l0.copy_(cell.norm_hidden.weight)
        layer.layer_norm_cell_weight_l0.copy_(cell.norm_cell.weight)
        layer.layer_norm_cell_bias_l0.copy_(cell.norm_cell.bias)


def time_fwd_bwd(candidates, x, repeats):
    def run(fn):
        xg = x.detach().requires_grad_()
        fn(xg).sum().backward()

    for fn in candidates.values():
        run(fn)
        run(fn)
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            run(fn)
            samples[name].append(time.perf_counter() - start)
            if x.is_cuda:
                torch.cuda.synchronize()
    return {name: statistics.median(v) * 1e3 for name, v in samples.items()}


def bench_shape(shape, backends, device, dtype=torch.float32, repeats=5, compile_baseline=True) -> Dict:
    """One row: forward+backward ms of the eager loop, the compiled loop, each
    backend's rk.LayerNormLSTM and rk.LSTM (plain). Raises if rk.LayerNormLSTM
    and the loop disagree (checked in float64 on the CPU)."""
    T, B, I, H = shape
    torch.manual_seed(0)
    cell = LayerNormLSTMCell(I, H)
    with torch.no_grad():  # gains and biases away from their initial 1 and 0, so they matter
        for norm in (cell.norm_input, cell.norm_hidden, cell.norm_cell):
            norm.weight.uniform_(0.5, 1.5)
        cell.norm_cell.bias.uniform_(-0.5, 0.5)
    ours = rk.LayerNormLSTM(I, H)
    copy_into_rk(cell, ours)
    x = torch.randn(T, B, I)
    # Same semantics, checked in float64 (in float32 the two differ by their roundings over T steps).
    expected = loop(cell.double(), x.double())
    got = ours.double()(x.double(), backend="reference" if "cpu" not in backends else "cpu")[0]
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    if error > 1e-10:
        raise RuntimeError(f"rk.LayerNormLSTM differs from the baseline by {error:.2e} at {shape}")
    cell.to(device, dtype)
    ours.to(device, dtype)
    plain = rk.LSTM(I, H).to(device, dtype)
    x = x.to(device, dtype)
    candidates = {"eager": lambda x: loop(cell, x)}
    if compile_baseline:
        compiled = torch.compile(cell)
        candidates["compiled"] = lambda x: loop(compiled, x)
    for backend in backends:
        candidates[backend] = lambda x, b=backend: ours(x, backend=b)[0]
        candidates[f"{backend}_plain"] = lambda x, b=backend: plain(x, backend=b)[0]
    ms = time_fwd_bwd(candidates, x, repeats)
    row = {"name": "ln_lstm", "pass": "fwd+bwd", "T, B, I, H": ", ".join(map(str, shape)),
           "eager_ms": ms["eager"], "compiled_ms": ms.get("compiled", float("nan"))}
    for backend in backends:
        row[f"{backend}_ms"] = ms[backend]
        row[f"{backend}_plain_ms"] = ms[f"{backend}_plain"]
        row[f"{backend}_speedup"] = ms["eager"] / ms[backend]  # what `rnnkernels bench` summarises
        row[f"{backend}_vs_compiled"] = row["compiled_ms"] / ms[backend]
        row[f"{backend}_layer_norm_over_plain"] = ms[backend] / ms[f"{backend}_plain"]
    return row


def run(device="cpu", dtype=torch.float32, backends: Optional[Sequence[str]] = None, full: bool = False,
        repeats: int = 5, progress=None, tiny: bool = False) -> List[Dict]:
    """The `rnnkernels bench` suite "layer_norm": speedup = eager loop time /
    rk.LayerNormLSTM time; the quick suite skips the compiled loop (its
    compilation alone takes half a minute) and the largest shape; `tiny`: one
    small shape, for tests."""
    device = torch.device(device)
    if backends is None:
        backends = [b for b in rk.backends.available(device, op="rnn_ext", dtype=dtype) if b != "reference"]
        backends = backends or ["reference"]
    shapes = [(5, 3, 8, 8)] if tiny else SHAPES if full else SHAPES[:2]
    return [bench_shape(shape, backends, device, dtype, repeats, compile_baseline=full and not tiny)
            for shape in (progress(shapes) if progress else shapes)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--out", default="", help="also write the markdown table here")
    add_keep_freed_memory_flag(parser)
    args = parser.parse_args(argv)
    apply_keep_freed_memory_flag(parser, args)
    machine = describe("cpu")
    lines = [f"Machine: {one_line(machine)}; measured {machine['date']}", "",
             "forward+backward ms, median of %d, %s; ratio = baseline time / rk.LayerNormLSTM time"
             % (args.repeats, "malloc keeps freed memory" if args.keep_freed_memory else "default malloc"), "",
             "| T, B, I, H | eager loop | compiled loop | rk.LayerNormLSTM | rk.LSTM (plain) | vs eager | vs compiled "
             "| LayerNorm / plain |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for shape in SHAPES:
        try:
            row = bench_shape(shape, ["cpu"], torch.device("cpu"), repeats=args.repeats,
                              compile_baseline=not args.no_compile)
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
        line = (f"| {row['T, B, I, H']} | {row['eager_ms']:.2f} | {row['compiled_ms']:.2f} | {row['cpu_ms']:.2f} | "
                f"{row['cpu_plain_ms']:.2f} | {row['cpu_speedup']:.2f} | {row['cpu_vs_compiled']:.2f} | "
                f"{row['cpu_layer_norm_over_plain']:.2f} |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# LayerNorm LSTM vs a Python loop of nn.Linear + nn.LayerNorm\n\n`"
                    + " ".join(["python"] + sys.argv) + "`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
