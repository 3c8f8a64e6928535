"""The training meters kept on the device between reads, so that a step never waits for it.

Reading a value off a GPU (`.item()`, `float()`, `bool()`) makes the host wait until every
kernel queued before it has run, so a loop that reads the loss each step cannot queue the next
step while this one computes. As in nanoGPT, the per-step figures stay on the device here and
are read in one transfer at the loop's read points: a log line, a checkpoint write, a
validation, a stop. Between reads nothing is read.

The device copies are the very running sums that `Progress` keeps (the epoch's loss x tokens,
the log window's sums), loaded from it after each read and added to in the same order as the
host would, in float64: in one process the figures are the same to the last bit whatever the
read points. Under torchrun the ranks' sums are averaged at each read, so there they agree to
rounding, and a non-finite step is named as the reading rank saw it.

A non-finite loss or gradient norm is noted on the device (the first such step, which of
the two, and its value); `read` raises `NonFiniteLoss` for it under `trainer.on_nonfinite=stop`,
so the loop stops at the next read point, before any checkpoint holds the weights it made.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmx.training.step import stop_error

_WHAT = {1.0: "loss", 2.0: "gradient norm"}


class DeviceMeters:
    def __init__(self, device: torch.device):
        self.device = device
        # [6] float64: the epoch's loss x tokens and tokens, the window's loss, norm, tokens
        # and batches; None: to be loaded from Progress
        self.sums: torch.Tensor | None = None
        self.bad: torch.Tensor | None = None  # [4]: first bad step, what (1 loss, 2 norm), value

    def _load(self, p) -> None:
        w = p.window
        values = [p.epoch_loss, p.epoch_tokens, w["loss"], w["norm"], w["tokens"], w["batches"]]
        sums = torch.tensor([*values, -1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        if self.device.type == "cuda":  # a pageable copy would wait for the GPU to finish
            sums = sums.pin_memory()
        self.sums, self.bad = sums.to(self.device, non_blocking=True).split([6, 4])

    def add(self, p, loss: torch.Tensor, norm: torch.Tensor, tokens: int) -> None:
        """One applied step (after `p.count_step`): its mean loss, the gradient norm and the
        tokens it trained on, as Progress.count_step would count them; no host read."""
        if self.sums is None:
            self._load(p)
        loss, norm = loss.detach().double(), norm.detach().double()
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        step = torch.stack([loss * tokens, zero + tokens, loss, norm, zero + tokens, zero + 1])
        self.sums += torch.where(finite, step, zero)  # one add: each sum as the host adds it
        loss_bad = ~torch.isfinite(loss)
        first = ~finite & (self.bad[0] < 0)
        this = torch.stack([zero + p.step, torch.where(loss_bad, 1.0, 2.0),
                            torch.where(loss_bad, loss, norm), zero])  # fmt: skip
        self.bad = torch.where(first, this, self.bad)

    def read(self, p, world, best_path: Path) -> None:
        """Copy the sums into `p` (one device-to-host transfer; under torchrun one all-reduce,
        the ranks' sums averaged). A non-finite step since the last read raises NonFiniteLoss
        (trainer.on_nonfinite=stop; under skip each step was checked before its update)."""
        if self.sums is None:
            return
        values = torch.cat([self.sums, self.bad]).tolist()
        self.sums = self.bad = None  # loaded again from p at the next step
        sums, (bad_step, what, value, _) = values[:6], values[6:]
        if world.enabled:  # every rank loaded the same p: the average adds the ranks' mean
            reduced = world.sum([*sums, float(bad_step >= 0)], torch.device("cpu"))
            sums = [x / world.world_size for x in reduced[:6]]
            if reduced[6] and bad_step < 0:
                bad_step, what, value = p.step, 1.0, math.nan  # another rank's loss
        p.epoch_loss, epoch_tokens, loss, norm, tokens, batches = sums
        p.epoch_tokens = round(epoch_tokens)
        p.window.update(loss=loss, norm=norm, tokens=round(tokens), batches=round(batches))
        if bad_step >= 0:
            raise stop_error(round(bad_step), f"{_WHAT.get(what, 'loss')} ({value})", p, best_path)
