"""The triton backend against cuDNN (torch.nn.LSTM / GRU / RNN on CUDA).

    python -m rnnkernels.benchmarks.triton_rnn --out benchmarks/results/triton_rnn_h100.md [--json] [--full]

For each cell, dtype and shape it times, side by side in one run (median of
repeats after warm-up): torch.nn (cuDNN), the triton backend on its automatic
path, and each path forced ("step": fused pointwise kernel + cuBLAS GEMM per
step; "sequence": the whole layer in one launch, only for H <= the sequence
limit), forward (inference, no_grad) and forward+backward. Ratios are torch
time / ours (> 1: faster than cuDNN). `out_err` is the output's largest
difference from cuDNN relative to its largest magnitude, a guard that the
timed kernels are right.

The step/sequence columns are what rnnkernels.triton_kernels.rnn.choose_path
(SEQUENCE_MAX_HIDDEN, SEQUENCE_MAX_BATCH) should be tuned from. Issue 5's
targets on an H100: sequence path >= 2x cuDNN fwd+bwd at batch <= 16 and
H <= 256; step path within 1.2x of cuDNN (speedup >= 0.83) at batch >= 64.

Needs a CUDA device; exits with a message and status 2 without one.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

import torch
from torch import nn

from .suite import CPU_SHAPES, GPU_EXTRA_SHAPES, RNNShape
from .timing import time_side_by_side

_TORCH = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}), "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"})}

# Quick: one shape of the sequence path's target (batch <= 16, H <= 256) and
# one of the step path's (batch >= 64); meant to fit the playbook's minute,
# most of which is Triton compiling (each shape specializes the kernels anew).
QUICK_SHAPES = [RNNShape(100, 8, 128, 256), RNNShape(100, 64, 512, 512)]
QUICK_CELLS = ("lstm", "gru")
FULL_CELLS = ("lstm", "gru", "rnn_tanh")


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float(), expected.detach().float()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def bench_one(cell: str, shape: RNNShape, device, dtype, repeats: int) -> List[Dict]:
    import rnnkernels as rk
    from rnnkernels.backends import triton as triton_backend
    from rnnkernels.triton_kernels import rnn as triton_rnn

    torch_cls, extra = _TORCH[cell]
    kwargs = dict(input_size=shape.input_size, hidden_size=shape.hidden_size, **extra)
    reference = torch_cls(**kwargs).to(device=device, dtype=dtype)
    ours = getattr(rk, torch_cls.__name__)(**kwargs, backend="triton").to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=generator).to(device=device, dtype=dtype)

    paths = ["step"] + (["sequence"] if shape.hidden_size <= triton_rnn.SEQUENCE_MAX_HIDDEN else [])
    auto_path = triton_rnn.choose_path("auto", shape.batch, shape.hidden_size)

    def on_path(path):
        def call():
            previous, triton_backend.PATH = triton_backend.PATH, path
            try:
                return ours(x)[0]
            finally:
                triton_backend.PATH = previous
        return call

    calls = {"torch": lambda: reference(x)[0], "triton": on_path("auto")}
    calls.update({f"triton_{path}": on_path(path) for path in paths})
    with torch.no_grad():
        expected = reference(x)[0]
        errors = {name: _relative_error(fn(), expected) for name, fn in calls.items() if name != "torch"}

    rows = []
    for backward in (False, True):
        x.requires_grad_(backward)

        def timed(fn):
            return (lambda: fn().sum().backward()) if backward else fn

        with torch.set_grad_enabled(backward):
            times = time_side_by_side({name: timed(fn) for name, fn in calls.items()}, device, repeats=repeats)
        row = {"cell": cell, "dtype": str(dtype).replace("torch.", ""), "shape": str(shape),
               "pass": "fwd+bwd" if backward else "fwd", "auto_path": auto_path, "torch_ms": times["torch"]}
        for name in calls:
            if name != "torch":
                row[f"{name}_ms"] = times[name]
                row[f"{name}_speedup"] = times["torch"] / times[name]
        row["out_err"] = f"{max(errors.values()):.1e}"
        rows.append(row)
    x.requires_grad_(False)
    return rows


def run(device="cuda", dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16), quick: bool = True,
        repeats: int = 5, progress=None, on_rows=None) -> List[Dict]:
    """One row per (cell, dtype, shape, pass); see the module docstring.
    on_rows(rows so far) is called after each shape (to save partial results)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("benchmarks.triton_rnn needs a CUDA device (the triton backend against cuDNN)")
    shapes = QUICK_SHAPES if quick else CPU_SHAPES + GPU_EXTRA_SHAPES
    cells = QUICK_CELLS if quick else FULL_CELLS
    jobs = [(cell, dtype, shape) for dtype in dtypes for cell in cells for shape in shapes]
    rows = []
    for cell, dtype, shape in (progress(jobs) if progress else jobs):
        rows.extend(bench_one(cell, shape, device, dtype, repeats))
        if on_rows is not None:
            on_rows(rows)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="markdown file to write")
    parser.add_argument("--json", action="store_true", help="also write the rows as .json beside --out")
    parser.add_argument("--full", action="store_true", help="the whole suite plus the GPU shapes (default: quick)")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"],
                        help="repeatable; default float32 and bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.triton_rnn: no CUDA device here; it times the triton backend against cuDNN and "
              "must run on a GPU machine (see benchmarks/gpu_playbook.sh)", file=sys.stderr)
        return 2
    from rnnkernels.bench import machine_info, markdown_table

    dtypes = [getattr(torch, name) for name in (args.dtype or ["float32", "bfloat16"])]
    info = machine_info(torch.device("cuda"))
    info["cudnn.allow_tf32"] = str(torch.backends.cudnn.allow_tf32)  # cuDNN fp32 may use TF32; ours is IEEE fp32
    command = "python -m rnnkernels.benchmarks.triton_rnn " + " ".join(sys.argv[1:] if argv is None else argv)

    def report(rows, final=False):
        text = (f"# triton backend vs cuDNN\n\n`{command}`\n\n" + "".join(f"- {k}: {v}\n" for k, v in info.items())
                + "\nspeedup = cuDNN time / triton time (> 1: faster than cuDNN); median of repeats\n\n"
                + markdown_table(rows) + ("" if final else "\n(partial: the run had not finished)\n"))
        if args.out:  # rewritten after every shape, so a run cut short still leaves its rows
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(text)
            if args.json:
                with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
                    json.dump({"command": command, "info": info, "rows": rows, "finished": final}, f, indent=1)
        return text

    rows = run("cuda", dtypes, quick=not args.full, repeats=args.repeats, progress=_log_progress, on_rows=report)
    print(report(rows, final=True))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _log_progress(jobs):
    for i, (cell, dtype, shape) in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] {cell} {str(dtype).replace('torch.', '')} {shape}", file=sys.stderr, flush=True)
        yield cell, dtype, shape


if __name__ == "__main__":
    sys.exit(main())
