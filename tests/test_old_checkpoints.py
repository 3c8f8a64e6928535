"""Runs on disk keep working: a run written by lmx before its package layout changed
(tests/fixtures/v0_run, see its README) evaluates, generates and resumes with today's lmx."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose_cfg, run_module
from lmx.evaluate import evaluate_checkpoint
from lmx.generate import generate
from lmx.train import train
from lmx.training.checkpoint import load_checkpoint

FIXTURE = REPO / "tests" / "fixtures" / "v0_run"


def fixture_overrides() -> list[str]:
    """The overrides the fixture was trained with, as its run recorded them, less where its
    data, cache and run dir were."""
    recorded = OmegaConf.load(FIXTURE / "run" / ".hydra" / "overrides.yaml")
    skip = ("data.local_dir=", "data.cache_dir=", "hydra.")
    return [str(o) for o in recorded if not str(o).startswith(skip)]


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A writable copy of the fixture run (resume writes into it)."""
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run_dir)
    return run_dir


def test_the_fixture_is_from_before_the_layout_change():
    raw = torch.load(FIXTURE / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert raw["config"]["model"]["_target_"] == "lmx.model.TransformerLM"
    assert raw["config"]["scheduler"]["_target_"] == "lmx.schedulers.WarmupCosineLR"
    assert raw["config"]["data"]["local_dir"] == "corpus" and "format" not in raw
    ckpt = load_checkpoint(FIXTURE / "run" / "checkpoints" / "best.pt")
    assert ckpt.format == 1 and ckpt.config["model"]["_target_"].startswith("lmx.models.")


def test_an_old_checkpoint_evaluates_to_the_test_ppl_it_recorded(tmp_path):
    recorded = json.loads((FIXTURE / "run" / "metrics.json").read_text())
    result = evaluate_checkpoint(
        FIXTURE / "run",
        "test",
        [f"data.local_dir={FIXTURE / 'corpus'}", f"data.cache_dir={tmp_path / 'cache'}"],
    )
    assert math.isclose(result["ppl"], recorded["test_ppl"], rel_tol=1e-4)
    assert not result["partial"]


def test_an_old_checkpoint_generates_and_evaluates_from_the_command_line(tmp_path):
    data = f"data.local_dir={FIXTURE / 'corpus'}"
    proc = run_module("lmx.evaluate", f"ckpt={FIXTURE / 'run'}", data, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test: loss" in proc.stdout
    [text] = generate(FIXTURE / "run", "the cat", max_new_tokens=5, seed=1)
    assert text.startswith("the cat") and len(text.split()) == 7


def test_an_old_run_resumes_to_train_longer(old_run, tmp_path, caplog):
    # The fixture ran 1 epoch of a cosine schedule planned for 1 epoch: its lr ended at 0.
    overrides = [
        *fixture_overrides(),
        f"data.local_dir={FIXTURE / 'corpus'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.epochs=2",
        "trainer.resume=auto",
    ]
    caplog.set_level(logging.INFO)
    metrics = train(compose_cfg(overrides), old_run)
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2] and metrics["steps"] == 2 * history[0]["step"]
    assert history[0]["lr"] == 0.0  # as the old run recorded it
    # Epoch 2 trained: the schedule moved to the 2-epoch horizon, so the model changed.
    assert history[1]["val_loss"] != history[0]["val_loss"]
    epoch2 = [r.getMessage() for r in caplog.records if r.getMessage().startswith("| epoch   2")]
    lrs = [float(line.split("| lr ")[1].split()[0]) for line in epoch2]
    assert len(lrs) >= 3 and all(lr > 0 for lr in lrs[:-1])  # the floor only at the last step
    assert "resume: changed since the checkpoint" in caplog.text and "trainer.epochs" in caplog.text
    last = load_checkpoint(old_run / "checkpoints" / "last.pt")
    assert last.format == 3
    # It was written before weight-decay groups (AdamW, one group): it goes on decaying all.
    assert "goes on with optim.decay_all=true" in caplog.text
    assert last.config["optim"]["decay_all"] is True and len(last.optimizer["param_groups"]) == 1
