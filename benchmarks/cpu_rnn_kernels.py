"""torch.nn vs rnnkernels' cpu backend, side by side in one run (llm.c style).

    python benchmarks/cpu_rnn_kernels.py [--quick] [--cells lstm,gru,rnn_tanh] [--dtype bfloat16]
        [--engine auto|onednn|blas|panels] [--out FILE.md]

For each (T, B, input, hidden) of issue 3, each cell, 1 layer and 2 layers
bidirectional: forward (no grad) and forward+backward times of torch.nn and
rk (same weights, same input), interleaved, median of repeats after warm-up;
prints the ratio torch/rk (> 1: rk is faster), rk's GFLOP/s and its fraction
of the machine's measured FMA peak (benchmarks/machine.py), and the ceiling:
the ratio a kernel would reach if its GEMMs ran at the 1024^3 matmul rate and
nothing else took time (a target above it asks for a faster GEMM). Then padded
input with uneven lengths (rk) against the same data as a PackedSequence
(torch.nn). The machine is shared and noisy: read the ratios, not the times.
"""
import argparse
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels as rk
from rnnkernels.benchmarks.machine import describe, one_line
from rnnkernels.benchmarks.suite import CPU_SHAPES
from rnnkernels.benchmarks.timing import add_keep_freed_memory_flag, apply_keep_freed_memory_flag

SHAPES = [tuple(shape) for shape in CPU_SHAPES]  # (T, B, input, hidden), defined in suite.py
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}
TORCH_MODULE = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}
RK_MODULE = {"lstm": rk.LSTM, "gru": rk.GRU, "rnn_tanh": rk.RNN}


def forward_flops(cell, T, B, I, H, layers, directions):
    """2 * multiply-adds of the GEMMs (the pointwise work is not counted)."""
    flops, in_size = 0, I
    for _ in range(layers):
        flops += directions * 2 * T * B * GATES[cell] * H * (in_size + H)
        in_size = H * directions
    return flops


CLOCK = time.perf_counter  # --cpu-time: time.process_time


def timed(fn):
    start = CLOCK()
    fn()
    return CLOCK() - start


def compare(fn_torch, fn_rk, repeats, warmup=2):
    """Median seconds of each, run alternately so noise hits both alike."""
    for _ in range(warmup):
        fn_torch()
        fn_rk()
    t_torch, t_rk = [], []
    for _ in range(repeats):
        t_torch.append(timed(fn_torch))
        t_rk.append(timed(fn_rk))
    return statistics.median(t_torch), statistics.median(t_rk)


DTYPE = torch.float32  # --dtype


def make_pair(cell, I, H, layers, bidirectional):
    torch.manual_seed(0)
    ref = TORCH_MODULE[cell](I, H, num_layers=layers, bidirectional=bidirectional).to(DTYPE)
    ours = RK_MODULE[cell](I, H, num_layers=layers, bidirectional=bidirectional, backend="cpu").to(DTYPE)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def bench_config(cell, shape, layers, bidirectional, repeats):
    T, B, I, H = shape
    ref, ours = make_pair(cell, I, H, layers, bidirectional)
    x = torch.randn(T, B, I, dtype=DTYPE)
    xg = x.clone().requires_grad_()

    def fwd(module):
        def run():
            with torch.no_grad():
                module(x)
        return run

    def fwd_bwd(module):
        def run():
            out, _ = module(xg)
            out.float().sum().backward()
        return run

    f_torch, f_rk = compare(fwd(ref), fwd(ours), repeats)
    fb_torch, fb_rk = compare(fwd_bwd(ref), fwd_bwd(ours), repeats)
    flops = forward_flops(cell, T, B, I, H, layers, 2 if bidirectional else 1)
    return {
        "fwd_torch_ms": f_torch * 1e3, "fwd_rk_ms": f_rk * 1e3, "fwd_ratio": f_torch / f_rk,
        "fb_torch_ms": fb_torch * 1e3, "fb_rk_ms": fb_rk * 1e3, "fb_ratio": fb_torch / fb_rk,
        "fwd_rk_gflops": flops / f_rk / 1e9, "fb_rk_gflops": 3 * flops / fb_rk / 1e9,
        "fwd_flops": flops, "fb_flops": 3 * flops,
    }


def bench_lengths(cell, shape, repeats):
    """fwd+bwd on uneven lengths: rk on padded input + lengths vs torch.nn on a
    PackedSequence, with one draw of lengths for every call, and with a fresh
    draw for each call (as a training loop sees them: sum(lengths), the row
    count of rk's packed products, is new nearly every call)."""
    T, B, I, H = shape
    ref, ours = make_pair(cell, I, H, 1, False)
    gen = torch.Generator().manual_seed(1)

    def draw():
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = T
        return lengths

    x = torch.randn(T, B, I, dtype=DTYPE, requires_grad=True)

    def run_torch(lengths):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, _ = ref(packed)
        out.data.float().sum().backward()

    def run_rk(lengths):
        out, _ = ours(x, lengths=lengths)
        out.float().sum().backward()

    fixed = draw()
    t_torch, t_rk = compare(lambda: run_torch(fixed), lambda: run_rk(fixed), repeats)
    draws = [draw() for _ in range(repeats + 2)]  # compare's two warm-up calls, then the timed ones
    fresh_torch, fresh_rk = iter(draws), iter(draws)
    f_torch, f_rk = compare(lambda: run_torch(next(fresh_torch)), lambda: run_rk(next(fresh_rk)), repeats)
    return {"torch_ms": t_torch * 1e3, "rk_ms": t_rk * 1e3, "ratio": t_torch / t_rk,
            "fresh_torch_ms": f_torch * 1e3, "fresh_rk_ms": f_rk * 1e3, "fresh_ratio": f_torch / f_rk}


def gemm_rate(repeats=5):
    """GFLOP/s of torch's 1024^3 matmul in the benchmark's dtype."""
    a, b = torch.randn(1024, 1024, dtype=DTYPE), torch.randn(1024, 1024, dtype=DTYPE)
    for _ in range(2):
        a @ b
    times = [timed(lambda: a @ b) for _ in range(repeats)]
    return 2 * 1024 ** 3 / statistics.median(times) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 1-layer only")
    parser.add_argument("--cells", default="lstm,gru,rnn_tanh")
    parser.add_argument("--shapes", default="", help="indices into SHAPES, e.g. 0,2 (default: all)")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the markdown table here")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--engine", default="auto", choices=["auto", "onednn", "blas", "panels"],
                        help="the cpu backend's GEMM engine (default: chosen by measurement; csrc/cpu/gemm.h)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process' CPU time instead of wall time: steadier on a shared "
                             "machine (use with --threads 1, where it is the compute time)")
    add_keep_freed_memory_flag(parser)
    args = parser.parse_args(argv)
    apply_keep_freed_memory_flag(parser, args)
    global CLOCK, DTYPE
    if args.cpu_time:
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    DTYPE = getattr(torch, args.dtype)
    torch.ops.rnnkernels.set_cpu_gemm_engine(args.engine)
    machine = describe("cpu")
    peak = float(machine["fma_peak_gflops"]) if machine["fma_peak_gflops"] != "unknown" else float("nan")
    repeats = args.repeats or (3 if args.quick else 7)
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    cells = args.cells.split(",")
    rate = gemm_rate()
    lines = [f"Machine: {one_line(machine)}; measured {machine['date']}", "",
             f"{args.dtype}, {'process CPU time' if args.cpu_time else 'wall time'}, median of {repeats}, "
             f"{'malloc keeps freed memory' if args.keep_freed_memory else 'default malloc'}; "
             f"ratio = torch.nn time / rk time (> 1: rk faster); {args.dtype} matmul 1024^3: {rate:.0f} GFLOP/s; "
             f"% of peak = GEMM FLOPs / time / measured float32 FMA peak"
             f"{' (AMX runs bfloat16 above it)' if DTYPE == torch.bfloat16 else ''}; "
             "ceiling = torch.nn time / (GEMM FLOPs at the 1024^3 matmul rate): the ratio of a kernel whose GEMMs "
             "ran at that rate and everything else took no time", "",
             "| cell | layers | T, B, I, H | fwd torch ms | fwd rk ms | fwd ratio | fwd ceiling | rk fwd % of peak "
             "| fwd+bwd torch ms | fwd+bwd rk ms | fwd+bwd ratio | fwd+bwd ceiling | rk fwd+bwd GFLOP/s "
             "| rk fwd+bwd % of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    summary = {}
    for cell in cells:
        for layers, bidirectional in ([(1, False)] if args.quick else [(1, False), (2, True)]):
            for shape in shapes:
                r = bench_config(cell, shape, layers, bidirectional, repeats)
                summary.setdefault(cell, []).append(r)
                r["fwd_ceiling"] = r["fwd_torch_ms"] / (r["fwd_flops"] / rate / 1e6)
                r["fb_ceiling"] = r["fb_torch_ms"] / (r["fb_flops"] / rate / 1e6)
                line = (f"| {cell} | {layers}{' bi' if bidirectional else ''} | {shape} | {r['fwd_torch_ms']:.2f} | "
                        f"{r['fwd_rk_ms']:.2f} | {r['fwd_ratio']:.2f} | {r['fwd_ceiling']:.2f} | "
                        f"{100 * r['fwd_rk_gflops'] / peak:.0f}% | {r['fb_torch_ms']:.2f} | {r['fb_rk_ms']:.2f} | "
                        f"{r['fb_ratio']:.2f} | {r['fb_ceiling']:.2f} | {r['fb_rk_gflops']:.0f} | "
                        f"{100 * r['fb_rk_gflops'] / peak:.0f}% |")
                lines.append(line)
                print(line, flush=True)
    lines += ["", "| cell | median fwd ratio | median fwd+bwd ratio | min fwd ratio | min fwd+bwd ratio "
              "| median fwd ceiling | median fwd+bwd ceiling |", "|---|---|---|---|---|---|---|"]
    for cell, rows in summary.items():
        median = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
        lines.append(f"| {cell} | {median('fwd_ratio'):.2f} | {median('fb_ratio'):.2f} | "
                     f"{min(r['fwd_ratio'] for r in rows):.2f} | {min(r['fb_ratio'] for r in rows):.2f} | "
                     f"{median('fwd_ceiling'):.2f} | {median('fb_ceiling'):.2f} |")
    lines += ["", "Uneven lengths, fwd+bwd: rk padded + lengths vs torch.nn PackedSequence (1 layer); "
              "the same lengths every call, and fresh lengths each call (the same draws for both)", "",
              "| cell | T, B, I, H | torch packed ms | rk padded ms | ratio | fresh: torch packed ms "
              "| fresh: rk padded ms | fresh: ratio |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines[-len(summary) - 6:]), flush=True)
    length_rows = []
    for cell in cells:
        for shape in shapes:
            r = bench_lengths(cell, shape, repeats)
            length_rows.append(r)
            line = (f"| {cell} | {shape} | {r['torch_ms']:.2f} | {r['rk_ms']:.2f} | {r['ratio']:.2f} "
                    f"| {r['fresh_torch_ms']:.2f} | {r['fresh_rk_ms']:.2f} | {r['fresh_ratio']:.2f} |")
            lines.append(line)
            print(line, flush=True)
    if length_rows:
        line = (f"\nMedian ratio over the {len(length_rows)} rows: "
                f"{statistics.median(r['ratio'] for r in length_rows):.2f} (same lengths), "
                f"{statistics.median(r['fresh_ratio'] for r in length_rows):.2f} (fresh lengths)")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# CPU kernels vs torch.nn\n\n`" + " ".join(["python"] + sys.argv) + "`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
