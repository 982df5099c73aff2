"""Attention: rnnkernels against what a PyTorch user would write, side by side.

Two comparisons per shape, forward and forward+backward, same inputs:
  sdpa     torch.nn.functional.scaled_dot_product_attention given the boolean
           mask equivalent to key_lengths (it takes no lengths), vs ours;
  weights  the matmul -> masked softmax -> matmul a user writes to get the
           attention weights back, vs ours with return_weights=True.
Lengths are uneven, between T/4 and T (one full), as in padded seq2seq batches
(`unpadded`: all full, where the kernel cannot skip masked key blocks).
speedup = baseline time / our time (> 1: we are faster); median of repeats
after warm-up, candidates interleaved (benchmarks/timing.py).

    python benchmarks/attention.py [--full]   # writes benchmarks/results/attention_cpu.md
    rnnkernels bench --suite attention [--full] [--markdown]   # the same rows in the bench CLI
"""
import math
import os
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: import as the installed rnnkernels.benchmarks
    __package__ = "rnnkernels.benchmarks"
    import rnnkernels.benchmarks  # noqa: F401

import rnnkernels as rk
from rnnkernels.attention import key_mask

from .timing import time_side_by_side


def shapes(quick: bool, device: torch.device, tiny: bool = False) -> List[Dict]:
    """(name, B, H (0: 3-D), Tq, Tk, D). On CPU the B=32 H=8 T=512 shape runs
    with a smaller batch (quick: 4, full: 8): B=32 takes seconds per call here.
    `tiny` keeps the rows but shrinks every shape to a smoke test (tests only)."""
    if tiny:
        return [
            dict(name="seq2seq", batch=4, heads=0, tq=6, tk=6, dim=16),
            dict(name="multihead", batch=2, heads=2, tq=24, tk=24, dim=8),
            dict(name="decode", batch=2, heads=2, tq=1, tk=48, dim=8),
            dict(name="multihead-unpadded", batch=2, heads=2, tq=24, tk=24, dim=8, unpadded=True),
        ]
    big_batch = 32 if device.type == "cuda" else (4 if quick else 8)
    return [
        dict(name="seq2seq", batch=64, heads=0, tq=50, tk=50, dim=256),
        dict(name="multihead", batch=big_batch, heads=8, tq=512, tk=512, dim=64),
        dict(name="decode", batch=big_batch, heads=8, tq=1, tk=1024, dim=64),
        # No padding at all: what is left without skipping masked key blocks.
        dict(name="multihead-unpadded", batch=big_batch, heads=8, tq=512, tk=512, dim=64, unpadded=True),
    ]


def _inputs(s: Dict, device, dtype, generator):
    lead = (s["batch"], s["heads"]) if s["heads"] else (s["batch"],)
    q = torch.randn(*lead, s["tq"], s["dim"], generator=generator).to(device=device, dtype=dtype)
    k = torch.randn(*lead, s["tk"], s["dim"], generator=generator).to(device=device, dtype=dtype)
    v = torch.randn(*lead, s["tk"], s["dim"], generator=generator).to(device=device, dtype=dtype)
    lengths = torch.randint(max(1, s["tk"] // 4), s["tk"] + 1, (s["batch"],), generator=generator)
    lengths[0] = s["tk"]
    if s.get("unpadded"):
        lengths.fill_(s["tk"])
    return q, k, v, lengths.to(device)


def _sdpa(q, k, v, lengths):
    keep = ~key_mask(lengths, False, q.shape[-2], k.shape[-2], q.device)  # (B, 1, 1, Tk), True = attend
    if q.dim() == 3:  # 4-D with one head: SDPA's fused CPU kernel takes only 4-D (3-D is ~2x slower)
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=keep)[:, 0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


def _matmul_softmax_matmul(q, k, v, lengths):
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    hidden = key_mask(lengths, False, q.shape[-2], k.shape[-2], q.device)
    if q.dim() == 3:
        hidden = hidden[:, 0]
    weights = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
    return torch.matmul(weights, v), weights


def _ours(q, k, v, lengths, backend, return_weights=False):
    return rk.dot_product_attention(q, k, v, key_lengths=lengths, return_weights=return_weights, backend=backend)


def _step(fn, leaves, backward: bool):
    if not backward:
        with torch.no_grad():
            fn(*leaves)
        return
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    # Dense upstream gradients: out.sum() would give stride-0 gradients that send torch's
    # bmm backward down a slow path (10x) and flatter the baseline's cost.
    torch.autograd.backward(outs, [torch.ones_like(t) * 0.5 for t in outs])
    for t in leaves:
        t.grad = None


def run(quick: bool = True, device="cpu", dtype=torch.float32, backends: Optional[List[str]] = None,
        full: Optional[bool] = None, repeats: int = 5, progress=None, tiny: bool = False) -> List[Dict]:
    """Rows {name, shape, pass, baseline_ms, <backend>_ms, <backend>_speedup} (the keys `rnnkernels bench`
    summarises), one per shape, baseline and pass; `full` (the CLI's flag) overrides quick."""
    if full is not None:
        quick = not full
    device = torch.device(device)
    backend = (backends or [None])[0] or rk.backends.available(device, "attention", dtype)[0]
    generator = torch.Generator().manual_seed(0)
    rows = []
    items = shapes(quick, device, tiny)
    for s in (progress(items) if progress else items):
        q, k, v, lengths = _inputs(s, device, dtype, generator)
        shape = (f"B={s['batch']}" + (f" H={s['heads']}" if s["heads"] else "") +
                 f" Tq={s['tq']} Tk={s['tk']} D={s['dim']}")
        comparisons = {
            "sdpa": (lambda q, k, v: _sdpa(q, k, v, lengths),
                     lambda q, k, v: _ours(q, k, v, lengths, backend)),
            "weights": (lambda q, k, v: _matmul_softmax_matmul(q, k, v, lengths),
                        lambda q, k, v: _ours(q, k, v, lengths, backend, return_weights=True)),
        }
        for baseline, (base_fn, our_fn) in comparisons.items():
            for backward in (False, True):
                leaves = [t.detach().clone().requires_grad_(backward) for t in (q, k, v)]
                times = time_side_by_side({
                    "baseline": lambda: _step(base_fn, leaves, backward),
                    "ours": lambda: _step(our_fn, leaves, backward),
                }, device, warmup=1, repeats=repeats if quick else 2 * repeats)
                rows.append({"name": f"{s['name']} vs {baseline}", "shape": shape,
                             "pass": "fwd+bwd" if backward else "fwd", "baseline_ms": times["baseline"],
                             f"{backend}_ms": times["ours"], f"{backend}_speedup": times["baseline"] / times["ours"]})
    return rows


def main(argv=None) -> int:
    import argparse

    from rnnkernels.bench import machine_info, markdown_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=None, help="markdown file (default benchmarks/results/attention_<device>.md)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(quick=not args.full, device=device, repeats=args.repeats)
    info = machine_info(device)
    command = "python benchmarks/attention.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# Attention benchmark ({device.type}, float32)\n\n`{command}`\n\n" +
            "\n".join(f"- {k}: {v}" for k, v in info.items()) +
            "\n\nspeedup = baseline time / rnnkernels time (> 1: rnnkernels is faster). `sdpa`: "
            "scaled_dot_product_attention with the boolean mask of the key lengths; `weights`: matmul, "
            "masked softmax, matmul (returns the weights) vs return_weights=True.\n\n" + markdown_table(rows))
    print(text)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"attention_{device.type}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
