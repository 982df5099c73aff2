"""Benchmark suite and runners, installed as rnnkernels.benchmarks so `rnnkernels bench` uses the same shapes."""
