"""Optimizers and schedules built from config."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import compose_cfg, sigint_after_step, tiny_overrides
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


def _factors(scheduler_option: str, total: int, *extra: str) -> list[float]:
    cfg = compose_cfg(["optim=adamw", f"scheduler={scheduler_option}", *extra])
    opt = build_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(2))])
    schedule = build_scheduler(cfg.scheduler, opt, steps_per_epoch=total, epochs=1)
    assert schedule.horizon == {"total_steps": total}
    return [schedule.scheduler.factor(s) for s in range(total + 3)]


def test_linear_decay_shape():
    f = _factors("linear", 110, "scheduler.warmup_steps=10", "scheduler.min_lr_ratio=0.1")
    assert f[4] == pytest.approx(0.5) and f[9] == pytest.approx(1.0)  # warm-up
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)  # halfway: (1 + .1) / 2
    assert f[110] == pytest.approx(0.1) and f[112] == pytest.approx(0.1)  # the floor, held


def test_warmup_stable_decay_shape():
    f = _factors("wsd", 100, "scheduler.warmup_steps=10", "scheduler.decay_ratio=0.2")
    assert f[4] == pytest.approx(0.5)
    assert all(x == 1.0 for x in f[10:81])  # stable: the full lr up to the decay's start
    assert f[90] == pytest.approx(0.5) and f[100] == 0.0  # linear over the last 20 steps
    sqrt = _factors("wsd", 100, "scheduler.warmup_steps=0", "scheduler.decay_shape=sqrt")
    assert sqrt[90] == pytest.approx(1 - math.sqrt(0.5)) and sqrt[79] == 1.0


def test_a_bad_wsd_shape_is_a_config_error():
    cfg = compose_cfg(["optim=adamw", "scheduler=wsd", "scheduler.decay_shape=cubic"])
    opt = build_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ConfigError, match="decay_shape one of"):
        build_scheduler(cfg.scheduler, opt, steps_per_epoch=10, epochs=1)


def test_wsd_takes_its_horizon_from_a_step_budget(corpus_dir, cache_dir, tmp_path):
    from conftest import tiny_overrides
    from lmx.train import train

    extra = ("optim=adamw", "scheduler=wsd", "scheduler.warmup_steps=2", "trainer.epochs=5",
             "trainer.limit_train_batches=10", "trainer.max_steps=20")  # fmt: skip
    metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    # the decay spans points 16-20 of the curve; step 20 trains at point 19, 3/4 of the way
    assert metrics["steps"] == 20 and metrics["history"][-1]["lr"] == pytest.approx(0.25)
    assert metrics["history"][0]["lr"] == pytest.approx(1.0)  # step 10: still stable (tiny lr)


def test_weight_decay_groups_hold_the_right_tensors_by_name(caplog):
    from lmx.models.transformer import TransformerLM

    caplog.set_level("INFO")
    model = TransformerLM(50, d_model=16, nhead=2, d_hid=32, nlayers=1, norm_first=True)
    cfg = compose_cfg(["optim=adamw", "optim.weight_decay=0.1"])
    opt = build_optimizer(cfg.optim, model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert set(decayed) == {
        "embedding.weight",
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.0.self_attn.out_proj.weight",
        "encoder.layers.0.linear1.weight",
        "encoder.layers.0.linear2.weight",
        "decoder.weight",
    }
    assert all(n.endswith("bias") or ".norm" in n or n.startswith("encoder.norm") for n in plain)
    assert "encoder.layers.0.norm1.weight" in plain and "decoder.bias" in plain
    assert len(decayed) + len(plain) == len(list(model.parameters()))
    assert "optim: weight decay 0.1 on 6 tensors" in caplog.text
    # decay_all: one group, everything decayed (lmx before the groups)
    every = build_optimizer(compose_cfg(["optim=adamw", "optim.decay_all=true"]).optim, model)
    assert len(every.param_groups) == 1 and every.param_groups[0]["weight_decay"] == 0.01
    # No weight decay (the tutorial's SGD): one group, as before
    assert len(build_optimizer(compose_cfg().optim, model).param_groups) == 1


def test_plateau_divides_the_lr_after_each_validation_that_does_not_improve():
    from lmx.config.schema import Interval
    from lmx.training.optim import Schedule, build_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = build_scheduler(compose_cfg(["scheduler=plateau"]).scheduler, optimizer, 10, 3)
    assert isinstance(schedule, Schedule) and schedule.interval == Interval.validation
    lrs = []
    for loss in (3.0, 2.5, 2.6, 2.4, 2.4, 2.3):  # a tie is no improvement (threshold 0)
        schedule.after_validation(whole_epoch=False, val_loss=loss)  # mid-epoch counts too
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.25, 0.25, 0.0625, 0.0625]


def test_plateau_resumes_with_its_best_and_counters(corpus_dir, cache_dir, tmp_path, monkeypatch):

    from lmx.train import train
    from lmx.training.signals import Interrupted

    overrides = tiny_overrides(corpus_dir, cache_dir, "scheduler=plateau", "optim.lr=8.0",
                               "trainer.val_every_steps=4", "trainer.epochs=3")  # fmt: skip
    full = train(compose_cfg(overrides), tmp_path / "full")
    lrs = [h["lr"] for h in full["history"]]
    pairs = itertools.pairwise(full["history"])
    drops = [h["step"] for h, after in pairs if after["lr"] < h["lr"]]  # validations that cut
    assert len(drops) >= 2, lrs
    # Stop just before the last cut: a scheduler that lost its best would see an improvement.
    stop_at = drops[-1] - 1

    sigint_after_step(monkeypatch, stop_at)
    with pytest.raises(Interrupted):
        train(compose_cfg(overrides), tmp_path / "resumed")
    monkeypatch.undo()
    resumed = train(compose_cfg([*overrides, "trainer.resume=auto"]), tmp_path / "resumed")
    assert [h["lr"] for h in resumed["history"]] == lrs
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in full["history"]]


@pytest.mark.parametrize("group", ["sgd", "adamw"])
def test_any_torch_optimizer_builds_from_either_group(group):
    # the group's keys the new class does not take (SGD's nesterov, AdamW's betas) hold their
    # defaults, so they are left out; the added one goes in
    cfg = compose_cfg([f"optim={group}", "optim._target_=torch.optim.RMSprop", "+optim.alpha=0.8"])
    optimizer = build_optimizer(cfg.optim, torch.nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["alpha"] == 0.8 and optimizer.defaults["lr"] == cfg.optim.lr


def test_a_scheduler_of_another_class_builds_without_the_groups_extra_keys():
    cfg = compose_cfg(
        ["scheduler=step", "scheduler._target_=torch.optim.lr_scheduler.ExponentialLR"]
    )
    optimizer = build_optimizer(cfg.optim, torch.nn.Linear(2, 2))
    schedule = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=10, epochs=2)
    assert isinstance(schedule.scheduler, torch.optim.lr_scheduler.ExponentialLR)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["optim._target_=torch.optim.Adagrad", "optim.momentum=0.9"],
         "optim.momentum=0.9: torch.optim.Adagrad takes no argument 'momentum' (its default 0.0 "
         "leaves it out)"),
        (["+optim.alhpa=0.9"], "optim.alhpa=0.9: torch.optim.SGD takes no argument 'alhpa'"),
    ],
)  # fmt: skip
def test_an_argument_the_optimizer_does_not_take_is_refused_before_any_work(overrides, expected):
    from lmx.config.rules import config_problems

    cfg = compose_cfg(overrides)
    assert expected in config_problems(cfg)
    with pytest.raises(ConfigError, match="takes no argument"):
        build_optimizer(cfg.optim, torch.nn.Linear(2, 2))
