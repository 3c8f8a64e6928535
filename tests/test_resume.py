"""Resume: a run stopped at any point and resumed equals the uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import (
    compose_cfg,
    run_cli,
    sigint_after_step,
    sigkill_after_first_save,
    tiny_overrides,
)
from lmx.errors import CheckpointError, DataError
from lmx.runs.status import PROCESS_FILE
from lmx.train import train
from lmx.training.checkpoint import load_checkpoint
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
    ea, eb = (load_checkpoint(d / "checkpoints" / "last.pt").ema for d in (a, b))
    assert (ea is None) == (eb is None)
    for name in ea["weights"] if ea else ():
        assert torch.equal(ea["weights"][name], eb["weights"][name]), f"average {name} differs"
    ma, mb = _metrics(a), _metrics(b)
    for key in ("steps", "best_val_loss", "best_epoch", "test_loss"):
        assert ma[key] == mb[key], key
    trajectory = [(h["train_loss"], h["val_loss"], h["lr"]) for h in ma["history"]]
    assert trajectory == [(h["train_loss"], h["val_loss"], h["lr"]) for h in mb["history"]]


@pytest.mark.parametrize("extra", [(), ("trainer.accumulate=2", "trainer.ema.decay=0.9")])
def test_a_run_stopped_by_sigint_and_resumed_equals_the_uninterrupted_run(
    corpus_dir, cache_dir, tmp_path, monkeypatch, extra
):
    overrides = tiny_overrides(corpus_dir, cache_dir, *RESUMABLE, *extra)
    full = train(compose_cfg(overrides), tmp_path / "full")
    stop_at = full["steps"] // 3 + 2  # mid-epoch 2, between two periodic checkpoints

    sigint_after_step(monkeypatch, stop_at)
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(Interrupted, match=f"stopped after step {stop_at} .*trainer.resume=auto"):
        train(compose_cfg(overrides), tmp_path / "resumed")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is handler  # the handler from before, restored
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt").progress
    assert saved["step"] == stop_at and saved["epoch"] == 2 and saved["batch"] > 0

    train(compose_cfg([*overrides, "trainer.resume=auto"]), tmp_path / "resumed")
    assert_same_run(tmp_path / "full", tmp_path / "resumed")
    # TensorBoard: every step logged once, with the uninterrupted run's values.
    assert _train_losses(tmp_path / "resumed") == _train_losses(tmp_path / "full")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_on_a_gpu_stopped_by_sigint_resumes(
    corpus_dir, cache_dir, tmp_path, monkeypatch, caplog
):
    # The saved RNG states must restore on a GPU run, and AdamW's step count stay on the CPU
    # (a CUDA one costs a host read per parameter per step) while its moments go to the GPU.
    from lmx.runtime.distributed import World
    from lmx.training.build import build_run

    overrides = tiny_overrides(corpus_dir, cache_dir, *RESUMABLE, "device.type=cuda")
    sigint_after_step(monkeypatch, 7)
    with pytest.raises(Interrupted):
        train(compose_cfg(overrides), tmp_path / "run")
    monkeypatch.undo()
    resumed = compose_cfg([*overrides, "trainer.resume=auto"])
    run, _ = build_run(resumed, tmp_path / "run", World(), torch.device("cuda"))
    state = next(iter(run.optimizer.state.values()))
    assert state["step"].device.type == "cpu" and state["exp_avg"].is_cuda
    run.tb.close()
    del run
    with caplog.at_level("INFO"):
        metrics = train(resumed, tmp_path / "run")
    assert metrics["status"] == "done" and metrics["steps"] > 7
    assert "resuming from" in caplog.text


def test_the_first_log_window_after_a_mid_window_resume_times_this_process_only(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    # A clock that moves 1 s per training step, and nowhere else: each timed step is 1 s.
    from types import SimpleNamespace

    from lmx.training import loop

    window = ("trainer.epochs=1", "trainer.log_interval=4", "trainer.limit_train_batches=8")
    overrides = tiny_overrides(corpus_dir, cache_dir, *window)
    sigint_after_step(monkeypatch, 6)  # batches 5 and 6 of the window 5-8 in the first process
    with pytest.raises(Interrupted):
        train(compose_cfg(overrides), tmp_path / "run")
    monkeypatch.undo()
    clock, step = [0.0], loop.train_step

    def one_second_step(*args, **kwargs):
        clock[0] += 1.0
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", one_second_step)
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    train(compose_cfg([*overrides, "trainer.resume=auto"]), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    speed = {e.step: e.value for e in events.Scalars("train/tokens_per_s")}
    assert speed[8] == 4 * 8  # one batch (4 rows x bptt 8) per second, not two


def test_sigkill_then_resume_equals_the_uninterrupted_run(corpus_dir, cache_dir, tmp_path):
    # With accumulation and the weight average on: both must resume bit for bit too.
    extra = ("trainer.accumulate=2", "trainer.ema.decay=0.9", "trainer.resume=auto")
    args = tiny_overrides(corpus_dir, cache_dir, *RESUMABLE, *extra)
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'full'}")
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    sigkill_after_first_save(args, killed)
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

    elsewhere = tmp_path / "elsewhere"  # data the checkpoint's run did not read: it says which
    elsewhere.mkdir()
    moved = compose_cfg(tiny_overrides(elsewhere, cache_dir, f"trainer.resume={first}"))
    with pytest.raises(DataError, match="the train split is missing") as err:
        train(moved, tmp_path / "moved")
    assert f"The checkpoint's run read data.local_dir={corpus_dir}" in str(err.value)

    missing = compose_cfg(
        tiny_overrides(corpus_dir, cache_dir, f"trainer.resume={tmp_path / 'nowhere'}")
    )
    with pytest.raises(CheckpointError, match="nowhere: no such file or run dir"):
        train(missing, tmp_path / "fourth")


def _lrs(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/lr")}


def test_resuming_to_train_longer_follows_the_new_cosine_horizon(
    corpus_dir, cache_dir, tmp_path, caplog
):
    # The case: a 1-epoch cosine run, resumed to 3 epochs. The lr must not sit at 0.
    cosine = ("optim=adamw", "optim.lr=1e-3", "scheduler=cosine", "scheduler.warmup_steps=0",
              "trainer.log_interval=1", "trainer.limit_train_batches=10")  # fmt: skip
    run_dir = tmp_path / "run"
    first = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *cosine, "trainer.epochs=1")),
                  run_dir)  # fmt: skip
    # its last step trained at the 10-step curve's last point above its floor (0)
    assert first["history"][0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    caplog.set_level("INFO")
    longer = tiny_overrides(corpus_dir, cache_dir, *cosine, "trainer.epochs=3",
                            "trainer.resume=auto")  # fmt: skip
    metrics = train(compose_cfg(longer), run_dir)
    assert metrics["steps"] == 30
    lrs = _lrs(run_dir)  # at each step: the lr that step trained at
    assert sorted(lrs) == list(range(1, 31)) and all(lrs[s] > 0 for s in range(11, 31))
    # From step 11 on, the curve of a run planned for 30 steps: step s at point s - 1.
    for s in range(11, 31):
        assert lrs[s] == pytest.approx(
            1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 30)), rel=1e-5
        )
    assert "trainer.epochs: checkpoint 1, this run 3" in caplog.text
    assert "scheduler total_steps 10 -> 30" in caplog.text
    val = [h["val_loss"] for h in metrics["history"]]
    assert len(set(val)) == 3  # each epoch moved the model


def test_resume_takes_changes_that_act_on_later_steps_and_refuses_the_rest(
    corpus_dir, cache_dir, tmp_path, caplog
):
    first = tmp_path / "first"
    train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1")), first)
    caplog.set_level("INFO")
    # Dropout and the loss kernel may change on purpose: they act on the steps to come.
    on_purpose = tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=2", "model.dropout=0.1",
                                "model.fused_loss=false", f"trainer.resume={first}")  # fmt: skip
    metrics = train(compose_cfg(on_purpose), tmp_path / "second")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert "model.dropout: checkpoint 0.2, this run 0.1" in caplog.text
    assert "takes effect from the next step" in caplog.text
    # Optimizer settings and the seed live in the checkpoint's state: a change would not act.
    held = tiny_overrides(corpus_dir, cache_dir, "optim.lr=0.5", "trainer.seed=3",
                          f"trainer.resume={first}")  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        train(compose_cfg(held), tmp_path / "third")
    assert "optim.lr: checkpoint 1.0, this run 0.5" in str(err.value)
    assert "trainer.seed: checkpoint 0, this run 3" in str(err.value)


def test_the_newest_checkpoint_is_the_one_with_the_most_steps(tmp_path):
    from lmx.training.checkpoint import Checkpoint, newest_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoints"
    for name, step in (("last.pt", 12), ("best.pt", 5)):
        progress = {"step": step, "epoch": 2, "best_val_loss": 1.0}
        save_checkpoint(folder / name, Checkpoint(model={}, config={}, vocab_size=3,
                                                  progress=progress))  # fmt: skip
    future = time.time() + 60  # best.pt written last, e.g. copied back by hand
    os.utime(folder / "best.pt", (future, future))
    assert newest_checkpoint(folder) == folder / "last.pt"
    (folder / "last.pt").write_bytes(b"damaged")  # the other one still resumes
    assert newest_checkpoint(folder) == folder / "best.pt"


def test_resume_onto_fewer_gpus_restores_what_it_can_and_says_so(monkeypatch, caplog):
    from lmx.training import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i=0: restored.append(i))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.extend(range(len(s))))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [])
    state = checkpoint.rng_state()
    state["cuda"] = [torch.zeros(8, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)]
    checkpoint.set_rng_state(state)
    assert restored == [0]
    assert "RNG states of 2 GPU(s) and this machine has 1" in caplog.text


def test_a_new_epoch_length_moves_the_horizon_to_the_steps_taken_plus_those_to_come(
    corpus_dir, cache_dir, tmp_path
):
    cosine = ("optim=adamw", "optim.lr=1e-3", "scheduler=cosine", "scheduler.warmup_steps=0",
              "trainer.log_interval=1")  # fmt: skip
    run_dir = tmp_path / "run"
    first = tiny_overrides(corpus_dir, cache_dir, *cosine, "trainer.epochs=1",
                           "trainer.limit_train_batches=10")  # fmt: skip
    train(compose_cfg(first), run_dir)
    # Then epochs of 20 steps: 10 taken + 20 to come = 30, not 2 x 20.
    longer = tiny_overrides(corpus_dir, cache_dir, *cosine, "trainer.epochs=2",
                            "trainer.limit_train_batches=20", "trainer.resume=auto")  # fmt: skip
    metrics = train(compose_cfg(longer), run_dir)
    lrs = _lrs(run_dir)
    # step s trains at point s - 1 of the 30-step curve, the last just above its floor (0)
    assert metrics["steps"] == 30
    for s in (20, 30):
        assert lrs[s] == pytest.approx(
            1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 30)), rel=1e-5
        )


def test_a_schedule_that_cannot_move_its_horizon_refuses_a_new_length():
    from lmx.config.schema import Interval
    from lmx.training.budget import Budget
    from lmx.training.optim import Schedule
    from lmx.training.resume import ResumeRefused, _move_horizon

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    linear = torch.optim.lr_scheduler.LinearLR(opt, total_iters=10)
    schedule = Schedule(linear, Interval.step, horizon={"total_iters": 10})
    progress = {"step": 10, "epoch": 2, "batch": 0}
    _move_horizon(schedule, opt, progress, Budget(epochs=1, steps_per_epoch=10))  # same length
    with pytest.raises(ResumeRefused, match="LinearLR cannot move its horizon"):
        _move_horizon(schedule, opt, progress, Budget(epochs=3, steps_per_epoch=10))


def test_a_refused_resume_leaves_the_run_as_it_was(corpus_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1")
    train(compose_cfg(args), run_dir)
    config, metrics = (run_dir / "config.yaml").read_text(), _metrics(run_dir)
    process = (run_dir / PROCESS_FILE).read_text()  # the process that ran it (this one)
    proc = run_cli(*args, "optim.lr=0.5", "trainer.resume=auto", f"hydra.run.dir={run_dir}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "optim.lr: checkpoint 1.0, this run 0.5" in output
    assert (run_dir / "config.yaml").read_text() == config  # not the refused settings
    assert _metrics(run_dir) == metrics and not (run_dir / "error.txt").exists()
    assert (run_dir / PROCESS_FILE).read_text() == process  # a live run would still show live
    # a new run (no trainer.resume), or one resumed from another run's checkpoint, would
    # replace its checkpoints: refused before Hydra writes into the folder
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- the run's own\n")
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    other = tmp_path / "other"
    train(compose_cfg(args), other)
    for extra in ([], [f"trainer.resume={other}"], [f"trainer.resume={other}/checkpoints/last.pt"]):
        proc = run_cli(*args, *extra, f"hydra.run.dir={run_dir}", "model=gpt")
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and f"{run_dir} already holds a run" in output, extra
        assert "trainer.resume=auto continues it" in output
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- the run's own\n"


def test_the_run_dir_check_before_hydra_reads_only_what_it_must(tmp_path):
    from lmx.runs.status import check_single_run

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="already holds a run"):
        check_single_run([f"hydra.run.dir={run_dir}"])
    check_single_run([f"hydra.run.dir={run_dir}", "--cfg", "job"])  # prints, writes nothing
    check_single_run(["-m", f"hydra.run.dir={run_dir}"])  # a sweep: sweep.resume decides
    check_single_run([f"hydra.run.dir={run_dir}", "trainer.resume=auto"])
    check_single_run([f"hydra.run.dir={run_dir}", "trainer.resume=7"])  # no such run: it says


def test_a_run_resumed_from_another_run_dir_carries_its_best_model(
    corpus_dir, cache_dir, tmp_path, caplog
):
    first = tmp_path / "first"
    done = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1")), first)
    same = tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1", f"trainer.resume={first}")
    with caplog.at_level("INFO"):
        metrics = train(compose_cfg(same), tmp_path / "second")  # nothing left to train
    assert "past trainer.epochs=1 (whole epochs done: 1): nothing is left to train" in caplog.text
    for name in ("best.pt", "last.pt"):  # the new run dir holds the run, as a resume goes on
        carried = tmp_path / "second" / "checkpoints" / name
        assert carried.read_bytes() == (first / "checkpoints" / name).read_bytes()
    assert metrics["status"] == "done" and metrics["test_ppl"] == done["test_ppl"]
    assert metrics["best_epoch"] == 1
    # a checkpoint whose best model is not beside it: its test would score another model
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "last.pt").write_bytes((first / "checkpoints" / "last.pt").read_bytes())
    longer = tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=2", f"trainer.resume={lone}")
    with pytest.raises(CheckpointError, match="the run's best model .its best.pt. is not beside"):
        train(compose_cfg(longer), tmp_path / "third")
    assert not (tmp_path / "third").exists()


def test_old_configs_drop_the_keys_nothing_read(caplog):
    from lmx.config.legacy import typed_config

    saved = {
        "model": {"_target_": "lmx.model.TransformerLM", "nheads": 4},
        "trainer": {"max_stepz": 100, "epochs": 2},
        "optim": {"_target_": "torch.optim.RMSprop", "alpha": 0.9},
    }
    cfg = typed_config(saved, "old.pt")
    assert cfg.trainer.epochs == 2 and cfg.optim.alpha == 0.9  # constructor arguments stay
    assert cfg.model._target_ == "lmx.models.transformer.TransformerLM"
    assert "old.pt holds keys that no component reads; ignored: model.nheads, " in caplog.text
