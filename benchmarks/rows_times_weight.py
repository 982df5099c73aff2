"""A single step's product a (m, k) W^T on W as the layer stores it (n, k):
csrc/cpu/rows_times_weight.h's AVX-512 kernel against the BLAS sgemm that
torch.mm(a, W.t()) runs (MKL in the torch wheels), which is what a cell's
step would call otherwise. Each shape is checked against float64 first.

    python benchmarks/rows_times_weight.py [--out benchmarks/results/rows_times_weight_cpu.md]
"""
import argparse
import sys
import time

import torch

import rnnkernels  # noqa: F401  (loads torch.ops.rnnkernels)
from rnnkernels.bench import machine_info, markdown_table, publish, report_head

# (m, k, n): LSTM (n = 4k) and GRU (n = 3k) steps of the cells benchmark
# (batch 1, 16, 64; hidden 256, 512) and the rows around the BLAS crossover.
SHAPES = [(1, 256, 1024), (4, 256, 1024), (16, 256, 1024), (16, 256, 768), (32, 256, 1024), (64, 256, 1024),
          (1, 512, 2048), (16, 512, 2048), (32, 512, 2048), (64, 512, 2048), (128, 512, 2048)]


def best_us(fn, calls: int, repeats: int) -> float:
    """Best over repeats of the mean time of `calls` calls, microseconds."""
    for _ in range(max(calls // 10, 2)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def bench(m: int, k: int, n: int, repeats: int, peak_gflops) -> dict:
    generator = torch.Generator().manual_seed(m * 1_000_003 + k * 1009 + n)
    a, w = torch.randn(m, k, generator=generator), torch.randn(n, k, generator=generator)
    kernel = torch.ops.rnnkernels.cpu_rows_times_weight
    takes = True
    try:
        got = kernel(a, w)
    except RuntimeError:  # outside the rows the kernel takes: the layer runs BLAS there
        takes = False
    row = {"m, k, n": f"{m}, {k}, {n}"}
    calls = max(20, int(2e8 / (m * k * n + 1e5)))
    out = torch.empty(m, n)
    blas_us = best_us(lambda: torch.mm(a, w.t(), out=out), calls, repeats)
    row["blas_us"] = blas_us
    if takes:
        expected = a.double() @ w.double().t()
        error = ((got.double() - expected).abs() / (a.double().abs() @ w.double().abs().t())).max().item()
        kernel_us = best_us(lambda: kernel(a, w), calls, repeats)
        gflops = 2 * m * k * n / kernel_us / 1e3
        row.update(kernel_us=kernel_us, speedup=blas_us / kernel_us, kernel_gflops=gflops,
                   kernel_pct_of_peak=f"{100 * gflops / peak_gflops:.0f}%" if peak_gflops else "",
                   max_relative_error=f"{error:.1e}")
    else:
        row.update(kernel_us="BLAS", speedup="", kernel_gflops="", kernel_pct_of_peak="", max_relative_error="")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args(argv)
    info = machine_info(torch.device("cpu"))
    peak = info["fma_peak_gflops"]
    peak_gflops = float(peak) if peak != "unknown" else None
    rows = [bench(m, k, n, args.repeats, peak_gflops) for m, k, n in SHAPES]
    command = f"python benchmarks/rows_times_weight.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    text = (report_head("A step's product a (m, k) W^T on the stored weight: rows_times_weight vs BLAS", command, info)
            + "\nbest of repeats of a mean over many calls, each side through its torch op (dispatch included); "
              "speedup = blas_us / kernel_us; kernel_pct_of_peak = kernel_gflops / fma_peak_gflops; "
              "error relative to |a| |W|^T against float64; "
              "\"BLAS\": rows the kernel leaves to BLAS (rows_times_weight_takes)\n\n"
            + markdown_table(rows))
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
