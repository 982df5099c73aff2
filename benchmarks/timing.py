"""Side-by-side timing: median of repeats after warm-up, candidates interleaved
so that drift on a noisy machine hits every candidate alike."""
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
