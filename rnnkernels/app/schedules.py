"""Learning-rate schedules and teacher-forcing (scheduled sampling) schedules, as functions of the step.

Both are computed from the step number (plus, for plateau, a factor the
checkpoint saves), so a resumed run continues on the same curve.
"""
import math
from typing import Optional

LR_SCHEDULES = ("constant", "step", "cosine", "plateau")
FORCING_SCHEDULES = ("constant", "linear", "exponential", "inverse-sigmoid")


class LRSchedule:
    """lr(step) = base_lr * warmup(step) * decay(step), at least min_lr after warm-up.

    warmup: linear from base_lr / warmup_steps to base_lr over the first warmup_steps updates.
    decay:  constant  1
            step      gamma ** (steps after warm-up // step_size)
            cosine    half a cosine from 1 down to min_lr / base_lr at total_steps
            plateau   gamma ** (times the validation metric has not improved for `patience`
                      evaluations in a row); `observe` feeds it."""

    def __init__(self, kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0, step_size: int = 1000,
                 gamma: float = 0.5, patience: int = 2, min_lr: float = 0.0):
        if kind not in LR_SCHEDULES:
            raise ValueError(f"kind must be one of {LR_SCHEDULES}, got {kind!r}")
        self.kind, self.base_lr, self.total_steps, self.warmup_steps = kind, base_lr, total_steps, warmup_steps
        self.step_size, self.gamma, self.patience, self.min_lr = step_size, gamma, patience, min_lr
        self.plateau_factor, self.best, self.bad_evaluations = 1.0, None, 0

    def lr(self, step: int) -> float:
        """The learning rate of update number `step` (0-based)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        after = step - self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "step":
            decayed = self.base_lr * self.gamma ** (after // self.step_size)
        elif self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, after / span)))
        else:
            decayed = self.base_lr * self.plateau_factor
        return max(self.min_lr, decayed)

    def observe(self, value: float, higher_is_better: bool) -> bool:
        """Plateau: records a validation value; True when this one lowered the learning rate."""
        if self.kind != "plateau" or not math.isfinite(value):
            return False
        improved = self.best is None or (value > self.best if higher_is_better else value < self.best)
        if improved:
            self.best, self.bad_evaluations = value, 0
            return False
        self.bad_evaluations += 1
        if self.bad_evaluations < self.patience:
            return False
        self.bad_evaluations = 0
        self.plateau_factor *= self.gamma
        return True

    def state_dict(self) -> dict:
        return {"plateau_factor": self.plateau_factor, "best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: Optional[dict]) -> None:
        if isinstance(state, dict):
            self.plateau_factor = float(state.get("plateau_factor", 1.0))
            self.best = state.get("best")
            self.bad_evaluations = int(state.get("bad_evaluations", 0))

    def describe(self) -> str:
        text = {"constant": "constant", "step": f"step (x{self.gamma:g} every {self.step_size} steps)",
                "cosine": f"cosine to {self.min_lr:g} at step {self.total_steps}",
                "plateau": f"plateau (x{self.gamma:g} after {self.patience} evaluation(s) without improvement)"}
        warmup = f", {self.warmup_steps} warm-up steps" if self.warmup_steps else ""
        return text[self.kind] + warmup


def _inverse_sigmoid_k(decay_steps: int) -> float:
    """k with k ln k = decay_steps / 2: Bengio et al.'s k / (k + exp(i / k)) then falls through its
    midpoint at decay_steps / 2 and is about 1 / k at decay_steps."""
    k, target = max(math.e, decay_steps / 2), max(decay_steps / 2, math.e)
    for _ in range(50):  # fixed point of k = target / ln k, contracting for k > e
        k = target / math.log(k)
    return k


def teacher_forcing_ratio(kind: str, start: float, minimum: float, decay_steps: int, step: int) -> float:
    """The probability of feeding the true previous token at training step `step` (scheduled
    sampling, Bengio et al. 2015): it falls from `start` towards `minimum` over decay_steps steps.

    constant          start
    linear            reaches minimum at decay_steps
    exponential       k ** step with k = 0.01 ** (1 / decay_steps): 1% of the way left at decay_steps
    inverse-sigmoid   k / (k + exp(step / k)), rescaled to begin at 1, midpoint at decay_steps / 2"""
    if kind not in FORCING_SCHEDULES:
        raise ValueError(f"kind must be one of {FORCING_SCHEDULES}, got {kind!r}")
    if kind == "constant" or start <= minimum:
        return start
    if kind == "linear":
        fraction = max(0.0, 1.0 - step / decay_steps)
    elif kind == "exponential":
        fraction = 0.01 ** (step / decay_steps)
    else:
        k = _inverse_sigmoid_k(decay_steps)
        fraction = (k + 1) / (k + math.exp(min(step / k, 700.0)))
    return minimum + (start - minimum) * fraction
