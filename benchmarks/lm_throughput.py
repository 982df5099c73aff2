"""Language-model training: rnnkernels.LSTM against torch.nn.LSTM, same seed, same batches.

Both models start from identical weights (the torch one is rnnkernels.unconvert
of a copy) and take their optimiser steps interleaved, one each in turn, so
machine load hits both alike. Reports the validation perplexity of each after
the same steps and the training throughput ratio (median step times).

    .venv/bin/python benchmarks/lm_throughput.py --steps 200
"""
import argparse
import copy
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import rnnkernels as rk
from rnnkernels.benchmarks.machine import describe, one_line
from rnnkernels.data import load_lm
from rnnkernels.models import RNNLanguageModel
from rnnkernels.models.common import CELLS
from rnnkernels.benchmarks.timing import add_keep_freed_memory_flag, apply_keep_freed_memory_flag


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="builtin:python-stdlib")
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=64)
    parser.add_argument("--embed", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cell", default="lstm", choices=sorted(CELLS))
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-tokens", type=int, default=50_000)
    parser.add_argument("--backend", default="auto", help="rnnkernels backend of the rk model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    add_keep_freed_memory_flag(parser)
    args = parser.parse_args(argv)
    apply_keep_freed_memory_flag(parser, args)

    data = load_lm(args.data, max_chars=args.max_chars)
    torch.manual_seed(args.seed)
    ours = RNNLanguageModel(len(data.vocab), args.embed, args.hidden, args.layers, cell=args.cell,
                            backend=args.backend)
    theirs = rk.unconvert(copy.deepcopy(ours))  # torch.nn.LSTM / GRU / RNN, identical weights
    assert type(theirs.rnn).__module__.startswith("torch.nn") and type(ours.rnn).__module__.startswith("rnnkernels")
    models = {"rnnkernels": ours, "torch": theirs}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    times = {name: [] for name in models}
    windows = (data.train.numel() - 1) // args.bptt
    order = torch.randperm(windows, generator=torch.Generator().manual_seed(args.seed))
    for step in range(args.steps):
        starts = order[(torch.arange(args.batch_size) + step * args.batch_size) % windows] * args.bptt
        window = data.train[starts[:, None] + torch.arange(args.bptt + 1)]
        for name, model in models.items():
            began = time.perf_counter()
            logits, _ = model(window[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].reshape(-1))
            optimizers[name].zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - began)
    tokens = args.batch_size * args.bptt
    result = {"cell": args.cell, "steps": args.steps, "batch_size": args.batch_size, "bptt": args.bptt, "hidden": args.hidden,
              "layers": args.layers, "backend": rk.backends.resolve(args.backend, "cpu", "rnn", torch.float32)[0],
              "torch": torch.__version__, "machine": one_line(describe("cpu")),
              "malloc": "keeps freed memory" if args.keep_freed_memory else "default"}
    for name, model in models.items():
        result[f"{name}_valid_ppl"] = model.perplexity(data.valid[: args.eval_tokens], batch_size=16, bptt=args.bptt)
        result[f"{name}_tokens_per_s"] = tokens / statistics.median(times[name])
    result["ppl_relative_difference"] = abs(result["rnnkernels_valid_ppl"] / result["torch_valid_ppl"] - 1)
    result["throughput_ratio"] = result["rnnkernels_tokens_per_s"] / result["torch_tokens_per_s"]
    for key, value in result.items():
        print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
