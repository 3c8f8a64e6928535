"""Bad things during a run: non-finite losses, signals, disk errors. Each gives one clear
message naming the step, signal or file, and leaves the last good checkpoints intact."""

from __future__ import annotations

import errno
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose_cfg, run_cli, tiny_overrides
from lmx.errors import CheckpointError
from lmx.files import WriteError
from lmx.models.transformer import TransformerLM
from lmx.train import train
from lmx.training import checkpoint
from lmx.training.checkpoint import load_checkpoint
from lmx.training.step import NonFiniteLoss


def _nan_at(monkeypatch, steps: set[int]):
    """The model's training loss becomes nan on the given (1-based) training calls."""
    forward, calls = TransformerLM.forward, []

    def forward_with_nan(self, src, targets=None):
        out = forward(self, src, targets)
        if self.training:
            calls.append(1)
            if len(calls) in steps:
                return out * float("nan")
        return out

    monkeypatch.setattr(TransformerLM, "forward", forward_with_nan)


def test_nonfinite_loss_stops_with_the_step_and_keeps_best(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, "trainer.limit_train_batches=5"))
    _nan_at(monkeypatch, {7})  # epoch 2, batch 2
    with pytest.raises(NonFiniteLoss) as err:
        train(cfg, tmp_path / "run")
    message = str(err.value)
    assert "non-finite loss (nan) at step 7 (epoch 2, batch 2)" in message
    assert "trainer.on_nonfinite=skip" in message and "best.pt (epoch 1)" in message
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best.progress["epoch"] - 1 == 1  # epochs completed
    assert all(torch.isfinite(t).all() for t in best.model.values())


def test_nonfinite_batches_can_be_skipped_and_counted(corpus_dir, cache_dir, tmp_path, monkeypatch):
    cfg = compose_cfg(
        tiny_overrides(
            corpus_dir, cache_dir, "trainer.limit_train_batches=5", "trainer.on_nonfinite=skip"
        )
    )
    _nan_at(monkeypatch, {2, 8})
    metrics = train(cfg, tmp_path / "run")
    assert metrics["status"] == "done" and metrics["skipped_batches"] == 2
    assert metrics["steps"] == 10
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in last.model.values())


def test_a_log_window_of_skipped_steps_has_no_loss_rather_than_a_perfect_one(
    corpus_dir, cache_dir, tmp_path, monkeypatch, caplog
):
    # Steps 3-4 (the whole second window of 2) and the second epoch's every step are nan.
    extra = ("trainer.limit_train_batches=4", "trainer.on_nonfinite=skip", "trainer.log_interval=2")
    _nan_at(monkeypatch, {3, 4, 5, 6, 7, 8})
    with caplog.at_level("INFO"):
        metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    windows = [line for line in caplog.text.splitlines() if "ms/batch" in line]
    assert len(windows) == 4 and "every step skipped" not in windows[0]
    assert all("loss   nan | ppl - | every step skipped (non-finite)" in w for w in windows[1:])
    assert metrics["skipped_batches"] == 6
    assert metrics["history"][0]["train_loss"] > 0  # steps 1-2 counted
    assert math.isnan(metrics["history"][1]["train_loss"])  # none counted: no loss, not 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2]  # no point for the others
    assert [e.step for e in events.Scalars("train/lr")] == [2, 4, 6, 8]


def test_diverging_run_from_the_command_line(corpus_dir, cache_dir, tmp_path):
    proc = run_cli(
        *tiny_overrides(corpus_dir, cache_dir, "optim.lr=1e30", "trainer.grad_clip=null"),
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "non-finite" in output and "at step" in output
    assert "Traceback" not in output


def test_sigterm_saves_and_exits_nonzero_then_the_printed_command_resumes(
    corpus_dir, cache_dir, tmp_path
):
    import shlex

    run_dir = tmp_path / "0_model.nhead=2"  # a sweep job's folder: Hydra reads it only quoted
    args = [
        *tiny_overrides(
            corpus_dir, cache_dir, "trainer.epochs=30", "trainer.checkpoint_every_steps=10"
        ),
        f"hydra.run.dir='{run_dir}'",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmx.train", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_python_env(), "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before a save"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM: stopped after step" in output and "Traceback" not in output
    # Resumable, so not a failure: status "interrupted", and the log says it as a warning.
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert "[ERROR]" not in output and "[WARNING] - lmx: SIGTERM" in output
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt").progress["step"]
    assert step > 0
    # metrics.json counts the steps last.pt holds, not those of the last validation
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == step
    # The command it prints carries the run's own overrides and the quoted run dir.
    lines = output.splitlines()
    command = shlex.split(
        lines[next(i for i, line in enumerate(lines) if "Continue with" in line) + 1]
    )
    assert command[:3] == ["python", "-m", "lmx.train"] and "trainer.resume=auto" in command

    # A try that fails before it begins (no data there) leaves the run as it was.
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = [
        a if not a.startswith("data.local_dir=") else f"data.local_dir={empty}" for a in command
    ]
    proc = run_cli(*broken[3:])
    assert proc.returncode != 0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"

    proc = run_cli(*command[3:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"step {step}" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "done"


def _python_env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("LMX_DEBUG", "HYDRA_FULL_ERROR")}


def test_a_full_disk_names_the_file_and_keeps_the_previous_best(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1")), run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    before = best.read_bytes()

    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(WriteError, match=r"cannot write .*best.pt: No space left on device"):
        checkpoint.save_checkpoint(best, checkpoint.Checkpoint(model={}, config={}, vocab_size=1))
    assert best.read_bytes() == before  # untouched, and no temp file left beside it
    assert sorted(p.name for p in best.parent.iterdir()) == ["best.pt", "last.pt"]


def test_an_unwritable_output_dir_is_named(corpus_dir, cache_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_cli(*tiny_overrides(corpus_dir, cache_dir), f"hydra.run.dir={blocker / 'run'}")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(blocker) in output and "Traceback" not in output


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_carries_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match=f"cannot load checkpoint {evil}"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named_when_resuming(corpus_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1")
    assert run_cli(*args, f"hydra.run.dir={run_dir}").returncode == 0
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    (run_dir / "checkpoints" / "best.pt").unlink()
    proc = run_cli(*args, "trainer.resume=auto", f"hydra.run.dir={run_dir}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert f"cannot load checkpoint {last}" in output and "Traceback" not in output


def test_a_run_whose_every_validation_is_nan_fails_clearly(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    from lmx.perplexity import Score
    from lmx.training import loop

    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: Score(float("nan"), 10, 10))
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, "trainer.limit_train_batches=3"))
    with pytest.raises(NonFiniteLoss) as err:
        train(cfg, tmp_path / "run")
    assert "every validation loss was non-finite (epoch 1: nan, epoch 2: nan)" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_the_fp16_scaler_scales_unscales_and_skips_overflowing_steps():
    # Built for CUDA; its arithmetic is checked here on a CPU GradScaler (no GPU in CI).
    from lmx.config.schema import Precision
    from lmx.runtime.distributed import World
    from lmx.training.step import make_scaler, train_step

    assert not make_scaler(torch.device("cpu"), Precision.fp16).is_enabled()
    assert not make_scaler(torch.device("cpu"), Precision.bf16).is_enabled()

    def step(scaler, overflow=False):
        torch.manual_seed(0)
        model = TransformerLM(30, d_model=8, nhead=2, d_hid=8, nlayers=1, dropout=0.0)
        if overflow:  # what an fp16 overflow leaves in a scaled gradient
            model.decoder.bias.register_hook(lambda g: g * float("inf"))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data, targets = torch.randint(0, 30, (2, 5)), torch.randint(0, 30, (2, 5))
        args = (data, targets, Precision.fp32, 0.5, World(), False)
        return model, train_step(model, list(model.parameters()), opt, scaler, *args)

    plain_model, plain = step(torch.amp.GradScaler("cpu", enabled=False))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled_model, scaled = step(scaler)
    assert scaled.loss.item() == plain.loss.item()
    assert scaled.norm.item() == pytest.approx(plain.norm.item(), rel=1e-6)
    for a, b in zip(plain_model.parameters(), scaled_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # unscaled before the clip and the update
    assert scaler.get_scale() == 2.0**10  # no overflow: the scale holds

    overflowing = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, result = step(overflowing, overflow=True)
    assert result.scaler_skipped and result.nonfinite is None  # not a stop under fp16
    assert overflowing.get_scale() == 2.0**9  # the scale shrank
    torch.manual_seed(0)
    fresh = TransformerLM(30, d_model=8, nhead=2, d_hid=8, nlayers=1, dropout=0.0)
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)  # the skipped step changed nothing
    # At a loss scale of 1 the gradients overflow at their true size: a non-finite gradient.
    _, at_one = step(torch.amp.GradScaler("cpu", init_scale=1.0), overflow=True)
    assert at_one.nonfinite.startswith("gradient norm") and not at_one.scaler_skipped
    # Without a scaler the same overflow is a non-finite gradient norm: the policy decides.
    _, unscaled = step(torch.amp.GradScaler("cpu", enabled=False), overflow=True)
    assert unscaled.nonfinite.startswith("gradient norm") and not unscaled.scaler_skipped


def test_fp16_with_skip_goes_on_after_a_nan_loss():
    # on_nonfinite=skip under fp16: a nan loss is skipped after the scaler unscaled the
    # gradients, so the scaler's step must still end, or the next step could not unscale.
    from lmx.config.schema import Precision
    from lmx.runtime.distributed import World
    from lmx.training.step import train_step

    torch.manual_seed(0)
    model = TransformerLM(30, d_model=8, nhead=2, d_hid=8, nlayers=1, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    data, targets = torch.randint(0, 30, (2, 5)), torch.randint(0, 30, (2, 5))
    args = (data, targets, Precision.fp32, 0.5, World(), False)
    with torch.no_grad():
        model.decoder.bias.fill_(float("nan"))
    first = train_step(model, list(model.parameters()), opt, scaler, *args)
    assert first.nonfinite == "loss (nan)"
    with torch.no_grad():
        model.decoder.bias.zero_()
    second = train_step(model, list(model.parameters()), opt, scaler, *args)
    assert second.nonfinite is None and torch.isfinite(second.loss)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_run_dir_where_no_folder_can_be_made_is_named_before_any_work():
    # /proc refuses mkdir even to root, whom write permission alone would let through
    proc = run_cli("hydra.run.dir=/proc/lmx-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hydra.run.dir=/proc/lmx-run: cannot create a folder in /proc" in proc.stderr


@pytest.mark.parametrize(
    "path", ["/tmp/0_model.nhead=1", "/tmp/ünï dir", "/tmp/back\\slash", "/tmp/it's", "/tmp/end\\"]
)
def test_the_printed_run_dir_reads_back_as_itself_through_the_shell_and_hydra(path):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lmx.runs.status import resume_command

    command = shlex.split(resume_command(["model.nhead=2", "trainer.resume=last"], Path(path)))
    assert command[:5] == ["python", "-m", "lmx.train", "model.nhead=2", "trainer.resume=auto"]
    override = OverridesParser.create().parse_overrides(command[5:])[0]
    assert override.key_or_group == "hydra.run.dir" and override.value() == path


def test_a_torchrun_run_is_continued_with_torchrun(monkeypatch):
    from lmx.runtime.launcher import relaunch_prefix

    assert relaunch_prefix() == "python -m lmx.train"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert relaunch_prefix() == "torchrun --nproc_per_node=4 -m lmx.train"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two nodes: their options are the user's
    assert relaunch_prefix() == "torchrun <the same torchrun options> -m lmx.train"
