"""Budgets: training ends at trainer.epochs, trainer.max_steps or trainer.max_time, whichever
comes first, then validates and tests as a normal end does; a step schedule's horizon is the
budget's."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_cfg, run_cli, run_python, sigint_after_step, tiny_overrides
from lmx.train import train
from lmx.training.budget import Budget, parse_duration
from lmx.training.checkpoint import load_checkpoint

COSINE = ("optim=adamw", "optim.lr=1e-3", "scheduler=cosine", "scheduler.warmup_steps=0",
          "scheduler.min_lr_ratio=0.1", "trainer.log_interval=1")  # fmt: skip


def _lrs(run_dir) -> dict[int, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/lr")}


@pytest.mark.parametrize(
    "text,seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("2.5h", 9000)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_duration_without_a_unit_is_refused(tmp_path):
    proc = run_cli("trainer.max_time=90", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "trainer.max_time=90: '90' is not a duration: write it as 90s, 30m" in proc.stderr


def test_max_steps_stops_at_that_step_and_the_cosine_ends_at_its_floor(
    corpus_dir, cache_dir, tmp_path
):
    run_dir = tmp_path / "run"
    extra = (*COSINE, "trainer.epochs=3", "trainer.limit_train_batches=10", "trainer.max_steps=15")
    metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), run_dir)
    assert metrics["steps"] == 15 and metrics["stopped_by"] == "max_steps"
    assert metrics["test_ppl"] is not None and (run_dir / "checkpoints" / "best.pt").is_file()
    last = metrics["history"][-1]
    assert last["step"] == 15 and last["epoch"] == 2 and last["partial_epoch"] is True
    lrs = _lrs(run_dir)
    # step s trains at point s - 1 of the 15-step curve: the last one just above the floor
    floor, top = 1e-4, 1e-3
    assert max(lrs) == 15 and lrs[1] == pytest.approx(top, rel=1e-6)
    for s in (8, 15):
        expected = floor + (top - floor) * 0.5 * (1 + math.cos(math.pi * (s - 1) / 15))
        assert lrs[s] == pytest.approx(expected, rel=1e-5)


def test_max_time_stops_at_the_step_that_crosses_it_with_the_lr_at_its_floor(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    # A fake clock that advances 10 s per training step and not otherwise.
    from lmx.training import loop

    clock = {"t": 0.0}
    step = loop.train_step

    def ten_seconds(*args, **kwargs):
        clock["t"] += 10.0
        return step(*args, **kwargs)

    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(loop, "train_step", ten_seconds)
    run_dir = tmp_path / "run"
    extra = (*COSINE, "trainer.epochs=100", "trainer.limit_train_batches=10",
             "trainer.max_time=95s", "trainer.throughput_warmup_steps=2")  # fmt: skip
    metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), run_dir)
    assert metrics["steps"] == 10 and metrics["stopped_by"] == "max_time"  # 100 s >= 95 s
    assert metrics["test_ppl"] is not None
    lrs = _lrs(run_dir)
    peak, floor = 1e-3, 1e-4
    assert lrs[10] - floor <= 0.05 * (peak - floor)  # within 5% of the range above the floor
    assert lrs[5] > floor + 0.3 * (peak - floor)  # not at the floor long before the end


def test_best_pt_carries_the_runs_wall_time_as_last_pt_does(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    # A kill between the two writes resumes from best.pt: its clock must be right too.
    from lmx.training import loop

    clock, step = {"t": 0.0}, loop.train_step

    def ten_seconds(*args, **kwargs):
        clock["t"] += 10.0
        return step(*args, **kwargs)

    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(loop, "train_step", ten_seconds)
    extra = ("trainer.epochs=1", "trainer.limit_train_batches=4")
    train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        progress = load_checkpoint(tmp_path / "run" / "checkpoints" / name).progress
        assert progress["wall_seconds"] == 40.0, name


def test_a_larger_budget_on_resume_finishes_the_open_epoch_as_one_run_would(
    corpus_dir, cache_dir, tmp_path
):
    # SGD + StepLR per epoch, dropout on: the partial validation at step 15 must not step the
    # epoch schedule or disturb the RNG, so 15 then 20 steps equals 20 steps.
    args = tiny_overrides(
        corpus_dir,
        cache_dir,
        "trainer.epochs=3",
        "trainer.limit_train_batches=10",
        "trainer.log_interval=1",  # every step's loss, for the comparison script below
    )
    straight = train(compose_cfg([*args, "trainer.max_steps=20"]), tmp_path / "straight")
    train(compose_cfg([*args, "trainer.max_steps=15"]), tmp_path / "resumed")
    resumed = train(compose_cfg([*args, "trainer.max_steps=20", "trainer.resume=auto"]),
                    tmp_path / "resumed")  # fmt: skip
    assert resumed["steps"] == straight["steps"] == 20
    assert [h["step"] for h in resumed["history"]] == [10, 15, 20]
    assert [h["step"] for h in straight["history"]] == [10, 20]
    assert resumed["history"][-1]["lr"] == straight["history"][-1]["lr"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt").model
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert saved["stopped_by"] == "max_steps"
    # the comparison script says the same, the resumed run's extra validation set aside
    proc = run_python("benchmarks/compare_runs.py", str(tmp_path / "resumed"),
                      str(tmp_path / "straight"), "--tol", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"validated by {tmp_path / 'resumed'} alone (not compared): step(s) 15" in proc.stdout


def test_the_time_estimate_follows_the_pace_and_the_other_limits():
    budget = Budget(epochs=3, steps_per_epoch=100, max_steps=250, max_time_s=1000.0)
    assert budget.planned_steps() == 250
    assert budget.estimate_steps(step=50, wall_s=200.0, paced_steps=40, paced_s=160.0) == 250
    slow = Budget(epochs=3, steps_per_epoch=100, max_time_s=1000.0)
    assert slow.estimate_steps(step=50, wall_s=500.0, paced_steps=50, paced_s=500.0) == 100
    assert slow.spent(100, 999.0) is None and slow.spent(101, 1000.0) == "max_time"
    assert math.isclose(slow.estimate_steps(50, 500.0, 0, 0.0), 300)  # no pace yet: the plan


@pytest.mark.parametrize(
    "losses,patience,min_delta,stops_after",
    [
        ([5.0, 4.0, 4.0, 4.0, 3.0, 2.0], 2, 0.0, 4),  # a plateau at 4.0: epochs 3 and 4 stale
        ([5.0, 4.8, 4.7, 4.6, 4.5, 4.4], 2, 0.5, 3),  # improvements smaller than min_delta
        ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], 2, 0.0, 6),  # always better: all epochs
    ],
)
def test_early_stopping_on_a_plateau_made_on_purpose(
    corpus_dir, cache_dir, tmp_path, monkeypatch, losses, patience, min_delta, stops_after
):
    from lmx.perplexity import Score
    from lmx.training import loop

    scores = iter(losses)
    monkeypatch.setattr(loop, "evaluate",
                        lambda *a, **k: Score(next(scores, 9.0), 10, 10))  # fmt: skip
    extra = ("trainer.epochs=6", "trainer.limit_train_batches=2",
             f"trainer.early_stop.patience={patience}",
             f"trainer.early_stop.min_delta={min_delta}")  # fmt: skip
    metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    assert metrics["epochs"] == stops_after
    if stops_after < 6:
        assert metrics["stopped_by"] == "early_stop"
        assert (
            f"in {patience} validations (trainer.early_stop.patience={patience})"
            in (metrics["stop_reason"])
        )
    else:
        assert metrics["stopped_by"] == "epochs" and metrics["stop_reason"] is None


def test_mid_epoch_validation_keeps_the_best_at_any_validation_and_leaves_training_alone(
    corpus_dir, cache_dir, tmp_path, monkeypatch, caplog
):
    from lmx.perplexity import Score
    from lmx.training import loop

    args = tiny_overrides(
        corpus_dir, cache_dir, "trainer.epochs=2", "trainer.limit_train_batches=10"
    )
    plain = train(compose_cfg(args), tmp_path / "plain")  # dropout on: RNG and train mode matter
    evaluate, calls = loop.evaluate, []

    def best_at_step_8(model, source, *a, **k):
        score = evaluate(model, source, *a, **k)
        calls.append(1)
        return Score(1.0 if len(calls) == 2 else 2.0 + len(calls), score.tokens, score.total)

    monkeypatch.setattr(loop, "evaluate", best_at_step_8)
    caplog.set_level("INFO")
    mid = train(compose_cfg([*args, "trainer.val_every_steps=4"]), tmp_path / "mid")
    assert [h["step"] for h in mid["history"]] == [4, 8, 10, 12, 16, 20]  # every 4 steps
    assert [bool(h.get("partial_epoch")) for h in mid["history"]] == [1, 1, 0, 1, 1, 0]
    assert mid["epochs"] == 2 and mid["best_val_loss"] == 1.0 and mid["best_epoch"] == 1
    assert load_checkpoint(tmp_path / "mid" / "checkpoints" / "best.pt").step == 8
    assert "| epoch   1, step      4 |" in caplog.text
    a = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt").model
    b = load_checkpoint(tmp_path / "mid" / "checkpoints" / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a)  # the validations changed no training step
    assert mid["steps"] == plain["steps"] == 20


def test_a_validation_due_when_a_signal_stopped_the_run_happens_on_resume(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):

    from lmx.training.signals import Interrupted

    # a per-step schedule: the validation after the resume records the lr step 4 trained at
    extra = (*COSINE, "trainer.epochs=2", "trainer.limit_train_batches=10",
             "trainer.val_every_steps=4")  # fmt: skip
    args = tiny_overrides(corpus_dir, cache_dir, *extra)
    straight = train(compose_cfg(args), tmp_path / "straight")
    sigint_after_step(monkeypatch, 4)  # a validation is due after this step
    with pytest.raises(Interrupted):
        train(compose_cfg(args), tmp_path / "resumed")
    monkeypatch.undo()
    resumed = train(compose_cfg([*args, "trainer.resume=auto"]), tmp_path / "resumed")
    steps = [h["step"] for h in resumed["history"]]
    assert steps == [h["step"] for h in straight["history"]] == [4, 8, 10, 12, 16, 20]
    for key in ("val_loss", "lr"):
        assert [h[key] for h in resumed["history"]] == [h[key] for h in straight["history"]]


def test_a_stride_longer_than_the_context_is_refused_wherever_it_comes_from():
    from lmx.errors import ConfigError
    from lmx.perplexity import evaluate

    model = torch.nn.Identity()
    with pytest.raises(ConfigError, match=r"eval.stride=9 must be in \[1, eval.context=8\]"):
        evaluate(model, torch.zeros(2, 20, dtype=torch.long), 8, torch.device("cpu"), stride=9)
