"""Correctness harness: every available backend against the float64 reference.

`rnnkernels check` draws random configurations (cell, layers, directions,
lengths, batch_first, proj_size, h0 given or not, dtype; for attention heads,
lengths, causal, scale), runs each backend and the float64 reference on the
same fresh random inputs and weights, and compares outputs, final states and
the gradients of the input, the initial states and every parameter (of query,
key and value for attention). It prints the largest relative error per
backend and dtype and exits non-zero on any failure. The tests call the same
functions.
"""
import dataclasses
import random
import sys
from typing import Dict, List, Optional

import torch

from . import backends
from .attention import dot_product_attention
from .functional import rnn_forward
from .reference import GATES

# Largest accepted error relative to the reference's largest magnitude. float32
# kernels land near 1e-6 here; bfloat16 has an 8-bit mantissa.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def relative_error(actual: Optional[torch.Tensor], expected: Optional[torch.Tensor]) -> float:
    """max |actual - expected| / max |expected| (0 for two empty or two None)."""
    if actual is None and expected is None:
        return 0.0
    if actual is None or expected is None:
        return float("inf")
    if actual.shape != expected.shape:
        return float("inf")
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / max(scale, 1e-30)


@dataclasses.dataclass
class RNNCase:
    mode: str = "lstm"
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    steps: int = 5
    batch: int = 3
    input_size: int = 4
    hidden_size: int = 6
    lengths: Optional[List[int]] = None
    with_h0: bool = True
    dtype: torch.dtype = torch.float64
    device: str = "cpu"

    def describe(self) -> str:
        parts = [self.mode, f"L{self.num_layers}", "bi" if self.bidirectional else "uni",
                 f"T{self.steps}", f"B{self.batch}", f"I{self.input_size}", f"H{self.hidden_size}"]
        if self.proj_size:
            parts.append(f"P{self.proj_size}")
        if self.lengths is not None:
            parts.append("len=" + ",".join(map(str, self.lengths)))
        if self.batch_first:
            parts.append("batch_first")
        if not self.bias:
            parts.append("no-bias")
        if not self.with_h0:
            parts.append("no-h0")
        return " ".join(parts) + f" {str(self.dtype).replace('torch.', '')}"


def random_rnn_case(rng: random.Random, dtype=torch.float64, device="cpu") -> RNNCase:
    mode = rng.choice(["lstm", "gru", "rnn_tanh", "rnn_relu"])
    steps, batch = rng.choice([1, 2, 5, 9]), rng.choice([1, 2, 3, 5])
    hidden = rng.choice([1, 3, 5, 8, 13])
    lengths = None
    if rng.random() < 0.5:
        lengths = [rng.randint(1, steps) for _ in range(batch)]
        lengths[rng.randrange(batch)] = steps
    return RNNCase(
        mode=mode,
        num_layers=rng.choice([1, 1, 2, 3]),
        bidirectional=rng.random() < 0.5,
        batch_first=rng.random() < 0.3,
        bias=rng.random() < 0.8,
        proj_size=rng.choice([0, 0, max(1, hidden - 2)]) if mode == "lstm" and hidden > 1 else 0,
        steps=steps,
        batch=batch,
        input_size=rng.choice([1, 4, 7]),
        hidden_size=hidden,
        lengths=lengths,
        with_h0=rng.random() < 0.6,
        dtype=dtype,
        device=device,
    )


def _rnn_weights(case: RNNCase, generator: torch.Generator) -> List[torch.Tensor]:
    """torch.nn's flat weight order, uniform(-1/sqrt(H), 1/sqrt(H)) like its init."""
    gates = GATES[case.mode] * case.hidden_size
    out_size = case.proj_size or case.hidden_size
    bound = case.hidden_size ** -0.5
    directions = 2 if case.bidirectional else 1
    shapes = []
    for layer in range(case.num_layers):
        in_size = case.input_size if layer == 0 else out_size * directions
        for _ in range(directions):
            shapes += [(gates, in_size), (gates, out_size)]
            if case.bias:
                shapes += [(gates,), (gates,)]
            if case.proj_size:
                shapes.append((case.proj_size, case.hidden_size))
    return [(torch.rand(s, dtype=torch.float64, generator=generator) * 2 - 1) * bound for s in shapes]


def run_rnn_case(case: RNNCase, backend: str, seed: int = 0) -> Dict[str, float]:
    """Relative errors of `backend` in case.dtype against the float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if case.bidirectional else 1
    out_size = case.proj_size or case.hidden_size
    x_shape = (case.batch, case.steps, case.input_size) if case.batch_first else (case.steps, case.batch, case.input_size)
    x = torch.randn(x_shape, dtype=torch.float64, generator=gen)
    weights = _rnn_weights(case, gen)
    hx = None
    if case.with_h0:
        h0 = torch.randn(case.num_layers * directions, case.batch, out_size, dtype=torch.float64, generator=gen)
        c0 = torch.randn(case.num_layers * directions, case.batch, case.hidden_size, dtype=torch.float64, generator=gen)
        hx = (h0, c0) if case.mode == "lstm" else h0
    lengths = torch.tensor(case.lengths, dtype=torch.int64) if case.lengths is not None else None

    def run(dtype, device, name):
        leaves = [x] + weights + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
        leaves = [t.detach().to(dtype=dtype, device=device).requires_grad_() for t in leaves]
        xi, ws, hs = leaves[0], leaves[1 : 1 + len(weights)], leaves[1 + len(weights) :]
        state_in = None if hx is None else (tuple(hs) if case.mode == "lstm" else hs[0])
        out, state = rnn_forward(case.mode, xi, state_in, ws, num_layers=case.num_layers,
                                 bidirectional=case.bidirectional, has_bias=case.bias, proj_size=case.proj_size,
                                 batch_first=case.batch_first, lengths=lengths, backend=name)
        states = list(state) if isinstance(state, tuple) else [state]
        return out, states, leaves

    ref_out, ref_states, ref_leaves = run(torch.float64, "cpu", "reference")
    out, states, leaves = run(case.dtype, case.device, backend)
    # Fresh random upstream gradients for the output and every final state.
    upstream = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in [ref_out] + ref_states]
    ref_grads = torch.autograd.grad([ref_out] + ref_states, ref_leaves, upstream, allow_unused=True)
    grads = torch.autograd.grad([out] + states, leaves,
                                [g.to(dtype=case.dtype, device=case.device) for g in upstream], allow_unused=True)
    n_w = len(weights)
    errors = {
        "output": relative_error(out, ref_out),
        "states": max(relative_error(a, b) for a, b in zip(states, ref_states)),
        "grad_input": relative_error(grads[0], ref_grads[0]),
        "grad_weights": max([relative_error(a, b) for a, b in zip(grads[1 : 1 + n_w], ref_grads[1 : 1 + n_w])]),
        "grad_h0": max([relative_error(a, b) for a, b in zip(grads[1 + n_w :], ref_grads[1 + n_w :])], default=0.0),
    }
    return errors


@dataclasses.dataclass
class AttentionCase:
    batch: int = 2
    heads: int = 0  # 0: 3-D inputs
    q_steps: int = 3
    k_steps: int = 5
    dim: int = 8
    v_dim: int = 8
    lengths: Optional[List[int]] = None
    causal: bool = False
    scale: Optional[float] = None
    dtype: torch.dtype = torch.float64
    device: str = "cpu"

    def describe(self) -> str:
        parts = [f"B{self.batch}", f"H{self.heads}" if self.heads else "3-D", f"Tq{self.q_steps}",
                 f"Tk{self.k_steps}", f"D{self.dim}", f"Dv{self.v_dim}"]
        if self.lengths is not None:
            parts.append("len=" + ",".join(map(str, self.lengths)))
        if self.causal:
            parts.append("causal")
        if self.scale is not None:
            parts.append(f"scale={self.scale}")
        return " ".join(parts) + f" {str(self.dtype).replace('torch.', '')}"


def random_attention_case(rng: random.Random, dtype=torch.float64, device="cpu") -> AttentionCase:
    batch, k_steps = rng.choice([1, 2, 4]), rng.choice([1, 3, 8, 17])
    lengths = None
    if rng.random() < 0.6:
        lengths = [rng.randint(0, k_steps) for _ in range(batch)]
    return AttentionCase(batch=batch, heads=rng.choice([0, 1, 3]), q_steps=rng.choice([1, 2, 7, 16]),
                         k_steps=k_steps, dim=rng.choice([1, 8, 20, 33]), v_dim=rng.choice([1, 8, 24]),
                         lengths=lengths, causal=rng.random() < 0.25, scale=rng.choice([None, None, 1.0]),
                         dtype=dtype, device=device)


def run_attention_case(case: AttentionCase, backend: str, seed: int = 0) -> Dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    lead = (case.batch, case.heads) if case.heads else (case.batch,)
    q = torch.randn(*lead, case.q_steps, case.dim, dtype=torch.float64, generator=gen)
    k = torch.randn(*lead, case.k_steps, case.dim, dtype=torch.float64, generator=gen)
    v = torch.randn(*lead, case.k_steps, case.v_dim, dtype=torch.float64, generator=gen)
    # The reference sees exactly the values the kernel sees (rounded to the
    # case's dtype): the check measures the kernel's arithmetic, not the
    # rounding of its inputs, which alone can exceed the float32 tolerance in
    # near one-hot rows.
    q, k, v = (t.to(case.dtype).double() for t in (q, k, v))
    lengths = torch.tensor(case.lengths, dtype=torch.int64) if case.lengths is not None else None

    def run(dtype, device, name):
        leaves = [t.to(dtype=dtype, device=device).requires_grad_() for t in (q, k, v)]
        context, weights = dot_product_attention(*leaves, key_lengths=lengths, causal=case.causal,
                                                 scale=case.scale, return_weights=True, backend=name)
        return context, weights, leaves

    ref_ctx, ref_w, ref_leaves = run(torch.float64, "cpu", "reference")
    ctx, w, leaves = run(case.dtype, case.device, backend)
    upstream = torch.randn(ref_ctx.shape, dtype=torch.float64, generator=gen).to(case.dtype).double()
    ref_grads = torch.autograd.grad(ref_ctx, ref_leaves, upstream)
    grads = torch.autograd.grad(ctx, leaves, upstream.to(dtype=case.dtype, device=case.device))
    return {
        "output": relative_error(ctx, ref_ctx),
        "weights": relative_error(w, ref_w),
        "grad_query": relative_error(grads[0], ref_grads[0]),
        "grad_key": relative_error(grads[1], ref_grads[1]),
        "grad_value": relative_error(grads[2], ref_grads[2]),
    }


def device_dtypes(device: str) -> List[torch.dtype]:
    return [torch.float64, torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]


def run_checks(cases: int = 20, seed: int = 0, only: Optional[List[str]] = None, ops=("rnn", "attention"),
               out=None) -> bool:
    """Prints one row per (op, device, backend, dtype); returns True when all pass.

    `only`: check just these backends. Each must be known and able to run at
    least one of `ops` here (else a line with the reason, and False): a check
    that checks nothing must not pass."""
    out = out if out is not None else sys.stdout  # looked up per call: pytest's capsys replaces it
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    makers = {"rnn": (random_rnn_case, run_rnn_case), "attention": (random_attention_case, run_attention_case)}
    if only:
        unknown = [name for name in only if name not in backends.names()]
        if unknown:
            print(f"error: unknown backend {', '.join(map(repr, unknown))}; known backends: "
                  f"{', '.join(backends.names())}", file=out)
            return False
    header = f"{'op':<10} {'device':<6} {'backend':<10} {'dtype':<9} {'cases':>5}  {'worst relative error':>20}  {'tolerance':>9}  result"
    print(header, file=out)
    print("-" * len(header), file=out)
    all_ok = True
    checked = set()
    for op in ops:
        make_case, run_case = makers[op]
        for device in devices:
            for dtype in device_dtypes(device):
                for name in backends.available(device, op, dtype):
                    if only and name not in only:
                        continue
                    checked.add(name)
                    rng = random.Random(seed)
                    worst, worst_case, failure = 0.0, "", None
                    for i in range(cases):
                        case = make_case(rng, dtype=dtype, device=device)
                        try:
                            errors = run_case(case, name, seed=seed * 1000 + i)
                        except Exception as exc:  # a crash is a failure, reported with its case
                            failure = f"{case.describe()}: {type(exc).__name__}: {exc}"
                            break
                        err = max(errors.values())
                        if err > worst:
                            worst, worst_case = err, f"{case.describe()} ({max(errors, key=errors.get)})"
                    ok = failure is None and worst <= TOLERANCE[dtype]
                    all_ok &= ok
                    print(f"{op:<10} {device:<6} {name:<10} {str(dtype).replace('torch.', ''):<9} {cases:>5}  "
                          f"{worst:>20.3e}  {TOLERANCE[dtype]:>9.0e}  {'ok' if ok else 'FAIL'}", file=out)
                    if not ok:
                        print(f"    worst: {failure or worst_case}", file=out)
    for name in only or ():
        if name not in checked:
            all_ok = False
            reasons = sorted({f"{op} on {device} in {str(dtype).replace('torch.', '')}: "
                              f"{backends.unavailable_reason(name, device, op, dtype)}"
                              for op in ops for device in devices for dtype in device_dtypes(device)})
            print(f"error: backend {name!r} checked nothing: it cannot run here", file=out)
            for reason in reasons:
                print(f"    {reason}", file=out)
    return all_ok


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("check", help="compare every available backend with the float64 reference")
    parser.add_argument("--cases", type=int, default=20, help="random configurations per backend and dtype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", action="append", help="only this backend (repeatable)")
    parser.add_argument("--op", choices=["rnn", "attention", "all"], default="all")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    ops = ("rnn", "attention") if args.op == "all" else (args.op,)
    ok = run_checks(cases=args.cases, seed=args.seed, only=args.backend, ops=ops)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1
