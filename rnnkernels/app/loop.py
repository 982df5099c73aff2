"""The training loop of `rnnkernels train` (one process, or one of N under torchrun).

Under torchrun every process reads its share of each global batch through a
DistributedSampler, DistributedDataParallel averages the gradients, and one
all-reduce per step carries the token-weighted loss, the accuracy counts and
the stop flags (time limit, Ctrl-C/SIGTERM on any rank); rank 0 evaluates,
logs and writes the checkpoints.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM finishes the current step,
saves the checkpoint and exits with 128 + the signal number; a second SIGINT
interrupts at once (the last checkpoint stays intact, saves being atomic).
"""
import json
import math
import signal
import sys
import threading
import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from .checkpoints import build_model, save_checkpoint, training_payload
from .errors import UserError
from .files import write_text
from .metrics import HIGHER_IS_BETTER, bleu_implementation
from .plotting import plot_loss
from .reporting import Console, MetricsLog, TensorBoard, format_metrics
from .runtime import Runtime
from .schedules import LRSchedule, teacher_forcing_ratio


class StopSignals:
    """Records the first SIGINT / SIGTERM instead of dying; a second SIGINT raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: Optional[signal.Signals] = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        print(f"{self.received.name}: stopping after this step and saving (Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def make_optimizer(options: Dict, model: nn.Module) -> torch.optim.Optimizer:
    name, lr, decay = options["optimizer"], options["lr"], options["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=options["momentum"], weight_decay=decay)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)


def _apply_hyperparameters(optimizer: torch.optim.Optimizer, options: Dict) -> None:
    """The command line's weight decay and momentum over the ones a loaded optimizer state brought."""
    for group in optimizer.param_groups:
        group["weight_decay"] = options["weight_decay"]
        if "momentum" in group:
            group["momentum"] = options["momentum"]


def _replica_max_difference(model: nn.Module, runtime: Runtime) -> float:
    """Largest |difference| between any replica's parameters and rank 0's (0 in one process)."""
    if not runtime.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(runtime.world)]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def output_paths(options: Dict) -> Dict[str, Optional[str]]:
    """Where a run writes: the checkpoint, the best checkpoint and the metrics file beside it."""
    checkpoint = options["checkpoint"]
    stem = checkpoint[:-3] if checkpoint.endswith(".pt") else checkpoint
    metrics = options["metrics_file"]
    return {"checkpoint": checkpoint, "best": stem + ".best.pt",
            "metrics": None if metrics == "none" else stem + ".metrics.jsonl" if metrics == "auto" else metrics}


def _describe_model(kind: str, config: Dict, parameters: int) -> str:
    layers = f"{config['num_layers']} layer{'s' if config['num_layers'] > 1 else ''}"
    extra = f", attention {config['attention'] or 'none'}" if kind == "seq2seq" else (
        ", tied embedding" if config.get("tie_weights") else "")
    return (f"{kind} {config['cell']}, {layers}, embed {config['embed_size']}, hidden {config['hidden_size']}"
            f"{extra}, dropout {config['dropout']:g} | {parameters:,} parameters")


def train(options: Dict, task, runtime: Runtime, payload: Optional[dict] = None, notes: List[str] = ()) -> int:
    """Trains `task` as `options` say, from scratch or from `payload` (a checked checkpoint); exit code."""
    paths = output_paths(options)
    torch.manual_seed(options["seed"])
    model = build_model(task.kind, task.config).to(runtime.device, runtime.param_dtype)
    optimizer = make_optimizer(options, model)
    schedule = LRSchedule(options["lr_schedule"], options["lr"], options["steps"], options["warmup_steps"],
                          options["lr_step_size"], options["lr_gamma"], options["lr_patience"], options["min_lr"])
    best_metric = options["best_metric"]
    start_step, best = 0, None
    if payload is not None:
        model.load_state_dict(payload["model"])
        try:
            optimizer.load_state_dict(payload["optimizer"])
            torch.set_rng_state(payload["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            raise UserError(f"checkpoint {paths['checkpoint']}: its optimizer or RNG state does not fit "
                            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        _apply_hyperparameters(optimizer, options)
        schedule.load_state_dict(payload.get("lr_schedule"))
        start_step = payload["step"]
        saved_best = payload.get("best")
        if isinstance(saved_best, dict) and saved_best.get("metric") == f"valid_{best_metric}":
            best = saved_best
    trained = model
    if runtime.distributed:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16
                                  and runtime.device.type == "cuda")

    sampler = torch.utils.data.DistributedSampler(range(len(task)), num_replicas=runtime.world, rank=runtime.rank,
                                                  shuffle=True, seed=options["seed"], drop_last=True)
    per_rank_batch = options["batch_size"] // runtime.world
    if per_rank_batch < 1 or options["batch_size"] % runtime.world:
        raise UserError(f"--batch-size {options['batch_size']} must be a multiple of the {runtime.world} processes")
    steps_per_epoch = len(sampler) // per_rank_batch
    if steps_per_epoch < 1:
        raise UserError(f"--batch-size {options['batch_size']} is larger than the training set "
                        f"({len(task)} examples)")

    main = runtime.main
    log = MetricsLog(paths["metrics"] if main else None, resume_step=start_step if payload is not None else None)
    board = TensorBoard(options["tensorboard"]) if main and options.get("tensorboard") else None
    console = Console(options["steps"], start_step, bar=main and not options["no_progress"])
    is_seq2seq = task.kind == "seq2seq"

    def forcing(step: int) -> float:
        if not is_seq2seq:
            return 1.0
        return teacher_forcing_ratio(options["forcing_schedule"], options["teacher_forcing"], options["forcing_min"],
                                     options["forcing_decay_steps"] or options["steps"], step)

    def say(line: str) -> None:
        if main:
            console.say(line)

    def record(entry: Dict) -> None:
        if main:
            log.add(entry)
            if board is not None:
                board.add(entry)

    if main:
        parameters = sum(p.numel() for p in model.parameters())
        say(f"rnnkernels train {task.kind} | {runtime.describe()}")
        say(f"data {options['data']}: {task.describe()}")
        say(f"model {_describe_model(task.kind, task.config, parameters)}")
        momentum = f", momentum {options['momentum']:g}" if options["optimizer"] == "sgd" else ""
        clip = f"clip {options['clip']:g}" if options["clip"] > 0 else "no clipping"
        line = (f"training {options['steps']} steps, batch {options['batch_size']}, {options['optimizer']} lr "
                f"{options['lr']:g}{momentum}, weight decay {options['weight_decay']:g}, lr schedule "
                f"{schedule.describe()}, {clip}, seed {options['seed']}")
        if is_seq2seq:
            line += f" | teacher forcing {options['teacher_forcing']:g} ({options['forcing_schedule']}"
            line += f" to {options['forcing_min']:g})" if options["forcing_schedule"] != "constant" else ")"
            if task.data.tgt_level == "word":
                line += f" | BLEU: {bleu_implementation()}"
        say(line)
        say(f"writing {paths['checkpoint']} (last), {paths['best']} (best valid {best_metric})"
            + (f", metrics {paths['metrics']}" if paths["metrics"] else ""))
        if payload is not None:
            say(f"resumed from step {start_step} of {paths['checkpoint']}" + (f" ({'; '.join(notes)})" if notes else ""))
        for note in notes if payload is None else ():
            say(note)
        if start_step >= options["steps"]:
            say(f"the checkpoint is at step {start_step}, --steps is {options['steps']}: nothing to train")

    metrics: Dict[str, float] = {}

    def payload_now(step: int) -> dict:
        return training_payload(kind=task.kind, config=task.config, vocabs=task.vocabs, levels=task.levels,
                                model=model, optimizer=optimizer, lr_schedule=schedule.state_dict(), step=step,
                                best=best, metrics=metrics, options=options)

    def save(path_key: str, step: int) -> None:
        if not main:
            return
        try:
            save_checkpoint(paths[path_key], payload_now(step))
        except OSError as error:
            raise UserError(f"could not write the checkpoint {paths[path_key]} "
                            f"({error.strerror or error}); the previous one is unchanged") from None

    def plot() -> None:
        if main and options.get("plot_loss"):
            plot_loss(log.records, options["plot_loss"], f"{task.kind} {options['data']}")

    def evaluate(step: int, split: str = "valid") -> Dict[str, float]:
        nonlocal best
        model.eval()
        with torch.no_grad(), runtime.use_backend():
            values = task.evaluate(model, runtime, split)
        model.train()
        metrics.update({f"{split}_{k}": v for k, v in values.items()})
        record({"step": step, "split": split, **values})
        marker = ""
        if split == "valid":
            value = values.get(best_metric, math.nan)
            higher = best_metric in HIGHER_IS_BETTER
            if math.isfinite(value) and (best is None or (value > best["value"] if higher else value < best["value"])):
                best = {"metric": f"valid_{best_metric}", "value": value, "step": step}
                marker = "  (best)"
                save("best", step)
            if schedule.observe(value, higher):
                say(f"step {step}: valid {best_metric} has not improved for {options['lr_patience']} evaluations; "
                    f"lr now {schedule.lr(step):g}")
        say(f"step {step} {split}: {format_metrics(values)}{marker}")
        return values

    model.train()
    started, tokens_seen, step = time.perf_counter(), 0, start_step
    cpu_started = time.process_time()  # CPU seconds of this process: a figure less sensitive to machine load
    interval = {"loss_sum": 0.0, "tokens": 0, "correct": 0, "started": started, "tokens_seen": 0}
    epoch_order: List[int] = []
    stopped_by: Optional[signal.Signals] = None
    with StopSignals() as signals:
        while step < options["steps"]:
            epoch, offset = divmod(step, steps_per_epoch)
            if offset == 0 or not epoch_order:
                sampler.set_epoch(epoch)
                epoch_order = list(sampler)
            indices = epoch_order[offset * per_rank_batch:(offset + 1) * per_rank_batch]
            batch = task.batch(indices, runtime.device)
            lr, ratio = schedule.lr(step), forcing(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with runtime.use_backend(), runtime.autocast():
                loss, stats = task.loss(trained, batch, ratio)
            if not torch.isfinite(loss):
                raise UserError(f"the loss became {loss.item()} at step {step}; try a smaller --lr")
            optimizer.zero_grad(set_to_none=True)
            objective = loss
            if runtime.distributed:
                # DDP averages the ranks' gradients; weighting each rank's mean by its share of the global
                # batch's tokens makes that average the gradient of the global per-token mean, as in one process
                tokens = torch.tensor([float(stats.tokens)], dtype=torch.float64, device=runtime.device)
                dist.all_reduce(tokens)
                objective = loss * (runtime.world * stats.tokens / tokens.item())
            with runtime.use_backend():
                scaler.scale(objective).backward()
            scaler.unscale_(optimizer)
            if options["clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), options["clip"])
            scaler.step(optimizer)
            scaler.update()
            step += 1
            elapsed = time.perf_counter() - started
            # one collective per step: the global batch's token-weighted loss, its accuracy, the stop flags
            shared = torch.tensor([loss.detach().double().item() * stats.tokens, stats.tokens, stats.correct,
                                   float(options["time_limit"] is not None and elapsed >= options["time_limit"]),
                                   float(signals.received is not None)], dtype=torch.float64, device=runtime.device)
            if runtime.distributed:
                dist.all_reduce(shared)
            loss_sum, tokens, correct, out_of_time, stop = shared.tolist()
            step_loss = loss_sum / tokens
            tokens_seen += tokens
            interval["loss_sum"] += loss_sum
            interval["tokens"] += tokens
            interval["correct"] += correct
            metrics.update(last_loss=step_loss, tokens_per_s=tokens_seen / elapsed, train_s=elapsed,
                           train_cpu_s=time.process_time() - cpu_started, step=step)
            console.advance(loss=f"{step_loss:.4f}", lr=f"{lr:.3g}")
            log_now = options["log_every"] and (step % options["log_every"] == 0 or step == options["steps"])
            if log_now or stop or out_of_time:
                now = time.perf_counter()
                mean = interval["loss_sum"] / max(1, interval["tokens"])
                values = {"loss": mean, "ppl": math.exp(min(mean, 700.0)),
                          "accuracy": interval["correct"] / max(1, interval["tokens"]), "lr": lr,
                          "tokens_per_s": interval["tokens"] / max(1e-9, now - interval["started"])}
                if is_seq2seq:
                    values["forcing"] = ratio
                values["elapsed_s"] = elapsed
                metrics["train_loss"] = mean
                record({"step": step, "split": "train", **values})
                if log_now:
                    say(f"step {step}/{options['steps']}  {format_metrics(values)}")
                interval.update(loss_sum=0.0, tokens=0, correct=0, started=now)
            if stop:
                stopped_by = signals.received or signal.SIGINT  # another rank's signal
                break
            if step == options["steps"] or out_of_time or (options["eval_every"] and step % options["eval_every"] == 0):
                paused, cpu_paused = time.perf_counter(), time.process_time()
                if main:
                    evaluate(step)
                    plot()
                save("checkpoint", step)
                started += time.perf_counter() - paused  # train_s and --time-limit count training time only
                cpu_started += time.process_time() - cpu_paused
                interval["started"] += time.perf_counter() - paused
            if out_of_time:
                say(f"time limit of {options['time_limit']:g} s reached at step {step}")
                break
    console.close()
    if stopped_by is not None:
        save("checkpoint", step)
        plot()
        say(f"interrupted by {stopped_by.name} at step {step}: {paths['checkpoint']} saved; "
            f"continue with --resume")
        if board is not None:
            board.close()
        return 128 + int(stopped_by)
    metrics["replica_max_abs_diff"] = _replica_max_difference(model, runtime)
    if main:
        if step == start_step:
            evaluate(step)
        evaluate(step, "test")
        save("checkpoint", step)
        plot()
        if best is not None:
            metrics["best_step"], metrics[best["metric"] + "_best"] = best["step"], best["value"]
        say("result: " + ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
        if options.get("metrics_json"):
            write_text(options["metrics_json"], json.dumps(metrics, indent=1))
        if board is not None:
            board.close()
    return 0
