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


class Trainer:
    """One training run: the model, optimiser and schedules built (or restored from a checkpoint's
    payload), then `run` steps, logs, validates and saves until --steps, the time limit or a signal."""

    def __init__(self, options: Dict, task, runtime: Runtime, payload: Optional[dict] = None):
        self.options, self.task, self.runtime, self.main = options, task, runtime, runtime.main
        self.paths = output_paths(options)
        torch.manual_seed(options["seed"])
        self.model = build_model(task.kind, task.config).to(runtime.device, runtime.param_dtype)
        self.optimizer = make_optimizer(options, self.model)
        self.schedule = LRSchedule(options["lr_schedule"], options["lr"], options["steps"], options["warmup_steps"],
                                   options["lr_step_size"], options["lr_gamma"], options["lr_patience"],
                                   options["min_lr"])
        self.best_metric = options["best_metric"]
        self.start_step, self.best = 0, None
        if payload is not None:
            self._restore(payload)
        self.trained = self.model
        if runtime.distributed:
            self.trained = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16
                                           and runtime.device.type == "cuda")
        self.sampler = torch.utils.data.DistributedSampler(range(len(task)), num_replicas=runtime.world,
                                                           rank=runtime.rank, shuffle=True, seed=options["seed"],
                                                           drop_last=True)
        self.per_rank_batch = options["batch_size"] // runtime.world
        if self.per_rank_batch < 1 or options["batch_size"] % runtime.world:
            raise UserError(f"--batch-size {options['batch_size']} must be a multiple of the {runtime.world} "
                            f"processes")
        self.steps_per_epoch = len(self.sampler) // self.per_rank_batch
        if self.steps_per_epoch < 1:
            raise UserError(f"--batch-size {options['batch_size']} is larger than the training set "
                            f"({len(task)} examples)")
        self.log = MetricsLog(self.paths["metrics"] if self.main else None,
                              resume_step=self.start_step if payload is not None else None)
        self.board = TensorBoard(options["tensorboard"]) if self.main and options.get("tensorboard") else None
        self.metrics: Dict[str, float] = {}

    def _restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            torch.set_rng_state(payload["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"checkpoint {self.paths['checkpoint']}: its optimizer or RNG state does not fit "
                            f"({detail})") from None
        _apply_hyperparameters(self.optimizer, self.options)
        self.schedule.load_state_dict(payload.get("lr_schedule"))
        self.start_step = payload["step"]
        saved_best = payload.get("best")
        if isinstance(saved_best, dict) and saved_best.get("metric") == f"valid_{self.best_metric}":
            self.best = saved_best

    # ------------------------------------------------------------------------- output

    def say(self, line: str) -> None:
        if self.main:
            self.console.say(line)

    def record(self, entry: Dict) -> None:
        if self.main:
            self.log.add(entry)
            if self.board is not None:
                self.board.add(entry)

    def summary(self, resumed: bool, notes: List[str]) -> None:
        options, task, paths = self.options, self.task, self.paths
        parameters = sum(p.numel() for p in self.model.parameters())
        self.say(f"rnnkernels train {task.kind} | {self.runtime.describe()}")
        self.say(f"data {options['data']}: {task.describe()}")
        self.say(f"model {_describe_model(task.kind, task.config, parameters)}")
        momentum = f", momentum {options['momentum']:g}" if options["optimizer"] == "sgd" else ""
        clip = f"clip {options['clip']:g}" if options["clip"] > 0 else "no clipping"
        line = (f"training {options['steps']} steps, batch {options['batch_size']}, {options['optimizer']} lr "
                f"{options['lr']:g}{momentum}, weight decay {options['weight_decay']:g}, lr schedule "
                f"{self.schedule.describe()}, {clip}, seed {options['seed']}")
        if task.kind == "seq2seq":
            line += f" | teacher forcing {options['teacher_forcing']:g} ({options['forcing_schedule']}"
            line += f" to {options['forcing_min']:g})" if options["forcing_schedule"] != "constant" else ")"
            if task.levels["tgt_level"] == "word":
                line += f" | BLEU: {bleu_implementation()}"
        self.say(line)
        self.say(f"writing {paths['checkpoint']} (last), {paths['best']} (best valid {self.best_metric})"
                 + (f", metrics {paths['metrics']}" if paths["metrics"] else ""))
        if resumed:
            self.say(f"resumed from step {self.start_step} of {paths['checkpoint']}"
                     + (f" ({'; '.join(notes)})" if notes else ""))
        else:
            for note in notes:
                self.say(note)
        if self.start_step >= options["steps"]:
            self.say(f"the checkpoint is at step {self.start_step}, --steps is {options['steps']}: nothing to train")

    def save(self, which: str, step: int) -> None:
        """Rank 0 writes the "checkpoint" (last) or the "best" one; a failed write is a UserError."""
        if not self.main:
            return
        payload = training_payload(kind=self.task.kind, config=self.task.config, vocabs=self.task.vocabs,
                                   levels=self.task.levels, model=self.model, optimizer=self.optimizer,
                                   lr_schedule=self.schedule.state_dict(), step=step, best=self.best,
                                   metrics=self.metrics, options=self.options)
        try:
            save_checkpoint(self.paths[which], payload)
        except OSError as error:
            raise UserError(f"could not write the checkpoint {self.paths[which]} "
                            f"({error.strerror or error}); the previous one is unchanged") from None

    def plot(self) -> None:
        if self.main and self.options.get("plot_loss"):
            plot_loss(self.log.records, self.options["plot_loss"], f"{self.task.kind} {self.options['data']}")

    def evaluate(self, step: int, split: str = "valid") -> Dict[str, float]:
        """Rank 0: `split`'s metrics, recorded; on valid, the best checkpoint and the plateau schedule."""
        self.model.eval()
        with torch.no_grad(), self.runtime.use_backend():
            values = self.task.evaluate(self.model, self.runtime, split)
        self.model.train()
        self.metrics.update({f"{split}_{k}": v for k, v in values.items()})
        self.record({"step": step, "split": split, **values})
        marker = ""
        if split == "valid":
            value, higher = values.get(self.best_metric, math.nan), self.best_metric in HIGHER_IS_BETTER
            if math.isfinite(value) and (self.best is None or (value > self.best["value"] if higher
                                                               else value < self.best["value"])):
                self.best = {"metric": f"valid_{self.best_metric}", "value": value, "step": step}
                marker = "  (best)"
                self.save("best", step)
            if self.schedule.observe(value, higher):
                self.say(f"step {step}: valid {self.best_metric} has not improved for {self.options['lr_patience']} "
                         f"evaluations; lr now {self.schedule.lr(step):g}")
        self.say(f"step {step} {split}: {format_metrics(values)}{marker}")
        return values

    # ------------------------------------------------------------------------- training

    def forcing(self, step: int) -> float:
        """The teacher-forcing ratio of update `step` (1 for a language model)."""
        options = self.options
        if self.task.kind != "seq2seq":
            return 1.0
        return teacher_forcing_ratio(options["forcing_schedule"], options["teacher_forcing"], options["forcing_min"],
                                     options["forcing_decay_steps"] or options["steps"], step)

    def _batch(self, step: int):
        epoch, offset = divmod(step, self.steps_per_epoch)
        if offset == 0 or not self._epoch_order:
            self.sampler.set_epoch(epoch)
            self._epoch_order = list(self.sampler)
        indices = self._epoch_order[offset * self.per_rank_batch:(offset + 1) * self.per_rank_batch]
        return self.task.batch(indices, self.runtime.device)

    def _update(self, step: int, lr: float, ratio: float):
        """One optimiser step; (loss, BatchStats) of this rank's share of the batch."""
        runtime = self.runtime
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with runtime.use_backend(), runtime.autocast():
            loss, stats = self.task.loss(self.trained, self._batch(step), ratio)
        self.optimizer.zero_grad(set_to_none=True)
        objective = loss
        if runtime.distributed:
            # DDP averages the ranks' gradients; weighting each rank's mean by its share of the global
            # batch's tokens makes that average the gradient of the global per-token mean, as in one process
            tokens = torch.tensor([float(stats.tokens)], dtype=torch.float64, device=runtime.device)
            dist.all_reduce(tokens)
            objective = loss * (runtime.world * stats.tokens / tokens.item())
        with runtime.use_backend():
            self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)
        if self.options["clip"] > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options["clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, stats

    def run(self, notes: List[str] = (), resumed: bool = False) -> int:
        """Trains to --steps (or the time limit, or a signal); the exit code."""
        options, runtime = self.options, self.runtime
        self.console = Console(options["steps"], self.start_step, bar=self.main and not options["no_progress"])
        if self.main:
            self.summary(resumed, list(notes))
        self.model.train()
        self._epoch_order: List[int] = []
        started, tokens_seen, step = time.perf_counter(), 0.0, self.start_step
        cpu_started = time.process_time()  # CPU seconds of this process: a figure less sensitive to machine load
        interval = {"loss_sum": 0.0, "tokens": 0.0, "correct": 0.0, "started": started}
        stopped_by: Optional[signal.Signals] = None
        with StopSignals() as signals:
            while step < options["steps"]:
                lr, ratio = self.schedule.lr(step), self.forcing(step)
                loss, stats = self._update(step, lr, ratio)
                step += 1
                elapsed = time.perf_counter() - started
                # one collective per step: the global batch's token-weighted loss, its accuracy, the stop flags
                shared = torch.tensor([loss.detach().double().item() * stats.tokens, stats.tokens, stats.correct,
                                       float(options["time_limit"] is not None and elapsed >= options["time_limit"]),
                                       float(signals.received is not None)], dtype=torch.float64,
                                      device=runtime.device)
                if runtime.distributed:
                    dist.all_reduce(shared)
                loss_sum, tokens, correct, out_of_time, stop = shared.tolist()
                step_loss = loss_sum / tokens
                if not math.isfinite(step_loss):  # every rank sees the same global loss, so all stop here
                    raise UserError(f"the loss became {step_loss} at step {step}; try a smaller --lr")
                tokens_seen += tokens
                for key, value in (("loss_sum", loss_sum), ("tokens", tokens), ("correct", correct)):
                    interval[key] += value
                self.metrics.update(last_loss=step_loss, tokens_per_s=tokens_seen / elapsed, train_s=elapsed,
                                    train_cpu_s=time.process_time() - cpu_started, step=step)
                self.console.advance(loss=f"{step_loss:.4f}", lr=f"{lr:.3g}")
                log_now = options["log_every"] and (step % options["log_every"] == 0 or step == options["steps"])
                if log_now or stop or out_of_time:
                    now = time.perf_counter()
                    mean = interval["loss_sum"] / max(1.0, interval["tokens"])
                    values = {"loss": mean, "ppl": math.exp(min(mean, 700.0)),
                              "accuracy": interval["correct"] / max(1.0, interval["tokens"]), "lr": lr,
                              "tokens_per_s": interval["tokens"] / max(1e-9, now - interval["started"])}
                    if self.task.kind == "seq2seq":
                        values["forcing"] = ratio
                    values["elapsed_s"] = elapsed
                    self.metrics["train_loss"] = mean
                    self.record({"step": step, "split": "train", **values})
                    if log_now:
                        self.say(f"step {step}/{options['steps']}  {format_metrics(values)}")
                    interval.update(loss_sum=0.0, tokens=0.0, correct=0.0, started=now)
                if stop:
                    stopped_by = signals.received or signal.SIGINT  # or another rank's signal
                    break
                if step == options["steps"] or out_of_time or (options["eval_every"]
                                                              and step % options["eval_every"] == 0):
                    paused, cpu_paused = time.perf_counter(), time.process_time()
                    if self.main:
                        self.evaluate(step)
                        self.plot()
                    self.save("checkpoint", step)
                    started += time.perf_counter() - paused  # train_s and --time-limit count training time only
                    cpu_started += time.process_time() - cpu_paused
                    interval["started"] += time.perf_counter() - paused
                if out_of_time:
                    self.say(f"time limit of {options['time_limit']:g} s reached at step {step}")
                    break
        self.console.close()
        try:
            return self._finish(step, stopped_by)
        finally:
            if self.board is not None:
                self.board.close()

    def _finish(self, step: int, stopped_by: Optional[signal.Signals]) -> int:
        if stopped_by is not None:
            self.save("checkpoint", step)
            self.plot()
            self.say(f"interrupted by {stopped_by.name} at step {step}: {self.paths['checkpoint']} saved; "
                     f"continue with --resume")
            return 128 + int(stopped_by)
        self.metrics["replica_max_abs_diff"] = _replica_max_difference(self.model, self.runtime)
        if self.main:
            if step == self.start_step:
                self.evaluate(step)
            self.evaluate(step, "test")
            self.save("checkpoint", step)
            self.plot()
            if self.best is not None:
                self.metrics["best_step"] = self.best["step"]
                self.metrics[self.best["metric"] + "_best"] = self.best["value"]
            self.say("result: " + ", ".join(f"{k} {v:.6g}" for k, v in self.metrics.items()))
            if self.options.get("metrics_json"):
                write_text(self.options["metrics_json"], json.dumps(self.metrics, indent=1))
        return 0


def train(options: Dict, task, runtime: Runtime, payload: Optional[dict] = None, notes: List[str] = ()) -> int:
    """Trains `task` as `options` say, from scratch or from `payload` (a checked checkpoint); the exit code."""
    return Trainer(options, task, runtime, payload).run(notes, resumed=payload is not None)
