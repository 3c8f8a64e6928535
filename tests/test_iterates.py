"""lmx.iterates: scoring consecutive SGD iterates continues the run the trainer would have."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, tiny_overrides
from lmx.iterates import iterate_losses, streams
from lmx.pretrained import load_trained
from lmx.train import train

# No dropout: the extra steps then draw nothing random and must equal the trainer's steps.
CPU = torch.device("cpu")
ONE_EPOCH = ("model.dropout=0.0", "trainer.epochs=1", "trainer.limit_eval_batches=3")


def test_iterates_end_where_a_longer_run_ends(corpus_dir, cache_dir, tmp_path):
    def run(steps: int, name: str) -> dict:
        extra = (*ONE_EPOCH, f"trainer.limit_train_batches={steps}")
        return train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / name)

    short, longer = run(4, "short"), run(7, "longer")
    trained = load_trained(tmp_path / "short", [])
    losses = iterate_losses(trained.model, trained.cfg, *streams(trained.cfg, CPU), CPU, 4, 4, 3)
    assert len(losses) == 4
    assert losses[0] == pytest.approx(short["best_val_loss"], rel=1e-6)  # the model as loaded
    assert losses[-1] == pytest.approx(longer["best_val_loss"], rel=1e-5)  # after steps 5-7
    assert len(set(losses)) == 4  # every step moved the model


def test_iterates_refuse_an_optimizer_with_state(corpus_dir, cache_dir):
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, "optim=adamw"))
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="plain SGD"):
        iterate_losses(model, cfg, *streams(cfg, CPU), CPU, 0, 2, 1)
