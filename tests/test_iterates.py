"""lmx.bench.iterates: scoring consecutive SGD iterates continues the run the trainer would have."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg, run_python, tiny_overrides
from lmx.bench.iterates import iterate_losses, train_valid_rows
from lmx.models.pretrained import load_trained
from lmx.stats import compare_settings
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
    rows = train_valid_rows(trained.cfg, CPU)
    losses = iterate_losses(trained.model, trained.cfg, *rows, CPU, 4, 4, 3)
    assert len(losses) == 4
    assert losses[0] == pytest.approx(short["best_val_loss"], rel=1e-6)  # the model as loaded
    assert losses[-1] == pytest.approx(longer["best_val_loss"], rel=1e-5)  # after steps 5-7
    assert len(set(losses)) == 4  # every step moved the model

    # the lr argument stands in for the configured one (val_noise passes a decayed lr)
    half = compose_cfg(tiny_overrides(corpus_dir, cache_dir, *ONE_EPOCH, "optim.lr=0.5"))
    at_half = []
    for cfg, lr in ((half, None), (trained.cfg, 0.5)):
        model = load_trained(tmp_path / "short", []).model  # a fresh copy for each probe
        at_half.append(iterate_losses(model, cfg, *train_valid_rows(cfg, CPU), CPU, 4, 3, 3, lr))
    assert at_half[0] == at_half[1] and at_half[0][1:] != losses[1:3]


def test_iterates_refuse_an_optimizer_with_state(corpus_dir, cache_dir):
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, "optim=adamw"))
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="plain SGD"):
        iterate_losses(model, cfg, *train_valid_rows(cfg, CPU), CPU, 0, 2, 1)


def test_compare_settings_weighs_each_run_by_its_mean():
    # run means: a 1.0 and 1.2, b 1.1 and 1.5 -> b - a = 0.2 in log space; each setting's
    # squared standard error is the variance of its run means over 2: 0.01 and 0.04
    a = [[0.9, 1.1], [1.2, 1.2]]
    b = [[1.1], [1.4, 1.6]]
    c = compare_settings(a, b)
    assert c["ppl_a"] == pytest.approx(math.exp(1.1))
    assert c["ppl_b"] == pytest.approx(math.exp(1.3))
    assert c["b_vs_a_pct"] == pytest.approx(100 * math.expm1(0.2))
    assert c["se_pct"] == pytest.approx(100 * math.sqrt(0.05))
    with pytest.raises(ValueError, match="at least two runs"):
        compare_settings(a, b[:1])


def test_val_noise_records_each_run_and_compares_two_settings(corpus_dir, cache_dir, tmp_path):
    runs = []
    for seed in range(5):  # the last one scored on part of the validation split only
        extra = (*ONE_EPOCH, "trainer.limit_train_batches=4", f"trainer.seed={seed}")
        extra += ("trainer.limit_eval_batches=1",) if seed == 4 else ()
        cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra))
        train(cfg, tmp_path / f"s{seed}")
        runs.append(str(tmp_path / f"s{seed}"))
    # the probe starts from last.pt (the model after all the run's steps), never best.pt
    (Path(runs[0]) / "checkpoints" / "best.pt").write_bytes(b"not read")
    script = ["benchmarks/val_noise.py", "--steps", "3", "--batches", "2"]
    script += ["--data", str(corpus_dir)]
    first = run_python(*script, runs[0], runs[1])
    assert first.returncode == 0, first.stderr
    assert "(recorded)" not in first.stdout and "--vs" not in first.stdout
    records = [json.loads((Path(r) / "val_iterates.json").read_text()) for r in runs[:2]]
    assert [len(r["val_losses"]) for r in records] == [3, 3]
    assert records[0]["lr"] == pytest.approx(0.95)  # optim.lr 1.0 after StepLR's epoch decay
    losses = [r["val_losses"] for r in records]
    # runs 0 and 1 read back from their records, runs 2 and 3 computed; {0, 1} vs {2, 3}
    both = run_python(*script, runs[0], runs[1], "--vs", runs[2], runs[3])
    assert both.returncode == 0, both.stderr
    assert both.stdout.count("(recorded)") == 2
    for r in runs[2:4]:
        losses.append(json.loads((Path(r) / "val_iterates.json").read_text())["val_losses"])
    train_losses = [
        json.loads((Path(r) / "metrics.json").read_text())["history"][0]["train_loss"] for r in runs
    ]
    # each table row: setting {0, 1}'s ppl, setting {2, 3}'s, and the difference of the means
    for name, per_run in (
        ("valid ppl, 3 consecutive models, first 2 batches", [statistics.fmean(x) for x in losses]),
        ("train ppl, mean over epoch 1", train_losses),
    ):
        a, b = (per_run[0] + per_run[1]) / 2, (per_run[2] + per_run[3]) / 2
        row = (
            f"| {name} | {math.exp(a):.2f} | {math.exp(b):.2f} | {100 * math.expm1(b - a):+.2f}% |"
        )
        assert row in both.stdout, both.stdout
    one_each = run_python(*script, runs[0], "--vs", runs[2])
    assert one_each.returncode != 0 and "at least two runs" in one_each.stderr
    assert "| measure |" not in one_each.stdout  # no half table before the refusal
    twice = run_python(*script, runs[0], runs[1], "--vs", runs[2], runs[1])
    assert twice.returncode != 0 and "are one training run" in twice.stderr  # not 2 samples
    partial = run_python(*script, runs[0], runs[1], "--vs", runs[2], runs[4])
    assert partial.returncode != 0 and "scored on other data, tokens or windows" in partial.stderr
    assert f"{runs[4]}: " in partial.stderr and "partial: val" in partial.stderr
    no_data = run_python(*script[:-1], "/no/such/folder", runs[2], "--fresh")
    assert no_data.returncode != 0 and "Traceback" not in no_data.stderr
    assert "no such folder" in no_data.stderr
