"""When training ends: after `trainer.epochs`, or at a budget of optimizer steps
(`trainer.max_steps`) or of wall time (`trainer.max_time`, e.g. 30m, 2h, 1h30m), whichever
comes first. A step schedule whose horizon is the run's length takes it from the budget: a
time budget estimates its step count from the pace so far and re-estimates it every step, so
that the lr reaches its floor when time runs out."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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
