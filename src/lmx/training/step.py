"""One optimizer step: forward, backward, clip, update.

fp16 on CUDA trains through a `torch.amp.GradScaler`: the loss is scaled before the backward
so that small gradients do not underflow in fp16, the gradients are unscaled before the clip,
and a step whose gradients overflowed is skipped while the scale shrinks. With any other
precision the scaler is disabled and each of its calls is the plain operation.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmx.config.schema import NonFinite, Precision
from lmx.errors import LmxError
from lmx.models.carried import peek_state, set_state
from lmx.runtime.device import autocast

log = logging.getLogger("lmx.training")


class NonFiniteLoss(LmxError):
    """The loss or gradient norm became inf/nan and trainer.on_nonfinite=stop."""

    @classmethod
    def at(cls, what: str, where: str, best: str) -> NonFiniteLoss:
        return cls(
            f"non-finite {what} at {where}; training stopped. Best checkpoint: {best}. Lower "
            "optim.lr or set (or tighten) trainer.grad_clip, or set trainer.on_nonfinite=skip "
            "to skip such batches."
        )


def stop_error(step: int, what: str, p, best_path: Path) -> NonFiniteLoss:
    """trainer.on_nonfinite=stop: the error for a non-finite `what` (e.g. "loss (nan)") at
    `step`, one of the current epoch's steps."""
    where = f"step {step} (epoch {p.epoch}, batch {p.batch - (p.step - step)})"
    best = f"{best_path} (epoch {p.best_epoch})" if p.best_epoch else "no best.pt yet"
    return NonFiniteLoss.at(what, where, best)


def apply_nonfinite_policy(what: str, p, policy: NonFinite, best_path: Path) -> None:
    """trainer.on_nonfinite for a checked step that was not applied (before it is counted):
    count and skip it, or stop."""
    if policy == NonFinite.stop:
        raise stop_error(p.step + 1, what, p, best_path)
    p.skipped_batches += 1
    log.warning("non-finite %s at step %d (epoch %d, batch %d): batch skipped", what,
                p.step + 1, p.epoch, p.batch + 1)  # fmt: skip


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_, also for sparse gradients (a sparse embedding), which
    torch's own version cannot take a norm of. Returns the total norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # repeated token rows summed, as the dense grad has them
    norms = [torch.linalg.vector_norm(p.grad._values() if p.grad.is_sparse else p.grad)
             for p in params]  # fmt: skip
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # torch's formula
    for p in params:
        p.grad.mul_(scale)
    return total


def make_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """Enabled for fp16 on CUDA only (config rules refuse fp16 elsewhere)."""
    enabled = precision == Precision.fp16 and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)


@dataclass
class StepResult:
    loss: torch.Tensor  # 0-d, on the device: this rank's mean loss over the step's tokens
    norm: torch.Tensor  # 0-d, on the device: the gradient norm before clipping
    nonfinite: str | None = None  # e.g. "loss (nan)": why it was not applied (checked steps)
    stop_requested: bool = False  # a signal arrived on some rank (agreed under torchrun)
    scaler_skipped: bool = False  # fp16: the scaler found inf gradients and skipped it


def train_step(
    model: torch.nn.Module,
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: torch.Tensor,
    targets: torch.Tensor,
    precision: Precision,
    grad_clip: float | None,
    world,
    stop_requested: bool,
    accumulate: int = 1,
    check: bool = True,
) -> StepResult:
    """Forward, backward, clip, update.

    `model` is what trains (DDP-wrapped under torchrun); `parameters` are its weights. With
    `accumulate` K > 1 the batch's rows go through in K micro-batches (the data's order
    unchanged) whose gradients add up before the one update; each micro-batch's loss is
    weighted by its share of the batch's tokens, so the step's loss is still the mean over
    all of them. Under DDP the gradients are all-reduced on the last micro-batch only.

    With `check` (trainer.on_nonfinite=skip, and the fp16 scaler, which reads its overflow
    flag anyway) the loss and the norm are read before the update, and a non-finite one
    updates nothing. Without it nothing is read from the device: the update is applied, and
    meters.DeviceMeters notes a non-finite value for the loop to stop on at its next read.
    """
    device = data.device
    check = check or scaler.is_enabled()
    kept = peek_state(model) if check else None  # a step thrown away leaves a carried state
    optimizer.zero_grad(set_to_none=True)
    micro = list(zip(data.tensor_split(accumulate), targets.tensor_split(accumulate), strict=True))
    no_sync = getattr(model, "no_sync", None)
    step_loss = torch.zeros((), dtype=torch.float64, device=device)  # as a Python float adds
    for k, (x, y) in enumerate(micro):
        share = y.numel() / targets.numel()
        syncs = no_sync is None or k == len(micro) - 1
        with contextlib.nullcontext() if syncs else no_sync():
            with autocast(device, precision):
                loss = model(x, y)  # mean cross-entropy over the micro-batch's tokens
            # Every rank runs every backward (a skipped one would stall DDP's all-reduce);
            # a non-finite loss is caught below, and its gradients are thrown away.
            scaler.scale(loss * share if len(micro) > 1 else loss).backward()
        step_loss += loss.detach().double() * share
    if world.enabled:  # every rank sees the same stop decision (a CPU all-reduce: no GPU wait)
        stop_requested = world.sum([float(stop_requested)], torch.device("cpu"))[0] > 0
    scaler.unscale_(optimizer)  # the clip below sees the true gradients
    norm = clip_grad_norm(parameters, grad_clip if grad_clip is not None else math.inf)
    if check:
        bad = _nonfinite(step_loss, norm, world)
        if bad == "norm" and scaler.is_enabled() and scaler.get_scale() > 1.0:
            # fp16: an overflow at this loss scale skips the step and shrinks the scale. At a
            # scale of 1 or less the gradients overflow at their true size: a real non-finite.
            scaler.step(optimizer)
            scaler.update()
            return StepResult(step_loss, norm, None, stop_requested, scaler_skipped=True)
        if bad:
            optimizer.zero_grad(set_to_none=True)
            set_state(model, kept)
            if scaler.is_enabled():  # unscale_ ran: the scaler's per-step state must end here
                scaler.update()
            value = step_loss if bad == "loss" else norm
            what = "loss" if bad == "loss" else "gradient norm"
            return StepResult(step_loss, norm, f"{what} ({value.item()})", stop_requested)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(step_loss, norm, None, stop_requested)


def _nonfinite(loss: torch.Tensor, norm: torch.Tensor, world) -> str | None:
    """ "loss" or "norm" when either is non-finite on this rank (under torchrun, the loss on
    any rank: the ranks must agree to skip), else None. Reads the device."""
    loss_ok, norm_ok = torch.isfinite(torch.stack([loss, norm.double()])).tolist()
    if world.enabled:
        loss_ok = world.sum([float(not loss_ok)], torch.device("cpu"))[0] == 0
    return None if loss_ok and norm_ok else "loss" if not loss_ok else "norm"
