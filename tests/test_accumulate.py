"""Gradient accumulation: trainer.accumulate=K splits each batch's rows into K micro-batches
and makes one update; the batch, its order and its mean loss stay those of K=1."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_cfg, tiny_overrides
from lmx.train import train
from lmx.training.checkpoint import load_checkpoint

# No dropout, so that the settings draw nothing differently. Plain SGD: Adam would blow the
# rounding noise on gradients that are zero in exact arithmetic (the attention's key bias)
# up to whole lr-sized steps, which says nothing about accumulation.
EXACT = ("model.dropout=0", "trainer.epochs=1", "trainer.limit_train_batches=12",
         "trainer.log_interval=1", "optim.lr=0.5")  # fmt: skip


def _losses(run_dir) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


@pytest.mark.parametrize("extra", [(), ("model.fused_loss=false",), ("device.precision=bf16",)])
def test_two_micro_batches_follow_one_batch(corpus_dir, cache_dir, tmp_path, extra):
    runs = {}
    for k in (1, 2, 3):  # 3 does not divide the 4 rows: micro-batches of 2, 1 and 1 rows
        args = tiny_overrides(corpus_dir, cache_dir, *EXACT, *extra, f"trainer.accumulate={k}")
        runs[k] = (train(compose_cfg(args), tmp_path / f"k{k}"), tmp_path / f"k{k}")
    tol = 2e-2 if extra == ("device.precision=bf16",) else 1e-5
    base_metrics, base_dir = runs[1]
    base = load_checkpoint(base_dir / "checkpoints" / "last.pt").model
    for k in (2, 3):
        metrics, run_dir = runs[k]
        assert metrics["steps"] == base_metrics["steps"] == 12
        assert _losses(run_dir) == pytest.approx(_losses(base_dir), rel=tol)
        weights = load_checkpoint(run_dir / "checkpoints" / "last.pt").model
        for name, w in base.items():
            torch.testing.assert_close(weights[name], w, rtol=tol, atol=tol, msg=name)


def test_accumulation_needs_whole_rows(tmp_path):
    from lmx.config.rules import config_problems

    problems = config_problems(compose_cfg(["data.batch_size=4", "trainer.accumulate=8"]))
    assert any("trainer.accumulate=8 needs at least as many batch rows" in p for p in problems)
