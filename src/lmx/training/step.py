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
            "optim.lr or tighten trainer.grad_clip, or set trainer.on_nonfinite=skip to skip "
            "such batches."
        )


def apply_nonfinite_policy(what: str, p, policy: NonFinite, best_path: Path) -> None:
    """trainer.on_nonfinite for a step that was not applied: count and skip it, or stop."""
    where = f"step {p.step + 1} (epoch {p.epoch}, batch {p.batch + 1})"
    if policy == NonFinite.stop:
        best = f"{best_path} (epoch {p.best_epoch})" if p.best_epoch else "no best.pt yet"
        raise NonFiniteLoss.at(what, where, best)
    p.skipped_batches += 1
    log.warning("non-finite %s at %s: batch skipped", what, where)


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
    loss: float  # the step's mean loss (global under torchrun); nan when it was not applied
    norm: float  # gradient norm before clipping; nan when not applied
    nonfinite: str | None = None  # e.g. "loss (nan)": why it was not applied
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
) -> StepResult:
    """Forward, backward, clip, update; a non-finite loss or gradient norm updates nothing.

    `model` is what trains (DDP-wrapped under torchrun); `parameters` are its weights. With
    `accumulate` K > 1 the batch's rows go through in K micro-batches (the data's order
    unchanged) whose gradients add up before the one update; each micro-batch's loss is
    weighted by its share of the batch's tokens, so the step's loss is still the mean over
    all of them. Under DDP the gradients are all-reduced on the last micro-batch only.
    """
    device = data.device
    kept = peek_state(model)  # a step thrown away leaves a carried state as it was
    optimizer.zero_grad(set_to_none=True)
    micro = list(zip(data.tensor_split(accumulate), targets.tensor_split(accumulate), strict=True))
    no_sync = getattr(model, "no_sync", None)
    loss_value = 0.0
    for k, (x, y) in enumerate(micro):
        share = y.numel() / targets.numel()
        syncs = no_sync is None or k == len(micro) - 1
        with contextlib.nullcontext() if syncs else no_sync():
            with autocast(device, precision):
                loss = model(x, y)  # mean cross-entropy over the micro-batch's tokens
            # Every rank runs every backward (a skipped one would stall DDP's all-reduce);
            # a non-finite loss is caught below, and its gradients are thrown away.
            scaler.scale(loss * share if len(micro) > 1 else loss).backward()
        loss_value += loss.item() * share
    if world.enabled:  # every rank sees the global loss and the same stop decision
        loss_sum, stops = world.sum([loss_value, stop_requested], device)
        loss_value, stop_requested = loss_sum / world.world_size, stops > 0
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        set_state(model, kept)
        return StepResult(math.nan, math.nan, f"loss ({loss_value})", stop_requested)
    scaler.unscale_(optimizer)  # the clip below sees the true gradients
    norm = clip_grad_norm(parameters, grad_clip if grad_clip is not None else math.inf).item()
    if not math.isfinite(norm):
        # fp16: an overflow at this loss scale skips the step and shrinks the scale. At a scale
        # of 1 or less the gradients overflow at their true size: a real non-finite gradient.
        if scaler.is_enabled() and scaler.get_scale() > 1.0:
            scaler.step(optimizer)
            scaler.update()
            return StepResult(math.nan, math.nan, None, stop_requested, scaler_skipped=True)
        optimizer.zero_grad(set_to_none=True)
        set_state(model, kept)
        return StepResult(math.nan, math.nan, f"gradient norm ({norm})", stop_requested)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(loss_value, norm, None, stop_requested)
