"""`rnnkernels bench`: torch baselines against rnnkernels backends, side by side.

Suites live in rnnkernels.benchmarks (the repo's benchmarks/ folder), one
module each with `run(device, dtype, backends, full, repeats, progress) -> rows`, each row
with `<backend>_speedup` keys (summarised per name/cell and pass).
rnn: per shape and pass, torch's time, each backend's time, the ratio
torch/ours (> 1: we are faster) and achieved GFLOP/s. attention: ours against
scaled_dot_product_attention with the lengths' boolean mask and against
matmul-softmax-matmul (with return_weights=True), forward and forward+backward.
cells: 50 decoder steps of LSTMCell/GRUCell/RNNCell. layer_norm:
rk.LayerNormLSTM against a Python loop of nn.Linear + nn.LayerNorm (speedup)
and against rk's plain LSTM at the same shape.
"""
import importlib
import inspect
import json
import os
import sys
from typing import Dict, List

import torch

_SUITES = {"rnn": "rnnkernels.benchmarks.rnn", "attention": "rnnkernels.benchmarks.attention",
           "cells": "rnnkernels.benchmarks.cells", "layer_norm": "rnnkernels.benchmarks.layer_norm_lstm"}


def machine_info(device: torch.device) -> Dict[str, str]:
    """CPU model, vendor, ISA, cores, threads, measured FMA peak, GEMM engine,
    versions (rnnkernels.benchmarks.machine)."""
    from rnnkernels.benchmarks.machine import describe

    return describe(device)


def report_head(title: str, command: str, info: Dict[str, str]) -> str:
    """A results file's first lines: its title, the command that wrote it and
    the machine it ran on (machine_info), as every table in benchmarks/results/ has."""
    return f"# {title}\n\n`{command}`\n\n" + "".join(f"- {key}: {value}\n" for key, value in info.items())


def publish(text: str, path=None) -> None:
    """Prints a results file's text and, given a path, writes it there."""
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: List[Dict]) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary(rows: List[Dict]) -> List[str]:
    """Median speedup per backend, cell and pass."""
    import statistics

    lines = []
    backends = sorted({k[: -len("_speedup")] for row in rows for k in row if k.endswith("_speedup")})
    for backend in backends:
        groups: Dict[tuple, List[float]] = {}
        for row in rows:
            if f"{backend}_speedup" in row:
                key = (row.get("cell", row.get("name", "")), row["pass"])
                groups.setdefault(key, []).append(row[f"{backend}_speedup"])
        for (cell, kind), values in sorted(groups.items()):
            lines.append(f"{backend:<10} {cell:<10} {kind:<8} median speedup {statistics.median(values):5.2f}x "
                         f"(min {min(values):.2f}x, max {max(values):.2f}x, {len(values)} shapes)")
    return lines


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time torch baselines against rnnkernels backends")
    parser.add_argument("--suite", choices=sorted(_SUITES) + ["all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--backend", action="append", help="backend to time (repeatable; default: the fastest built)")
    parser.add_argument("--full", action="store_true", help="the whole suite (default: the quick one, < 3 min on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test: every shape shrunk to seconds (suites that have it: attention); "
                             "the times mean nothing")
    parser.add_argument("--markdown", action="store_true", help="write benchmarks/results/bench_<device>.md")
    parser.add_argument("--json", action="store_true", help="write benchmarks/results/bench_<device>.json")
    parser.add_argument("--out-dir", default=os.path.join("benchmarks", "results"))
    parser.set_defaults(func=_main)


def _main(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    from tqdm import tqdm

    info = machine_info(device)
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    results = {}
    suites = sorted(_SUITES) if args.suite == "all" else [args.suite]
    modules = {suite: importlib.import_module(_SUITES[suite]) for suite in suites}
    if args.tiny:
        lacking = [s for s, m in modules.items() if "tiny" not in inspect.signature(m.run).parameters]
        if lacking:
            print(f"error: --tiny: suite(s) {', '.join(lacking)} have no tiny shapes", file=sys.stderr)
            return 2
    for suite, module in modules.items():
        extra = {"tiny": True} if args.tiny else {}
        if "peak_gflops" in inspect.signature(module.run).parameters and info["fma_peak_gflops"] != "unknown":
            extra["peak_gflops"] = float(info["fma_peak_gflops"])
        rows = module.run(device=device, dtype=dtype, backends=args.backend, full=args.full, repeats=args.repeats,
                          progress=lambda items: tqdm(items, desc=f"bench {suite}", leave=False, file=sys.stderr),
                          **extra)
        results[suite] = rows
        print(f"\n## {suite} ({device.type}, {args.dtype}); speedup = torch time / rnnkernels time\n")
        print(markdown_table(rows))
        print("\n".join(summary(rows)))
    if args.markdown or args.json:
        os.makedirs(args.out_dir, exist_ok=True)
        stem = os.path.join(args.out_dir, f"bench_{device.type}_{args.dtype}{'_full' if args.full else ''}")
        if args.markdown:
            with open(stem + ".md", "w") as f:
                f.write(f"# rnnkernels bench\n\n`{' '.join(['rnnkernels'] + sys.argv[1:])}`\n\n")
                f.write("".join(f"- {k}: {v}\n" for k, v in info.items()))
                for suite, rows in results.items():
                    f.write(f"\n## {suite}\n\nspeedup = torch time / rnnkernels time (> 1: faster)\n\n")
                    f.write(markdown_table(rows))
                    f.write("\n```\n" + "\n".join(summary(rows)) + "\n```\n")
            print(f"wrote {stem}.md")
        if args.json:
            with open(stem + ".json", "w") as f:
                json.dump({"info": info, "results": results}, f, indent=1)
            print(f"wrote {stem}.json")
    return 0
