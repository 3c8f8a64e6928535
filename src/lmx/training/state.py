"""Where the loop stands: `Progress`, saved in every checkpoint as plain values.

Everything the loop carries from step to step lives here, so a run resumed from any
checkpoint (end of epoch, every `checkpoint_every_steps`, or on SIGINT/SIGTERM) continues
exactly where it stopped: same batches, same meters, same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def _new_window() -> dict[str, float]:
    return dict(loss=0.0, norm=0.0, tokens=0, batches=0)


@dataclass
class Progress:
    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # batches of that epoch already done
    step: int = 0  # optimizer steps so far (batches, skipped ones included): TB's x-axis
    best_val_loss: float = math.inf
    best_epoch: int | None = None
    epoch_loss: float = 0.0  # sum over this epoch's batches of loss * tokens
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    window: dict[str, float] = field(default_factory=_new_window)  # since the last log line
    # Steady-state throughput: steps after the first `throughput_warmup_steps` of each
    # process (allocator and kernel warm-up, compilation) are timed.
    timed_tokens: int = 0
    timed_seconds: float = 0.0
    untimed_steps: int = 0
    wall_seconds: float = 0.0  # before this process started (earlier tries of the run)
    skipped_batches: int = 0  # non-finite batches skipped (trainer.on_nonfinite=skip)
    scaler_skipped_steps: int = 0  # fp16: steps the gradient scaler skipped (inf gradients)
    early_stop_best: float = math.inf  # early stopping: the best loss it counts from
    stale_validations: int = 0  # validations since that loss improved by min_delta
    # the lr the latest step trained at (a per-step schedule has moved the optimizer's on):
    # what log lines and validations report; None before a first step, or in older checkpoints
    step_lr: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Progress:
        return cls(**saved)  # older checkpoints lack the newer fields: their defaults apply

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def count_step(self) -> None:
        """One optimizer step done, skipped ones included. Its loss, norm and tokens go into
        the epoch's and the window's sums through meters.DeviceMeters, read at log lines."""
        self.step += 1
        self.batch += 1

    def count_time(self, seconds: float, tokens: int, timed: bool) -> None:
        self.epoch_seconds += seconds
        if timed:
            self.timed_tokens += tokens
            self.timed_seconds += seconds
        else:
            self.untimed_steps += 1

    def end_epoch(self, val_loss: float, details: dict[str, Any], whole: bool = True) -> bool:
        """Record the epoch's validation in the history, keep the best, and move to the next
        epoch (so that a resume from here starts it). A budget that ends training part-way
        through an epoch (`whole` false) records it as partial and leaves the epoch open, so
        that a resume with a larger budget finishes it. True: this is the new best."""
        self.history.append(
            {
                "epoch": self.epoch,
                "step": self.step,
                # nan where every batch was skipped (non-finite): no loss was measured
                "train_loss": self.epoch_loss / self.epoch_tokens
                if self.epoch_tokens
                else math.nan,
                "val_loss": val_loss,
                "val_ppl": math.exp(val_loss) if val_loss < 700 else math.inf,
                **details,
                "train_seconds": self.epoch_seconds,
                **({} if whole else {"partial_epoch": True}),
            }
        )
        improved = val_loss < self.best_val_loss  # never for nan
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
        if whole:
            self.next_epoch()
        return improved

    def reset_window(self) -> None:
        self.window = _new_window()

    def next_epoch(self) -> None:
        """The next epoch's state, so that a resume from here starts it."""
        self.epoch, self.batch = self.epoch + 1, 0
        self.epoch_loss, self.epoch_tokens, self.epoch_seconds = 0.0, 0, 0.0
