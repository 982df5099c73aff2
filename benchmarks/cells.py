"""torch.nn's LSTMCell / GRUCell against rnnkernels' in a decoder loop.

A decoder steps one token at a time: each row runs STEPS steps of a cell
whose state feeds the next step (inputs given, as under teacher forcing),
forward (as inference, no_grad) and forward+backward (a loss on every
step's output), torch.nn and each backend interleaved, median of repeats.

    python -m rnnkernels.benchmarks.cells [--markdown benchmarks/results/cells_cpu.md]   # every shape
    rnnkernels bench --suite cells [--full]                                              # hidden 256 only
"""
import argparse
import sys
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

import rnnkernels as rk

from .timing import time_side_by_side

STEPS = 50
BATCHES = (1, 16, 64)
HIDDEN = (256, 512)
CELLS = {"lstm": (nn.LSTMCell, rk.LSTMCell), "gru": (nn.GRUCell, rk.GRUCell)}


def _decoder_loop(cell, xs, state):
    total = 0
    for x in xs:
        state = cell(x, state)
        total = total + (state[0] if isinstance(state, tuple) else state).sum()
    return total


def bench_cell(name: str, batch: int, hidden: int, backends: Sequence[str], device, dtype, repeats: int) -> List[Dict]:
    torch_cls, rk_cls = CELLS[name]
    reference = torch_cls(hidden, hidden).to(device=device, dtype=dtype)
    models = {b: rk_cls(hidden, hidden, backend=b).to(device=device, dtype=dtype) for b in backends}
    for model in models.values():
        model.load_state_dict(reference.state_dict())
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(STEPS, batch, hidden, generator=generator).to(device=device, dtype=dtype)
    h0 = torch.zeros(batch, hidden, device=device, dtype=dtype)
    state = (h0, h0) if name == "lstm" else h0
    rows = []
    for backward in (False, True):
        def call(cell):
            if backward:
                return lambda: _decoder_loop(cell, xs, state).backward()
            return lambda: _decoder_loop(cell, xs, state)

        candidates = {"torch": call(reference), **{b: call(m) for b, m in models.items()}}
        with torch.set_grad_enabled(backward):
            times = time_side_by_side(candidates, device, repeats=repeats)
        row = {"cell": f"{name}Cell", "shape": f"B{batch} H{hidden}", "pass": "fwd+bwd" if backward else "fwd",
               "steps": STEPS, "torch_ms": times["torch"]}
        for b in backends:
            row[f"{b}_ms"] = times[b]
            row[f"{b}_speedup"] = times["torch"] / times[b]
        rows.append(row)
    return rows


def run(device="cpu", dtype=torch.float32, backends: Optional[Sequence[str]] = None, full: bool = False,
        repeats: int = 5, progress=None) -> List[Dict]:
    """The `rnnkernels bench` suite: every cell and batch size; hidden 256 only unless `full`."""
    device = torch.device(device)
    if backends is None:
        backends = [b for b in rk.backends.available(device, dtype=dtype) if b != "reference"] or ["reference"]
    hidden_sizes = HIDDEN if full else HIDDEN[:1]
    configs = [(name, batch, hidden) for name in CELLS for hidden in hidden_sizes for batch in BATCHES]
    rows = []
    for name, batch, hidden in (progress(configs) if progress else configs):
        rows.extend(bench_cell(name, batch, hidden, backends, device, dtype, repeats))
    return rows


def main(argv=None) -> int:
    from rnnkernels.bench import machine_info, markdown_table, publish, report_head, summary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--markdown", help="write the table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(device)
    rows = run(device=device, full=True, repeats=args.repeats)
    command = f"python -m rnnkernels.benchmarks.cells {' '.join(sys.argv[1:] if argv is None else argv)}"
    text = (report_head(f"Decoder loop: {STEPS} steps of a cell, torch.nn against rnnkernels", command, info)
            + "\nspeedup = torch time / rnnkernels time (> 1: faster); median of interleaved repeats\n\n"
            + markdown_table(rows) + "\n```\n" + "\n".join(summary(rows)) + "\n```\n")
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
