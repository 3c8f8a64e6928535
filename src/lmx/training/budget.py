"""When training ends: after `trainer.epochs`, or at a budget of optimizer steps
(`trainer.max_steps`) or of wall time (`trainer.max_time`, e.g. 30m, 2h, 1h30m), or when
validation stops improving (`trainer.early_stop`), whichever comes first. A step schedule
whose horizon is the run's length takes it from the budget: a time budget estimates its step
count from the pace so far and re-estimates it every step, so that the lr reaches its floor
when time runs out."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("lmx.training")

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_duration(text: str) -> float:
    """'30m' -> 1800.0; '1h30m', '90s', '2.5h' and '1d' too. A bare number is refused: its
    unit would be a guess."""
    text = str(text).strip().lower().replace(" ", "")
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration: write it as 90s, 30m, 2h or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class Budget:
    epochs: int
    steps_per_epoch: int
    max_steps: int | None = None
    max_time_s: float | None = None

    def planned_steps(self) -> int:
        """The run's length in optimizer steps, as far as it is known before it starts."""
        steps = self.epochs * self.steps_per_epoch
        return min(steps, self.max_steps) if self.max_steps is not None else steps

    def spent(self, step: int, wall_s: float) -> str | None:
        """Which budget is used up after `step` steps and `wall_s` seconds, or None."""
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.max_time_s is not None and wall_s >= self.max_time_s:
            return "max_time"
        return None

    def estimate_steps(self, step: int, wall_s: float, paced_steps: int, paced_s: float) -> int:
        """The run's length with a time budget: the steps so far plus those the remaining time
        holds at the pace of the last `paced_steps` steps (`paced_s` seconds), capped by the
        other limits."""
        planned = self.planned_steps()
        if self.max_time_s is None or paced_steps <= 0 or paced_s <= 0:
            return planned
        left = max(0.0, self.max_time_s - wall_s) * paced_steps / paced_s
        return max(step, min(planned, step + math.ceil(left)))


class Stopping:
    """Why training ends before its epochs, if it does: `reason` is max_steps, max_time or
    early_stop, and `message` says why in words (the log and metrics.json carry both).

    Early stopping counts validations whose loss is not below the best so far by more than
    `min_delta`; after `patience` of them in a row it stops. Its counters live in the run's
    Progress (checkpointed), so a resumed run counts on."""

    def __init__(self, budget: Budget, patience: int | None = None, min_delta: float = 0.0):
        self.budget, self.patience, self.min_delta = budget, patience, min_delta
        self.reason: str | None = None
        self.message: str | None = None

    def spent(self, p: Any, wall_s: float) -> str | None:
        """The reason training ends now (p: the run's Progress), or None to go on."""
        if self.reason is not None:
            return self.reason
        if self.patience is not None and p.stale_validations >= self.patience:
            self.reason = "early_stop"
            self.message = (
                f"early stop: validation loss did not improve on {p.early_stop_best:.4f} by "
                f"more than trainer.early_stop.min_delta={self.min_delta:g} in "
                f"{p.stale_validations} validations (trainer.early_stop.patience={self.patience})"
            )
        elif (reason := self.budget.spent(p.step, wall_s)) is not None:
            self.reason = reason
            limit = f"max_steps={self.budget.max_steps}" if reason == "max_steps" else (
                f"max_time ({self.budget.max_time_s:g} s)")  # fmt: skip
            self.message = f"trainer.{limit} reached"
        if self.message:
            log.info("| End of training: %s", self.message)
        return self.reason

    def after_validation(self, p: Any, val_loss: float) -> None:
        """Count this validation for early stopping (p: the run's Progress)."""
        if self.patience is None:
            return
        if val_loss < p.early_stop_best - self.min_delta:
            p.early_stop_best, p.stale_validations = val_loss, 0
        else:
            p.stale_validations += 1
