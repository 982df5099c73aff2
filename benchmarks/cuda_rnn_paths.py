"""The two forward paths of the cuda backend against cuDNN, side by side.

    python -m benchmarks.cuda_rnn_paths [--dtype float32 bfloat16] [--out DIR] [--peak-tflops N]

For lstm and gru on the GPU shapes of benchmarks/suite.py (T=1024 B=16 H=768
and T=100 x B in {1, 4, 16, 64, 256} x H in {256, 512, 1024}), times
torch.nn (cuDNN), the cuda backend with the step-kernel loop
(RNNKERNELS_CUDA_PERSISTENT=0) and, where eligible (B <= 32, W_hh fits on
chip), with the persistent forward kernel (=1); forward and forward+backward,
median of repeats after warm-up (benchmarks/timing.py). Prints a markdown
table of milliseconds, speedups over cuDNN (>1: faster than cuDNN) and the
achieved GEMM TFLOP/s (benchmarks/rnn.py's FLOP count) and, given the card's
peak, the fraction of it. Needs a CUDA device and the extension built with
CUDA; takes about 2-4 minutes on an H100 (unmeasured: estimate).
"""
import argparse
import os
import sys
from typing import Dict, List

import torch
from torch import nn

from rnnkernels.functional import rnn_forward

from .rnn import rnn_flops
from .suite import GPU_EXTRA_SHAPES, RNNConfig
from .timing import time_side_by_side

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def bench_one(cell: str, shape, dtype, repeats: int) -> List[Dict]:
    torch.manual_seed(0)
    module = CELLS[cell](shape.input_size, shape.hidden_size).to(device="cuda", dtype=dtype)
    weights = list(module.parameters())  # torch's flat order: w_ih, w_hh, b_ih, b_hh
    x = torch.randn(shape.steps, shape.batch, shape.input_size, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(shape.steps, shape.batch, shape.hidden_size, device="cuda", dtype=dtype)

    def ours(policy: str, backward: bool):
        def call():
            os.environ["RNNKERNELS_CUDA_PERSISTENT"] = policy
            out, _ = rnn_forward(cell, x, None, weights, backend="cuda")
            if backward:
                out.backward(grad)
        return call

    def cudnn(backward: bool):
        def call():
            out, _ = module(x)
            if backward:
                out.backward(grad)
        return call

    rows = []
    for backward in (False, True):
        candidates = {"cudnn": cudnn(backward), "step": ours("0", backward)}
        try:  # eligible for the persistent kernel?
            ours("1", False)()
            candidates["persistent"] = ours("1", backward)
        except RuntimeError as exc:
            if "RNNKERNELS_CUDA_PERSISTENT=1" not in str(exc):
                raise
        grad_mode = torch.enable_grad() if backward else torch.no_grad()
        with grad_mode:
            ms = time_side_by_side(candidates, "cuda", warmup=2, repeats=repeats)
        flops = rnn_flops(RNNConfig(cell, shape), backward)
        rows.append({"cell": cell, "shape": str(shape), "pass": "fwd+bwd" if backward else "fwd", "ms": ms,
                     "tflops": {name: flops / (t * 1e-3) / 1e12 for name, t in ms.items()}})
    os.environ.pop("RNNKERNELS_CUDA_PERSISTENT", None)
    return rows


def markdown(rows: List[Dict], dtype: torch.dtype, peak: float) -> str:
    name = torch.cuda.get_device_name()
    lines = [f"## cuda backend paths vs cuDNN, {str(dtype).replace('torch.', '')}, {name}, torch {torch.__version__}",
             "", "Speedup = cuDNN ms / ours ms (> 1: faster than cuDNN). Command: "
             f"`python -m benchmarks.cuda_rnn_paths --dtype {str(dtype).replace('torch.', '')}`", "",
             "| cell | shape | pass | cuDNN ms | step ms | step speedup | persistent ms | persistent speedup | "
             "best TFLOP/s" + (" | % of peak |" if peak else " |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if peak else "")]
    for r in rows:
        ms, base = r["ms"], r["ms"]["cudnn"]
        pers = ms.get("persistent")
        best = max(v for k, v in r["tflops"].items() if k != "cudnn")
        line = (f"| {r['cell']} | {r['shape']} | {r['pass']} | {base:.3f} | {ms['step']:.3f} | {base / ms['step']:.2f} | "
                + (f"{pers:.3f} | {base / pers:.2f} | " if pers else "- | - | ") + f"{best:.2f} |")
        if peak:
            line += f" {100 * best / peak:.1f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="directory for cuda_paths_<dtype>.md")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the card's peak TFLOP/s for the dtype, to report the achieved fraction")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        rows = []
        for cell in CELLS:
            for shape in GPU_EXTRA_SHAPES:
                rows += bench_one(cell, shape, dtype, args.repeats)
                print(rows[-2]["cell"], rows[-2]["shape"], {k: round(v, 3) for k, v in rows[-1]["ms"].items()},
                      flush=True)
        table = markdown(rows, dtype, args.peak_tflops)
        print(table)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"cuda_paths_{dtype_name}.md"), "w") as f:
                f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
