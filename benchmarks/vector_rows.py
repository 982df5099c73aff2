"""The LSTM and GRU forward rows on explicit AVX-512 vectors (csrc/cpu/vector_rows.h)
against the scalar-vectorised rows of csrc/cpu/pointwise_cpu.cpp, whole 1-layer
LSTM and GRU layers at the suite's shapes, float32 and bfloat16, both in one process
(torch.ops.rnnkernels.set_cpu_vector_rows switches between them), interleaved.

    python benchmarks/vector_rows.py [--out benchmarks/results/vector_rows_cpu.md]
"""
import argparse
import sys

import torch

import rnnkernels as rk
from rnnkernels.bench import machine_info, markdown_table, publish, report_head
from rnnkernels.benchmarks.suite import CPU_SHAPES
from rnnkernels.benchmarks.timing import time_side_by_side


def with_rows(vector: bool, fn):
    def call():
        torch.ops.rnnkernels.set_cpu_vector_rows(vector)
        return fn()
    return call


LAYERS = {"lstm": rk.LSTM, "gru": rk.GRU}


def bench(cell: str, dtype: torch.dtype, shape, repeats: int) -> dict:
    T, B, I, H = shape
    layer = LAYERS[cell](I, H).to(dtype)
    x = torch.randn(T, B, I).to(dtype)
    x_grad = x.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            layer(x)

    def forward_backward():
        layer(x_grad)[0].float().sum().backward()

    row = {"cell": cell, "dtype": str(dtype).replace("torch.", ""), "T, B, I, H": ", ".join(map(str, shape))}
    for name, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
        ms = time_side_by_side({"scalar": with_rows(False, fn), "vector": with_rows(True, fn)}, "cpu",
                               repeats=repeats)
        row.update({f"{name} scalar ms": ms["scalar"], f"{name} vector ms": ms["vector"],
                    f"{name} speedup": ms["scalar"] / ms["vector"]})
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not torch.ops.rnnkernels.cpu_vector_rows():
        print("the vector rows do not run on this CPU (they need AVX-512 F, BW, DQ and VL)", file=sys.stderr)
        return 1
    info = machine_info(torch.device("cpu"))
    rows = [bench(cell, dtype, shape, args.repeats)
            for cell in LAYERS for dtype in (torch.float32, torch.bfloat16) for shape in CPU_SHAPES]
    torch.ops.rnnkernels.set_cpu_vector_rows(True)
    command = f"python benchmarks/vector_rows.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    text = (report_head("LSTM and GRU forward rows: explicit AVX-512 vectors vs scalar-vectorised", command, info)
            + "\nmedian of interleaved repeats, 1-layer rk.LSTM / rk.GRU; speedup = scalar ms / vector ms (> 1: the "
              "vector rows are faster); fwd under no_grad\n\n" + markdown_table(rows))
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
