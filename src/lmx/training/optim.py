"""Optimizer and learning-rate schedule from their sub-configs, through Hydra's instantiate.

Any torch optimizer or scheduler class can be named from the command line, e.g.
`optim._target_=torch.optim.RMSprop +optim.alpha=0.9`. A schedule whose `total_steps` is null
takes the run's length: `Schedule.horizon` says which constructor arguments came from it, so
that a resumed run of another length can move them (lmx.training.resume).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmx.config.schema import Interval
from lmx.config.targets import target_kwargs
from lmx.errors import ConfigError
from lmx.training.budget import Budget
from lmx.training.schedules import ClosedFormLR

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    scheduler: Any
    interval: Interval  # step() after every optimizer step, epoch, or validation
    horizon: dict[str, int] = field(default_factory=dict)  # arguments taken from the run length

    def after_validation(self, whole_epoch: bool, val_loss: float) -> None:
        """An epoch schedule steps after a whole epoch's validation (not a mid-epoch one); a
        validation schedule (ReduceLROnPlateau) after every validation, on its loss."""
        if self.interval == Interval.epoch and whole_epoch:
            self.scheduler.step()
        elif self.interval == Interval.validation:
            self.scheduler.step(val_loss)


def _plain(cfg: DictConfig, prefix: str, own: str) -> dict[str, Any]:
    # Plain containers, so optimizer/scheduler state holds no OmegaConf objects and
    # checkpoints load under torch.load(weights_only=True); only the keys the class takes.
    kwargs, problems = target_kwargs(cfg, prefix, (own,))
    if problems:  # the config check refuses these first; a direct call gets them here
        raise ConfigError("; ".join(problems))
    return kwargs


def _build(kind: str, cfg: dict[str, Any], *args: Any) -> Any:
    try:
        return instantiate(cfg)(*args)
    except Exception as err:
        raise ConfigError(f"cannot build {kind} {cfg.get('_target_')!r}: {err}") from err


def build_optimizer(
    cfg: DictConfig,
    params: torch.nn.Module | Iterable[torch.nn.Parameter],
    decay_all: bool | None = None,
):
    """The optimizer over a model's parameters (or a plain list of them).

    With a weight decay, only tensors of two or more dimensions (matmul weights, embeddings)
    are decayed, as nanoGPT and HF do; biases and norm weights are not. optim.decay_all=true
    (or `decay_all`, which overrides it) decays every tensor, as lmx did before."""
    kwargs = _plain(cfg, "optim", "decay_all")
    configured = kwargs.pop("decay_all", False)  # lmx's own key, not the constructor's
    decay_all = configured if decay_all is None else decay_all
    named = list(params.named_parameters() if isinstance(params, torch.nn.Module)
                 else ((str(i), p) for i, p in enumerate(params)))  # fmt: skip
    groups = weight_decay_groups(named, kwargs.get("weight_decay") or 0.0, decay_all)
    return _build("optimizer", kwargs, groups)


def weight_decay_groups(
    named: list[tuple[str, torch.nn.Parameter]], weight_decay: float, decay_all: bool
) -> list[dict[str, Any]]:
    """One group (no decay, or decay_all), or two: decayed (2+ dims) and not (the rest)."""
    if not weight_decay or decay_all:
        return [{"params": [p for _, p in named]}]
    decay = [(n, p) for n, p in named if p.dim() >= 2]
    rest = [(n, p) for n, p in named if p.dim() < 2]
    for label, group in ((f"weight decay {weight_decay:g} on", decay), ("no decay on", rest)):
        names = ", ".join(n for n, _ in group[:4]) + (", ..." if len(group) > 4 else "")
        count = sum(p.numel() for _, p in group)
        log.info("optim: %s %d tensors (%s parameters): %s", label, len(group), f"{count:,}",
                 names or "-")  # fmt: skip
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in rest], "weight_decay": 0.0},
    ]


def build_scheduler(
    cfg: DictConfig,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    epochs: int,
    max_steps: int | None = None,
) -> Schedule:
    """The schedule; a null `total_steps` becomes the run's length in scheduler steps (the
    epochs' steps, or the step budget if that comes first)."""
    kwargs = _plain(cfg, "scheduler", "interval")
    interval = Interval(kwargs.pop("interval", "epoch"))
    if interval == Interval.step:
        length = steps_per_epoch * epochs
        length = min(length, max_steps) if max_steps is not None else length
    else:
        length = epochs
    horizon = {}
    if "total_steps" in kwargs and kwargs["total_steps"] is None:
        horizon["total_steps"] = kwargs["total_steps"] = max(1, length)
    warmup, total = kwargs.get("warmup_steps"), kwargs.get("total_steps")
    if warmup and total and warmup >= total:
        log.warning(
            "scheduler.warmup_steps=%d is not shorter than the run's %d scheduler steps: the lr "
            "never reaches optim.lr (lower scheduler.warmup_steps, or train longer)",
            warmup,
            total,
        )
    return Schedule(_build("scheduler", kwargs, optimizer), interval, horizon)


class TimeHorizon:
    """With a time budget (trainer.max_time), a step schedule's horizon is an estimate: the
    steps so far plus those the remaining time holds at the pace since warm-up. It is
    re-estimated after every step, so the lr reaches its floor when time runs out. Only a
    schedule whose lr is a closed form of the step (lmx.training.schedules) can follow it."""

    def __init__(self, schedule: Schedule, budget: Budget):
        self.schedule, self.budget = schedule, budget
        self.on = (
            budget.max_time_s is not None
            and schedule.interval == Interval.step
            and bool(schedule.horizon)
            and isinstance(schedule.scheduler, ClosedFormLR)
        )
        self.start: tuple[int, float] | None = None  # (step, wall seconds) after warm-up
        self.warned = False

    def after_step(self, step: int, wall_s: float, warm: bool) -> None:
        if not self.on or not warm:
            return
        if self.start is None:
            self.start = (step, wall_s)
            return
        paced = (step - self.start[0], wall_s - self.start[1])
        estimate = self.budget.estimate_steps(step, wall_s, *paced)
        warmup = getattr(self.schedule.scheduler, "warmup_steps", 0)
        if estimate <= warmup and not self.warned:
            self.warned = True
            log.warning("trainer.max_time holds about %d steps at this pace, no more than the "
                        "lr warm-up's %d: the lr will not decay", estimate, warmup)  # fmt: skip
        for key in self.schedule.horizon:
            setattr(self.schedule.scheduler, key, max(1, estimate))
