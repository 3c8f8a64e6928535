"""Optimizers and schedules built from config."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose_cfg
from lmx.config.schema import Interval
from lmx.errors import ConfigError
from lmx.training.optim import build_optimizer, build_scheduler
from lmx.training.schedules import WarmupCosineLR


def param():
    return [torch.nn.Parameter(torch.zeros(3))]


def lrs(scheduler, optimizer, n):
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_cosine_shape():
    opt = torch.optim.SGD(param(), lr=1.0)
    sched = WarmupCosineLR(opt, total_steps=10, warmup_steps=4, min_lr_ratio=0.1)
    values = lrs(sched, opt, 12)
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0)
    assert values[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert values[10:] == pytest.approx([0.1, 0.1])  # flat at the floor after total_steps


def test_cosine_total_steps_defaults_to_the_run_length():
    cfg = compose_cfg(["optim=adamw", "scheduler=cosine"])
    opt = build_optimizer(cfg.optim, param())
    schedule = build_scheduler(cfg.scheduler, opt, steps_per_epoch=50, epochs=3)
    sched, interval = schedule.scheduler, schedule.interval
    assert interval == Interval.step and sched.total_steps == 150
    assert isinstance(opt, torch.optim.AdamW) and tuple(opt.defaults["betas"]) == (0.9, 0.999)


def test_step_and_constant_schedules():
    cfg = compose_cfg()
    opt = build_optimizer(cfg.optim, param())
    schedule = build_scheduler(cfg.scheduler, opt, steps_per_epoch=5, epochs=3)
    sched, interval = schedule.scheduler, schedule.interval
    assert interval == Interval.epoch
    assert lrs(sched, opt, 3) == pytest.approx([5.0, 4.75, 4.5125])
    cfg = compose_cfg(["scheduler=constant"])
    opt = build_optimizer(cfg.optim, param())
    sched = build_scheduler(cfg.scheduler, opt, steps_per_epoch=5, epochs=3).scheduler
    assert lrs(sched, opt, 3) == pytest.approx([5.0, 5.0, 5.0])


def test_unbuildable_optimizer_is_a_config_error():
    cfg = compose_cfg(["optim._target_=torch.optim.NoSuchThing"])
    with pytest.raises(ConfigError, match="torch.optim.NoSuchThing"):
        build_optimizer(cfg.optim, param())


def test_a_warmup_longer_than_the_run_is_a_warning_naming_both(caplog):
    cfg = compose_cfg(["optim=adamw", "scheduler=cosine"])  # warm-up 200 steps
    opt = build_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(2))])
    build_scheduler(cfg.scheduler, opt, steps_per_epoch=20, epochs=1)
    assert "scheduler.warmup_steps=200 is not shorter than the run's 20 scheduler steps" in (
        caplog.text
    )
    caplog.clear()
    build_scheduler(cfg.scheduler, opt, steps_per_epoch=300, epochs=1)
    assert "warmup_steps" not in caplog.text
