"""Learning-rate schedules that torch does not ship as one class."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from 0 to the base lr over `warmup_steps`, then cosine decay to
    `min_lr_ratio * lr` at `total_steps`; constant after that. Step it every optimizer step.
    """

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
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def get_lr(self) -> list[float]:  # closed form: the lr of step `last_epoch` alone
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
