"""Weight averaging (trainer.ema): the average is validated, kept as best and tested; the raw
weights train on and resume; both validation losses are recorded."""

from __future__ import annotations

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_cfg, run_python, tiny_overrides
from lmx.evaluate import evaluate_checkpoint
from lmx.models.transformer import TransformerLM
from lmx.train import train
from lmx.training.averaging import WeightAverage
from lmx.training.checkpoint import load_checkpoint


def test_the_average_follows_its_formula_and_swaps_in_and_out_exactly():
    torch.manual_seed(0)
    model = TransformerLM(30, d_model=8, nhead=2, d_hid=8, nlayers=1, tie_weights=True)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    average = WeightAverage(model, decay=0.75, start_step=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(1)  # up to start_step: the average is the weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    average.update(2)  # 0.75 * (w0 + 1) + 0.25 * (w0 + 5) = w0 + 2
    with average.applied():
        for n, p in model.named_parameters():
            torch.testing.assert_close(p, w0[n] + 2.0)
        assert model.decoder.weight is model.embedding.weight  # still tied
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, w0[n] + 5.0)  # its own weights back, unchanged
    assert not WeightAverage(model, decay=None).on


def test_a_run_validates_and_tests_the_average(corpus_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(corpus_dir, cache_dir, "trainer.ema.decay=0.9")
    metrics = train(compose_cfg(args), run_dir)
    for h in metrics["history"]:
        assert math.isfinite(h["val_loss"]) and h["val_loss"] != h["val_loss_raw"]
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best.ema is not None and best.ema["decay"] == 0.9
    assert not torch.equal(best.ema["weights"]["decoder.weight"], best.model["decoder.weight"])
    assert metrics["best_val_loss"] == min(h["val_loss"] for h in metrics["history"])
    # Scoring the checkpoint uses the average: the recorded test ppl again.
    result = evaluate_checkpoint(run_dir, "test")
    assert result["ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-5)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    raw = [e.value for e in events.Scalars("val/ppl_raw")]
    assert raw == pytest.approx([h["val_ppl_raw"] for h in metrics["history"]], rel=1e-5)


def test_ema_settings_are_checked():
    from lmx.config.rules import config_problems

    problems = config_problems(compose_cfg(["trainer.ema.decay=1.5"]))
    assert "trainer.ema.decay=1.5 must be in (0, 1) or null" in problems


def test_an_average_switched_on_at_resume_starts_from_the_restored_weights():
    torch.manual_seed(0)
    model = TransformerLM(30, d_model=8, nhead=2, d_hid=8, nlayers=1)
    average = WeightAverage(model, decay=0.9)  # built before the checkpoint is loaded
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the restored weights
    assert average.load_state_dict(None) is False  # the checkpoint had no average
    for n, p in model.named_parameters():
        torch.testing.assert_close(average.weights[n], p.detach())


def test_the_ema_gain_benchmark_compares_average_and_raw_weights(corpus_dir, cache_dir, tmp_path):
    runs = []
    for seed in (0, 1):
        args = tiny_overrides(
            corpus_dir, cache_dir, "trainer.ema.decay=0.9", f"trainer.seed={seed}"
        )
        metrics = train(compose_cfg(args), tmp_path / f"s{seed}")
        runs.append((tmp_path / f"s{seed}", metrics["history"][-1]))
    proc = run_python("benchmarks/ema_gain.py", *(str(d) for d, _ in runs))
    assert proc.returncode == 0, proc.stderr
    for run_dir, last in runs:  # each run's last epoch, both ways, as metrics.json has them
        line = next(x for x in proc.stdout.splitlines() if str(run_dir) in x)
        ema, raw = math.exp(last["val_loss"]), math.exp(last["val_loss_raw"])
        assert line.rstrip().endswith(f"{ema:.2f} / {raw:.2f}")
    assert "last epoch: raw" in proc.stdout and "(paired SE)" in proc.stdout
    plain = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir)), tmp_path / "plain")
    assert plain["status"] == "done"
    proc = run_python("benchmarks/ema_gain.py", str(tmp_path / "plain"))
    assert proc.returncode != 0 and "run without trainer.ema" in proc.stderr


def test_settings_the_runs_length_leaves_idle_are_said(corpus_dir, cache_dir, tmp_path, caplog):
    extra = ("trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.ema.decay=0.9",
             "trainer.ema.start_step=100", "trainer.val_every_steps=10")  # fmt: skip
    with caplog.at_level("WARNING"):
        metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    assert "trainer.ema.start_step=100 is at or past the run's last step (4)" in caplog.text
    assert "trainer.val_every_steps=10 falls only on epoch ends or past the run's last step (4)" \
        in caplog.text  # fmt: skip
    assert metrics["history"][0]["val_loss"] == metrics["history"][0]["val_loss_raw"]
    caplog.clear()
    # every 6 steps of 4-step epochs: steps 6 and 18 fall inside epochs 2 and 5
    fine = ("trainer.epochs=5", "trainer.limit_train_batches=4", "trainer.ema.decay=0.9",
            "trainer.ema.start_step=2", "trainer.val_every_steps=6")  # fmt: skip
    with caplog.at_level("WARNING"):
        metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *fine)), tmp_path / "f")
    assert "start_step" not in caplog.text and "val_every_steps" not in caplog.text
    assert [h["step"] for h in metrics["history"] if h.get("partial_epoch")] == [6, 18]
    caplog.clear()
    ends = (
        "trainer.epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.val_every_steps=4",
        "trainer.ema.decay=0.5",
    )  # from step 0, but 0.5^8 of the average is under 1%
    with caplog.at_level("WARNING"):
        train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *ends)), tmp_path / "e")
    assert "trainer.val_every_steps=4 falls only on epoch ends" in caplog.text
    assert "random initial weights" not in caplog.text
    caplog.clear()
    early = ("trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.ema.decay=0.9")
    with caplog.at_level("WARNING"):
        train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *early)), tmp_path / "s")
    assert ("trainer.ema.decay=0.9 starts from the random initial weights, and after the run's "
            "4 steps they are still 66% of the average") in caplog.text  # fmt: skip
    # under a time budget the steps are known only at the end: 0.995^2000 planned is nothing,
    # but the second the budget gives is far fewer steps; said then, once
    caplog.clear()
    timed = ("trainer.epochs=500", "trainer.limit_train_batches=4", "trainer.ema.decay=0.995",
             "trainer.max_time=1s", "trainer.test=false")  # fmt: skip
    with caplog.at_level("WARNING"):
        m = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *timed)), tmp_path / "t")
    assert m["stopped_by"] == "max_time" and 0.995 ** m["steps"] > 0.01
    assert caplog.text.count(f"after the run's {m['steps']} steps they are still") == 1
