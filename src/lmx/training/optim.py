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
from omegaconf import DictConfig, OmegaConf

from lmx.config.schema import Interval
from lmx.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    scheduler: Any
    interval: Interval  # step() after every optimizer step, or after every epoch
    horizon: dict[str, int] = field(default_factory=dict)  # arguments taken from the run length


def _plain(cfg: DictConfig) -> dict[str, Any]:
    # Plain containers, so optimizer/scheduler state holds no OmegaConf objects and
    # checkpoints load under torch.load(weights_only=True).
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def _build(kind: str, cfg: dict[str, Any], *args: Any) -> Any:
    try:
        return instantiate(cfg)(*args)
    except Exception as err:
        raise ConfigError(f"cannot build {kind} {cfg.get('_target_')!r}: {err}") from err


def build_optimizer(cfg: DictConfig, params: Iterable[torch.nn.Parameter]):
    return _build("optimizer", _plain(cfg), params)


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> Schedule:
    """The schedule; a null `total_steps` becomes the run's length in scheduler steps."""
    kwargs = _plain(cfg)
    interval = Interval(kwargs.pop("interval", "epoch"))
    per_epoch = steps_per_epoch if interval == Interval.step else 1
    horizon = {}
    if "total_steps" in kwargs and kwargs["total_steps"] is None:
        horizon["total_steps"] = kwargs["total_steps"] = max(1, per_epoch * epochs)
    warmup, total = kwargs.get("warmup_steps"), kwargs.get("total_steps")
    if warmup and total and warmup >= total:
        log.warning(
            "scheduler.warmup_steps=%d is not shorter than the run's %d scheduler steps: the lr "
            "never reaches optim.lr (lower scheduler.warmup_steps, or train longer)",
            warmup,
            total,
        )
    return Schedule(_build("scheduler", kwargs, optimizer), interval, horizon)
