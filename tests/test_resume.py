"""Resume: a run stopped at any point and resumed equals the uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, compose_cfg, run_cli, tiny_overrides
from lmx.errors import CheckpointError
from lmx.train import train
from lmx.training.checkpoint import load_checkpoint
from lmx.training import loop
from lmx.training.signals import Interrupted

# Dropout on, so that a resume that lost the RNG state would draw different masks.
RESUMABLE = (
    "trainer.epochs=3",
    "trainer.log_interval=1",
    "trainer.checkpoint_every_steps=5",
    "model.dropout=0.3",
    "optim=adamw",
    "optim.lr=0.01",
    "scheduler=cosine",
    "scheduler.warmup_steps=10",
)


def _params(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt").model


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _train_losses(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def assert_same_run(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), f"{name} differs"
    ma, mb = _metrics(a), _metrics(b)
    for key in ("steps", "best_val_loss", "best_epoch", "test_loss"):
        assert ma[key] == mb[key], key
    trajectory = [(h["train_loss"], h["val_loss"], h["lr"]) for h in ma["history"]]
    assert trajectory == [(h["train_loss"], h["val_loss"], h["lr"]) for h in mb["history"]]


def test_a_run_stopped_by_sigint_and_resumed_equals_the_uninterrupted_run(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    overrides = tiny_overrides(corpus_dir, cache_dir, *RESUMABLE)
    full = train(compose_cfg(overrides), tmp_path / "full")
    stop_at = full["steps"] // 3 + 2  # mid-epoch 2, between two periodic checkpoints

    step, calls = loop.train_step, []

    def step_then_sigint(*args, **kwargs):
        out = step(*args, **kwargs)
        calls.append(1)
        if len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled between steps
        return out

    monkeypatch.setattr(loop, "train_step", step_then_sigint)
    with pytest.raises(Interrupted, match=f"stopped after step {stop_at} .*trainer.resume=auto"):
        train(compose_cfg(overrides), tmp_path / "resumed")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt").progress
    assert saved["step"] == stop_at and saved["epoch"] == 2 and saved["batch"] > 0

    train(compose_cfg([*overrides, "trainer.resume=auto"]), tmp_path / "resumed")
    assert_same_run(tmp_path / "full", tmp_path / "resumed")
    # TensorBoard: every step logged once, with the uninterrupted run's values.
    assert _train_losses(tmp_path / "resumed") == _train_losses(tmp_path / "full")


def test_sigkill_then_resume_equals_the_uninterrupted_run(corpus_dir, cache_dir, tmp_path):
    args = tiny_overrides(corpus_dir, cache_dir, *RESUMABLE, "trainer.resume=auto")
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'full'}")
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmx.train", *args, f"hydra.run.dir={killed}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "last.pt").is_file():  # the first periodic save
        assert proc.poll() is None and time.time() < deadline, "the run ended before a save"
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert _metrics(killed)["status"] != "done" if (killed / "metrics.json").is_file() else True

    proc = run_cli(*args, f"hydra.run.dir={killed}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in (killed / "train.log").read_text()
    assert_same_run(tmp_path / "full", killed)


def test_resume_auto_without_a_checkpoint_starts_fresh(corpus_dir, cache_dir, tmp_path):
    cfg = compose_cfg(
        tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1", "trainer.resume=auto")
    )
    assert train(cfg, tmp_path / "run")["status"] == "done"


def test_resume_from_a_path_checks_the_config(corpus_dir, cache_dir, tmp_path):
    first = tmp_path / "first"
    train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1")), first)
    # From another run dir, with one more epoch: continues at epoch 2.
    cfg = compose_cfg(
        tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=2", f"trainer.resume={first}")
    )
    metrics = train(cfg, tmp_path / "second")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][0] == _metrics(first)["history"][0]

    changed = compose_cfg(
        tiny_overrides(
            corpus_dir, cache_dir, "model.d_model=32", "data.bptt=6", f"trainer.resume={first}"
        )
    )
    with pytest.raises(CheckpointError) as err:
        train(changed, tmp_path / "third")
    message = str(err.value)
    assert "model.d_model: checkpoint 16, this run 32" in message
    assert "data.bptt: checkpoint 8, this run 6" in message
    assert str(first) in message

    missing = compose_cfg(
        tiny_overrides(corpus_dir, cache_dir, f"trainer.resume={tmp_path / 'nowhere'}")
    )
    with pytest.raises(CheckpointError, match="nowhere: no such file or run dir"):
        train(missing, tmp_path / "fourth")
