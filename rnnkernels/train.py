"""`rnnkernels train lm|seq2seq`, `rnnkernels generate`, `rnnkernels translate`.

    rnnkernels train seq2seq --data builtin:dates --steps 2000 --checkpoint runs/dates.pt
    rnnkernels translate --checkpoint runs/dates.pt "25 Nov 2026" --beam 5 --plot runs/alignment.png
    rnnkernels train lm --data builtin:python-stdlib --steps 1000 --checkpoint runs/stdlib.pt
    rnnkernels generate --checkpoint runs/stdlib.pt --prompt "def " --max-tokens 200

Under `torchrun --nproc_per_node=N -m rnnkernels train ...` training runs on N
processes with DistributedDataParallel (gloo on CPU, NCCL on CUDA), each
reading its share of every batch through a DistributedSampler; rank 0 shows
progress and writes the checkpoint. Without torchrun it runs in one process.

A checkpoint holds the model's configuration and vocabularies, its weights,
the optimiser state, the step and the RNG state; `--resume` continues from
it. It is written to a temporary file and renamed, so an interrupted save
never leaves a partial file, and read with torch.load(weights_only=True), so
opening one never runs code from it.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import backends
from .backends import BackendUnavailableError
from .data import DataError, Vocab, detokenize, load_lm, load_pairs, pad_sources, pad_targets, tokenize
from .models import BOS, EOS, PAD, RNNLanguageModel, Seq2Seq
from .models.common import CELLS

CHECKPOINT_FORMAT = "rnnkernels-checkpoint"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UserError(Exception):
    """A problem with the command line, the data or a checkpoint: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------- environment


class Runtime:
    """Device, dtype, backend and (under torchrun) the process group of this run."""

    def __init__(self, device: str, backend: str, dtype: str, allow_distributed: bool, threads: Optional[int] = None):
        if threads is not None:
            if threads < 1:
                raise UserError(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        self.world, self.rank, self.local_rank = 1, 0, 0
        self.distributed = allow_distributed and "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
        if self.distributed:
            self.world, self.rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
            self.local_rank = int(os.environ["LOCAL_RANK"])
        self.device = self._device(device)
        self.dtype = DTYPES[dtype]
        # float64 converts the model; bfloat16/float16 run it under autocast with float32 weights.
        self.autocast_dtype = self.dtype if self.dtype in (torch.bfloat16, torch.float16) else None
        self.param_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.backend = backend
        if backend != "auto":
            for op in ("rnn", "attention"):
                reason = backends.unavailable_reason(backend, self.device, op, self.param_dtype)
                if reason is not None:
                    raise UserError(f"--backend {backend}: {reason}")
        if self.distributed:
            if self.device.type == "cpu" and threads is None:  # share the cores between the local processes
                local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def _device(self, name: str) -> torch.device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {name!r} is not a device (expected cpu, cuda or cuda:N)") from None
        if device.type not in ("cpu", "cuda"):
            raise UserError(f"--device {name!r}: only cpu and cuda are supported")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--device {name}: no CUDA device is available (this torch: {torch.__version__})")
            if self.distributed:
                device = torch.device("cuda", self.local_rank)
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
            torch.cuda.set_device(device)
        return device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def use_backend(self):
        return backends.use_backend(self.backend)

    def close(self):
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str, payload: dict) -> None:
    """Atomic: a temporary file in the same folder, then a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, kind: Optional[str] = None) -> dict:
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable or unsafe file is a user error here
        raise UserError(f"{path} is not a readable rnnkernels checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an rnnkernels checkpoint")
    if kind is not None and payload.get("kind") != kind:
        raise UserError(f"checkpoint {path} holds a {payload.get('kind')} model, not a {kind} model")
    return payload


def build_model(kind: str, config: dict) -> nn.Module:
    try:
        if kind == "lm":
            return RNNLanguageModel(**config)
        return Seq2Seq(**config)
    except (TypeError, ValueError) as error:
        raise UserError(f"bad model configuration: {error}") from None


def model_from_checkpoint(payload: dict, runtime: Runtime) -> nn.Module:
    model = build_model(payload["kind"], payload["config"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise UserError(f"checkpoint weights do not fit its configuration: {str(error).splitlines()[0]}") from None
    return model.to(runtime.device, runtime.param_dtype).eval()


# ----------------------------------------------------------------------------- tasks


class LMTask:
    """Next-token prediction on windows of bptt + 1 tokens of the training stream, each read from a zero state."""

    kind = "lm"

    def __init__(self, args):
        self.data = load_lm(args.data, max_chars=args.max_chars)
        self.bptt = args.bptt
        self.windows = (self.data.train.numel() - 1) // self.bptt
        if self.windows < 1:
            raise UserError(f"--data {args.data}: the training split has fewer than --bptt {args.bptt} + 1 tokens")
        self.eval_tokens = args.eval_tokens
        self.config = dict(vocab_size=len(self.data.vocab), embed_size=args.embed, hidden_size=args.hidden,
                           num_layers=args.layers, cell=args.cell, dropout=args.dropout, tie_weights=args.tie)
        self.vocabs = {"vocab": self.data.vocab.itos}
        self.level = self.data.level

    def __len__(self) -> int:
        return self.windows

    def batch(self, indices: List[int], device):
        starts = torch.tensor(indices) * self.bptt
        window = self.data.train[starts[:, None] + torch.arange(self.bptt + 1)].to(device)  # (B, bptt + 1)
        return window[:, :-1], window[:, 1:]

    def loss(self, model, batch):
        inputs, targets = batch
        logits, _ = model(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1)), targets.numel()

    def evaluate(self, model, runtime: Runtime, split: str = "valid") -> Dict[str, float]:
        stream = getattr(self.data, split)[: self.eval_tokens]
        with runtime.autocast():
            return {f"{split}_ppl": model.perplexity(stream, batch_size=16, bptt=self.bptt)}


class Seq2SeqTask:
    """Translation pairs; loss per target token (PAD ignored); exact match by greedy decoding."""

    kind = "seq2seq"

    def __init__(self, args):
        self.data = load_pairs(args.data, seed=args.data_seed, level=args.level, train_size=args.train_size)
        if not self.data.train:
            raise UserError(f"--data {args.data}: no training pairs")
        self.eval_size = args.eval_size
        self.forcing = args.teacher_forcing
        if not 0.0 <= self.forcing <= 1.0:
            raise UserError(f"--teacher-forcing must lie in [0, 1], got {self.forcing}")
        self.max_len = max(len(t) for _, t in self.data.train) + 5
        self.config = dict(src_vocab_size=len(self.data.src_vocab), tgt_vocab_size=len(self.data.tgt_vocab),
                           embed_size=args.embed, hidden_size=args.hidden, num_layers=args.layers, cell=args.cell,
                           attention=None if args.attention == "none" else args.attention, dropout=args.dropout)
        self.vocabs = {"src_vocab": self.data.src_vocab.itos, "tgt_vocab": self.data.tgt_vocab.itos}
        self.level = self.data.level

    def __len__(self) -> int:
        return len(self.data.train)

    def batch(self, indices: List[int], device):
        pairs = [self.data.train[i] for i in indices]
        src, src_lengths = pad_sources([s for s, _ in pairs])
        tgt_in, tgt_out = pad_targets([t for _, t in pairs])
        return src.to(device), src_lengths, tgt_in.to(device), tgt_out.to(device)

    def loss(self, model, batch):
        src, src_lengths, tgt_in, tgt_out = batch
        # scheduled sampling draws from the global RNG, which checkpoints save, so a resumed run repeats them
        logits = model(src, src_lengths, tgt_in, teacher_forcing_ratio=self.forcing)
        tokens = int((tgt_out != PAD).sum())
        return F.cross_entropy(logits.float().flatten(0, 1), tgt_out.reshape(-1), ignore_index=PAD), tokens

    def evaluate(self, model, runtime: Runtime, split: str = "valid", batch_size: int = 500) -> Dict[str, float]:
        pairs = getattr(self.data, split)[: self.eval_size]
        exact = 0
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            src, src_lengths = pad_sources([s for s, _ in chunk])
            with runtime.autocast():
                hyp = model.greedy_decode(src.to(runtime.device), src_lengths, max_len=self.max_len)
            for (_, target), tokens in zip(chunk, hyp.tokens.tolist()):
                exact += self.data.tgt_vocab.decode(tokens) == self.data.tgt_vocab.decode(target)
        return {f"{split}_exact_match": exact / max(1, len(pairs))}


# ----------------------------------------------------------------------------- training loop


def _broadcast_flag(flag: bool, runtime: Runtime) -> bool:
    """Rank 0's decision (e.g. the time limit) for every rank."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _replica_max_difference(model: nn.Module, runtime: Runtime) -> float:
    """Largest |difference| between any replica's parameters and rank 0's (0 in one process)."""
    if not runtime.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(runtime.world)]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def train(args, task) -> Dict[str, float]:
    runtime = Runtime(args.device, args.backend, args.dtype, allow_distributed=True, threads=args.threads)
    try:
        metrics = _train(args, task, runtime)
        if runtime.distributed:  # every rank done (rank 0 evaluates and saves last) before any tears down
            dist.barrier()
        return metrics
    finally:
        runtime.close()


def _train(args, task, runtime: Runtime) -> Dict[str, float]:
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    config, start_step, payload = task.config, 0, None
    if args.resume and os.path.exists(args.checkpoint):
        payload = load_checkpoint(args.checkpoint, task.kind)
        if payload.get("vocabs") != task.vocabs:
            raise UserError(f"checkpoint {args.checkpoint} was trained with another vocabulary than --data {args.data}")
        differing = sorted(k for k in set(config) | set(payload["config"]) if config.get(k) != payload["config"].get(k))
        if differing:
            raise UserError(f"checkpoint {args.checkpoint} has another model configuration ({', '.join(differing)} "
                            f"differ from the arguments); change them back or train to another --checkpoint")
        start_step = int(payload["step"])
    model = build_model(task.kind, config).to(runtime.device, runtime.param_dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"])
    trained = model
    if runtime.distributed:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16
                                  and runtime.device.type == "cuda")

    sampler = torch.utils.data.DistributedSampler(range(len(task)), num_replicas=runtime.world, rank=runtime.rank,
                                                  shuffle=True, seed=args.seed, drop_last=True)
    per_rank_batch = args.batch_size // runtime.world
    if per_rank_batch < 1 or args.batch_size % runtime.world:
        raise UserError(f"--batch-size {args.batch_size} must be a multiple of the {runtime.world} processes")
    steps_per_epoch = len(sampler) // per_rank_batch
    if steps_per_epoch < 1:
        raise UserError(f"--batch-size {args.batch_size} is larger than the training set ({len(task)} examples)")

    metrics: Dict[str, float] = {}

    def checkpoint(step: int):
        if runtime.main:
            save_checkpoint(args.checkpoint, {
                "format": CHECKPOINT_FORMAT, "kind": task.kind, "config": config, "vocabs": task.vocabs,
                "level": task.level, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "rng": torch.get_rng_state(), "metrics": dict(metrics)})

    def evaluate(step: int, bar):
        model.eval()
        with torch.no_grad(), runtime.use_backend():
            metrics.update(task.evaluate(model, runtime))
        model.train()
        say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def say(line: str):
        bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    model.train()
    bar = tqdm(total=args.steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=args.no_progress or not runtime.main, file=sys.stderr)
    started, tokens_seen, running, step = time.perf_counter(), 0, None, start_step
    cpu_started = time.process_time()  # CPU seconds of this process: a figure less sensitive to machine load
    epoch_order: List[int] = []
    while step < args.steps:
        epoch, offset = divmod(step, steps_per_epoch)
        if offset == 0 or not epoch_order:
            sampler.set_epoch(epoch)
            epoch_order = list(sampler)
        indices = epoch_order[offset * per_rank_batch:(offset + 1) * per_rank_batch]
        batch = task.batch(indices, runtime.device)
        with runtime.use_backend(), runtime.autocast():
            loss, tokens = task.loss(trained, batch)
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {step}; try a smaller --lr")
        optimizer.zero_grad(set_to_none=True)
        with runtime.use_backend():
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        tokens_seen += tokens * runtime.world
        loss_value = loss.detach().float()
        if runtime.distributed:  # the loss of the whole global batch, as one process would see it
            dist.all_reduce(loss_value)
            loss_value /= runtime.world
        running = loss_value.item() if running is None else 0.95 * running + 0.05 * loss_value.item()
        elapsed = time.perf_counter() - started
        metrics.update(train_loss=running, last_loss=loss_value.item(), tokens_per_s=tokens_seen / elapsed, train_s=elapsed,
                       train_cpu_s=time.process_time() - cpu_started, step=step)
        bar.set_postfix(loss=f"{running:.4f}", tok_s=f"{tokens_seen / elapsed:,.0f}")
        bar.update(1)
        out_of_time = _broadcast_flag(args.time_limit is not None and elapsed >= args.time_limit, runtime)
        if step == args.steps or out_of_time or (args.eval_every and step % args.eval_every == 0):
            paused, cpu_paused = time.perf_counter(), time.process_time()
            if runtime.main:
                evaluate(step, bar)
            checkpoint(step)
            started += time.perf_counter() - paused  # train_s and --time-limit count training time only
            cpu_started += time.process_time() - cpu_paused
        if out_of_time:
            say(f"time limit of {args.time_limit:g} s reached at step {step}")
            break
    bar.close()
    metrics["replica_max_abs_diff"] = _replica_max_difference(model, runtime)
    if runtime.main:
        if step == start_step:
            evaluate(step, bar)
        model.eval()
        with torch.no_grad(), runtime.use_backend():
            metrics.update(task.evaluate(model, runtime, "test"))
        checkpoint(step)
        print("result: " + ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()), flush=True)
        if args.metrics_json:
            with open(args.metrics_json, "w") as f:
                json.dump(metrics, f, indent=1)
    return metrics


# ----------------------------------------------------------------------------- inference commands


def generate(args) -> int:
    runtime = Runtime(args.device, args.backend, "float32", allow_distributed=False, threads=args.threads)
    payload = load_checkpoint(args.checkpoint, "lm")
    model = model_from_checkpoint(payload, runtime)
    vocab, level = Vocab(payload["vocabs"]["vocab"]), payload["level"]
    prompt = tokenize(args.prompt, level)
    if not prompt:
        raise UserError("--prompt must not be empty")
    unknown = sorted({t for t in prompt if t not in vocab.stoi})
    if unknown:
        print(f"note: the prompt has tokens the model never saw ({' '.join(map(repr, unknown))}); they read as <unk>",
              file=sys.stderr)
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1):
        raise UserError("--temperature must be >= 0 and --top-k >= 1")
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad(), runtime.use_backend():
        ids = model.generate(vocab.encode(prompt), args.max_tokens, args.temperature, args.top_k, generator,
                             exclude=(PAD, BOS) if level == "word" else (PAD, BOS, EOS))  # no <eos> in char streams
    if level == "word":  # <eos> ends a line in word-level corpora
        print(args.prompt + " " + " ".join(vocab.itos[i] for i in ids).replace(" <eos> ", "\n").replace("<eos>", "\n"))
    else:
        print(args.prompt + detokenize([vocab.itos[i] for i in ids], level))
    return 0


def plot_alignment(source: List[str], output: List[str], weights: torch.Tensor, path: str, title: str) -> None:
    """Heatmap of weights (len(output), len(source)) with the tokens on the axes; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = lambda t: {" ": "␣", "\t": "⇥"}.get(t, t)  # noqa: E731  spaces stay visible as tick labels
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * len(source) + 2.0), max(3.0, 0.32 * len(output) + 1.8)))
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), [show(t) for t in source], fontsize=9)
    ax.set_yticks(range(len(output)), [show(t) for t in output], fontsize=9)
    ax.set_xlabel("source token")
    ax.set_ylabel("output token")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="attention weight")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def translate(args) -> int:
    runtime = Runtime(args.device, args.backend, "float32", allow_distributed=False, threads=args.threads)
    payload = load_checkpoint(args.checkpoint, "seq2seq")
    model = model_from_checkpoint(payload, runtime)
    src_vocab, tgt_vocab = Vocab(payload["vocabs"]["src_vocab"]), Vocab(payload["vocabs"]["tgt_vocab"])
    level = payload["level"]
    inputs = args.inputs or [line.rstrip("\n") for line in sys.stdin]
    inputs = [s for s in inputs if s.strip()]
    if not inputs:
        raise UserError("nothing to translate: give inputs as arguments or on stdin")
    if args.beam < 1:
        raise UserError(f"--beam must be >= 1, got {args.beam}")
    if args.plot and model.decoder.attention is None:
        raise UserError("--plot needs a model with attention (this one was trained with --attention none)")
    sources = [tokenize(s, level) for s in inputs]
    src, src_lengths = pad_sources([src_vocab.encode(t) for t in sources])
    with torch.no_grad(), runtime.use_backend():
        hyp = model.beam_search(src.to(runtime.device), src_lengths, beam_size=args.beam, max_len=args.max_len,
                                length_penalty=args.length_penalty)
    for i, text in enumerate(inputs):
        output = detokenize(tgt_vocab.decode(hyp.tokens[i].tolist()), level)
        print(f"{text}  ->  {output}    (log p {hyp.log_probs[i].item():.4f}, p {math.exp(hyp.log_probs[i].item()):.4f}, "
              f"score {hyp.scores[i].item():.4f})")
    if args.plot:
        length = int(hyp.lengths[0])
        out_tokens = tgt_vocab.decode(hyp.tokens[0].tolist()) + ["<eos>"]
        weights = hyp.alignments[0, :length, : len(sources[0])].cpu()
        plot_alignment(sources[0], out_tokens[:length], weights, args.plot, f"{inputs[0]!r} -> "
                       f"{detokenize(out_tokens[:-1], level)!r}")
        print(f"alignment of the first input written to {args.plot}")
    return 0


# ----------------------------------------------------------------------------- command line


def _user_errors(fn):
    """User errors print one line and exit 2; everything else is a bug and keeps its traceback."""

    def run(args) -> int:
        try:
            return int(fn(args) or 0)
        except (UserError, DataError, BackendUnavailableError) as error:
            print(f"rnnkernels {args.command}: error: {error}", file=sys.stderr)
            return 2

    return run


def _train_lm(args) -> int:
    train(args, LMTask(args))
    return 0


def _train_seq2seq(args) -> int:
    train(args, Seq2SeqTask(args))
    return 0


def _runtime_args(parser, dtype: bool = True) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)")
    parser.add_argument("--backend", default="auto", help="rnnkernels backend for the layers and attention")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                            help="float32/float64 weights, or bfloat16/float16 autocast over float32 weights")


def _training_args(parser, default_data: str, checkpoint: str, hidden: int, layers: int, batch: int, lr: float):
    parser.add_argument("--data", default=default_data, help=f"data set (default {default_data})")
    parser.add_argument("--checkpoint", default=checkpoint, help=f"where to save (default {checkpoint})")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    parser.add_argument("--steps", type=int, default=2000, help="total optimiser steps (default 2000)")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds of training")
    parser.add_argument("--batch-size", type=int, default=batch, help=f"global batch size (default {batch})")
    parser.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr})")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping (default 1.0)")
    parser.add_argument("--cell", default="lstm", choices=sorted(CELLS))
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--embed", type=int, default=64 if hidden <= 128 else 128)
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=500, help="validate and save every N steps (0: at the end)")
    parser.add_argument("--metrics-json", default=None, help="also write the final metrics to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _runtime_args(parser)


def add_parser(subparsers) -> None:
    train_parser = subparsers.add_parser("train", help="train a language model or an encoder-decoder")
    tasks = train_parser.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True

    lm = tasks.add_parser("lm", help="recurrent language model",
                          description="data: builtin:python-stdlib, a folder with train/valid/test.txt, or a text file")
    _training_args(lm, "builtin:python-stdlib", "runs/lm.pt", hidden=256, layers=2, batch=32, lr=2e-3)
    lm.add_argument("--bptt", type=int, default=128, help="tokens per training window (default 128)")
    lm.add_argument("--tie", action="store_true", help="tie the output layer to the embedding (needs --embed == --hidden)")
    lm.add_argument("--eval-tokens", type=int, default=100_000, help="validation tokens per evaluation")
    lm.add_argument("--max-chars", type=int, default=None, help="cut each builtin:python-stdlib split to this size")
    lm.set_defaults(func=_user_errors(_train_lm))

    s2s = tasks.add_parser("seq2seq", help="encoder-decoder with attention",
                           description="data: builtin:dates, or a TSV file of source<TAB>target lines")
    _training_args(s2s, "builtin:dates", "runs/seq2seq.pt", hidden=128, layers=1, batch=64, lr=3e-3)
    s2s.add_argument("--attention", default="general", choices=["general", "dot", "none"])
    s2s.add_argument("--teacher-forcing", type=float, default=1.0,
                     help="probability of feeding the true previous token (default 1.0: all steps at once)")
    s2s.add_argument("--level", default="char", choices=["char", "word"], help="TSV tokenisation (default char)")
    s2s.add_argument("--train-size", type=int, default=50_000, help="builtin:dates training pairs (default 50000)")
    s2s.add_argument("--eval-size", type=int, default=None, help="evaluate on the first N valid and test pairs (default all)")
    s2s.add_argument("--data-seed", type=int, default=0, help="seed of builtin:dates and of the TSV split")
    s2s.set_defaults(func=_user_errors(_train_seq2seq))

    gen = subparsers.add_parser("generate", help="sample text from a trained language model")
    gen.add_argument("--checkpoint", required=True)
    gen.add_argument("--prompt", default="\n")
    gen.add_argument("--max-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=0)
    _runtime_args(gen, dtype=False)
    gen.set_defaults(func=_user_errors(generate))

    tr = subparsers.add_parser("translate", help="translate with a trained encoder-decoder (beam search)")
    tr.add_argument("inputs", nargs="*", help="sources to translate (default: lines of stdin)")
    tr.add_argument("--checkpoint", required=True)
    tr.add_argument("--beam", type=int, default=5, help="beam size (1: greedy)")
    tr.add_argument("--length-penalty", type=float, default=1.0, help="scores are log p / length ** this")
    tr.add_argument("--max-len", type=int, default=100)
    tr.add_argument("--plot", default=None, help="write the first input's attention alignment heatmap to this PNG")
    _runtime_args(tr, dtype=False)
    tr.set_defaults(func=_user_errors(translate))
