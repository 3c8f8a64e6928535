"""Optimizer and scheduler from their sub-configs, through Hydra's instantiate.

Any torch optimizer or scheduler class can be named from the command line, e.g.
`optim._target_=torch.optim.RMSprop +optim.alpha=0.9`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmx.config import Interval
from lmx.errors import ConfigError


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
) -> tuple[Any, Interval]:
    """The scheduler and when to step it; a null `total_steps` becomes the run's length."""
    kwargs = _plain(cfg)
    interval = Interval(kwargs.pop("interval", "epoch"))
    if "total_steps" in kwargs and kwargs["total_steps"] is None:
        per_epoch = steps_per_epoch if interval == Interval.step else 1
        kwargs["total_steps"] = max(1, per_epoch * epochs)
    return _build("scheduler", kwargs, optimizer), interval
