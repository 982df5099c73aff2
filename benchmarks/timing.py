"""Side-by-side timing: median of repeats after warm-up, candidates interleaved
so that drift on a noisy machine hits every candidate alike."""
import argparse
import ctypes
import ctypes.util
import statistics
import time
from typing import Callable, Dict

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(candidates: Dict[str, Callable[[], object]], device, warmup: int = 2, repeats: int = 7,
                      min_seconds: float = 0.0) -> Dict[str, float]:
    """Median milliseconds per call of each candidate."""
    device = torch.device(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples = {name: [] for name in candidates}
    start = time.perf_counter()
    done = 0
    while done < repeats or (time.perf_counter() - start < min_seconds and done < 10 * repeats):
        for name, fn in candidates.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
        done += 1
    return {name: statistics.median(values) for name, values in samples.items()}


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory for reuse (mallopt: no mmap
    for big blocks, no trimming), as a caching allocator (jemalloc, tcmalloc)
    would. By default a freed block of a few MB goes back to the kernel and
    the next call faults its pages in again, and that cost, per page, lands on
    whichever implementation allocates more per call (torch.nn.LSTM's CPU
    path, at the language-model shape: ~10,000 faults a training step). False
    where there is no glibc."""
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    # 32 MiB is the largest mmap threshold glibc accepts on 64-bit.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def add_keep_freed_memory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="malloc keeps freed blocks for reuse, as a caching allocator does "
                             "(benchmarks/timing.py: keep_freed_memory), so no side pays page faults per call")


def apply_keep_freed_memory_flag(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory needs glibc's mallopt")
