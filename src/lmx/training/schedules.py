"""Learning-rate schedules that torch does not ship as one class. Each is a closed form of
the step: linear warm-up from 0 to the base lr over `warmup_steps`, then a decay to
`min_lr_ratio * lr` at `total_steps`, constant after that. Step them every optimizer step.
Being closed forms, their horizon (`total_steps`) can move while they run: a time budget
re-estimates it, and a resumed run of another length moves it (lmx.training.resume).

- cosine (WarmupCosineLR): cosine decay over the whole span after warm-up.
- linear (WarmupLinearLR): linear decay over the same span.
- wsd (WarmupStableDecayLR): warm-up, then the base lr held ("stable"), then a decay over
  the last `decay_ratio` of the steps (torchtitan's warmup-stable-decay): the schedule for
  budgeted runs, since most of the run trains at the full lr whatever the budget.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

_SHAPES = ("linear", "cosine", "sqrt")


class ClosedFormLR(LRScheduler):
    """lr = base lr x factor(step); subclasses say how the decay after warm-up goes."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be >= 1")
        if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def decay(self, step: int) -> float:
        """1 -> 0 over the decay span (0 from there on)."""
        raise NotImplementedError

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * self.decay(step)

    def progress(self, step: int, start: int) -> float:
        """0 at `start`, 1 at total_steps."""
        return min(1.0, max(0.0, (step - start) / max(1, self.total_steps - start)))

    def get_lr(self) -> list[float]:  # closed form: the lr of step `last_epoch` alone
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


def _shape(kind: str, progress: float) -> float:
    """1 at progress 0, 0 at progress 1."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "sqrt":
        return 1.0 - math.sqrt(progress)
    return 1.0 - progress


class WarmupCosineLR(ClosedFormLR):
    def decay(self, step: int) -> float:
        return _shape("cosine", self.progress(step, self.warmup_steps))


class WarmupLinearLR(ClosedFormLR):
    def decay(self, step: int) -> float:
        return _shape("linear", self.progress(step, self.warmup_steps))


class WarmupStableDecayLR(ClosedFormLR):
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        decay_ratio: float = 0.2,
        decay_shape: str = "linear",
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        if not 0.0 <= decay_ratio <= 1.0 or decay_shape not in _SHAPES:
            raise ValueError(f"decay_ratio must be in [0, 1] and decay_shape one of {_SHAPES}")
        self.decay_ratio, self.decay_shape = decay_ratio, decay_shape
        super().__init__(optimizer, total_steps, warmup_steps, min_lr_ratio, last_epoch)

    def decay(self, step: int) -> float:
        # The decay takes the last decay_ratio of the run (never the warm-up).
        start = max(
            self.warmup_steps, self.total_steps - round(self.decay_ratio * self.total_steps)
        )
        if step < start:
            return 1.0
        return _shape(self.decay_shape, self.progress(step, start))
