"""torchrun with 2 CPU processes (gloo) trains the same model as one process with the same
global batch, resumes under DDP, and leaves no process-group thread to the interpreter's exit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, job_dir, run_cli, tiny_overrides
from lmx.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="no torchrun")

# No dropout: the ranks draw their own masks, so only a dropout-free run can match exactly.
# A small lr keeps float rounding from growing into visible differences.
DDP = (
    "model.dropout=0",
    "data.batch_size=4",
    "optim.lr=0.5",
    "trainer.limit_train_batches=20",
    "trainer.log_interval=1",
)


TORCHRUN_S = 150  # a tiny run under torchrun takes seconds: one still running is hung


def _abort(proc: subprocess.Popen, sig: int = signal.SIGABRT) -> None:
    """Signal torchrun's workers (its children: it may start them in sessions of their own),
    then torchrun itself."""
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    for pid in [*map(int, children.stdout.split()), proc.pid]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def torchrun(
    *args: str, program: tuple[str, ...] = ("-m", "lmx.train")
) -> subprocess.CompletedProcess:
    """torchrun with 2 processes. A hung try (gloo's teardown hangs now and then, pytorch#75097)
    is aborted with each process's stacks (faulthandler) and tried once more; a second hang
    fails the test with both tries' stacks."""
    env = {k: v for k, v in os.environ.items() if k not in ("LMX_DEBUG", "HYDRA_FULL_ERROR")}
    env.update(OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *program, *args]  # fmt: skip
    hung = []
    for _ in range(2):
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        proc = subprocess.Popen(command, cwd=REPO, env=env, text=True, start_new_session=True,
                                **pipes)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=TORCHRUN_S)
            return subprocess.CompletedProcess(command, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            _abort(proc)  # every process prints its stacks, and ends
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                _abort(proc, signal.SIGKILL)
                out, err = proc.communicate()
            hung.append(err[-4000:])
    pytest.fail("torchrun hung twice; the stacks:\n" + "\n-----\n".join(hung))


def _losses(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def assert_equivalent(single, ddp):
    a, b = _losses(single), _losses(ddp)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-4)
    ma, mb = _metrics(single), _metrics(ddp)
    assert (ma["world_size"], mb["world_size"]) == (1, 2)
    for ha, hb in zip(ma["history"], mb["history"], strict=True):
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-4)
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
    assert mb["test_loss"] == pytest.approx(ma["test_loss"], rel=1e-4)
    pa = load_checkpoint(single / "checkpoints" / "last.pt").model
    pb = load_checkpoint(ddp / "checkpoints" / "last.pt").model
    for name in pa:
        torch.testing.assert_close(pb[name], pa[name], rtol=1e-3, atol=1e-4)


def one_and_two_processes(args, tmp_path):
    """The same run in one process and under torchrun with 2; they must train alike."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    proc = run_cli(*args, f"hydra.run.dir={single}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = torchrun(*args, f"hydra.run.dir={ddp}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert_equivalent(single, ddp)
    return single, ddp


def test_two_gloo_processes_match_one_process(corpus_dir, cache_dir, tmp_path):
    args = tiny_overrides(corpus_dir, cache_dir, *DDP)
    single, ddp = one_and_two_processes(args, tmp_path)
    # rank 0 alone writes: one run dir, one log, nothing from rank 1 left behind
    assert "x 2 processes" in (ddp / "train.log").read_text()
    # With accumulation: 2 processes x 2 micro-batches of 1 row equal 1 process, 4 rows.
    accumulated = tmp_path / "ddp_accumulate"
    proc = torchrun(*args, "trainer.accumulate=2", f"hydra.run.dir={accumulated}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert_equivalent(single, accumulated)


def test_ddp_resume_continues_the_run(corpus_dir, cache_dir, tmp_path):
    args = tiny_overrides(corpus_dir, cache_dir, *DDP)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run_cli(*args, f"hydra.run.dir={single}").returncode == 0
    first = torchrun(*args, "trainer.epochs=1", f"hydra.run.dir={ddp}")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    ckpt = load_checkpoint(ddp / "checkpoints" / "last.pt")
    assert len(ckpt.rng_per_rank) == 2  # every rank's RNG state, written by rank 0
    second = torchrun(*args, "trainer.resume=auto", f"hydra.run.dir={ddp}")
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "resuming from" in (ddp / "train.log").read_text()
    assert_equivalent(single, ddp)


# Trains under torchrun and names this rank's threads (Linux: /proc) at the first validation,
# while the process group is alive, and again after train. With "fail", that validation
# raises on every rank, as an error or a stop signal would.
THREADS_AFTER_TRAIN = """
import faulthandler, os, sys
from pathlib import Path
faulthandler.dump_traceback_later({hang_s}, exit=True)  # a hung rank says where, and ends
sys.path.insert(0, {tests!r})
from conftest import compose_cfg
from lmx.train import train
from lmx.training.loop import Trainer

def say(text):  # one write per line, so that the two ranks' lines never interleave
    os.write(1, f"rank {{os.environ['RANK']}} {{text}}\\n".encode())

def threads(when):
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{{t}}/comm").read().strip())
        except OSError:  # that thread ended meanwhile
            pass
    say(f"threads {{when}} {{sorted(names)}}")

validate = Trainer.validate
def validate_once(self):
    Trainer.validate = validate
    threads("during:")
    if sys.argv[1] == "fail":
        raise RuntimeError("validation failed on purpose")
    return validate(self)
Trainer.validate = validate_once
try:
    train(compose_cfg(sys.argv[3:]), Path(sys.argv[2]))
except Exception as err:
    say(f"raised: {{err}}")
threads("after:")
"""


HANG_S = 90  # a rank of that tiny run still running after this long is hung


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
@pytest.mark.parametrize("how", ["ok", "fail"])
def test_ddp_run_frees_its_process_group_before_the_interpreter_exits(how, corpus_dir, cache_dir,
                                                                        tmp_path):  # fmt: skip
    # gloo's worker threads left to the interpreter's exit can abort a rank (SIGABRT,
    # "terminate called without an active exception"), finished or not: none may be left
    # once train returns or raises.
    script = tmp_path / "threads_after_train.py"
    script.write_text(THREADS_AFTER_TRAIN.format(tests=str(REPO / "tests"), hang_s=HANG_S))
    args = tiny_overrides(corpus_dir, cache_dir, *DDP, "trainer.epochs=1")
    proc = torchrun(how, str(tmp_path / "run"), *args, program=(str(script),))
    timeout = f"Timeout (0:{HANG_S // 60:02d}:{HANG_S % 60:02d})!"  # faulthandler's words
    hung = timeout in proc.stderr
    if hung:  # gloo's teardown on a failure path hangs now and then (pytorch#75097): once
        first = proc.stderr  # more, and a second hang fails with both tries' stacks
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        proc = torchrun(how, str(tmp_path / "run"), *args, program=(str(script),))
        assert timeout not in proc.stderr, first[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    raised = [line for line in out.splitlines() if "raised:" in line]
    if how == "fail":
        assert len(raised) == 2 and all("failed on purpose" in line for line in raised), out
    else:
        assert raised == [] and (tmp_path / "run" / "metrics.json").exists(), out[-2000:]
    for when in ("during:", "after:"):
        lines = sorted(line for line in out.splitlines() if f"threads {when}" in line)
        assert [line.split()[1] for line in lines] == ["0", "1"], out[-2000:]
        for line in lines:  # gloo_tcp_loop and pt_gloo_runloop live as long as the group
            assert ("gloo" in line) == (when == "during:"), line


def test_the_adaptive_head_under_ddp_matches_one_process(corpus_dir, cache_dir, tmp_path):
    # The last cluster holds the rarest ids, so many a rank's batch has no target in it: its
    # weights still need a (zero) gradient on that rank, or DDP's reducer never finishes.
    args = tiny_overrides(corpus_dir, cache_dir, *DDP, "model.head=adaptive",
                          "model.cutoffs=[5,20]")  # fmt: skip
    one_and_two_processes(args, tmp_path)


def test_batch_rows_must_split_evenly(corpus_dir, cache_dir, tmp_path):
    proc = torchrun(*tiny_overrides(corpus_dir, cache_dir, "data.batch_size=3"),
                    f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "data.batch_size=3 is not divisible by the 2 processes" in output


def test_slurm_launcher_option_composes():
    from hydra import compose, initialize_config_dir

    from lmx.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1


def test_sweep_through_submitit_local_executor(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1", "trainer.limit_train_batches=5"),
        "model.nhead=1,2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for job in ("0", "1"):
        assert _metrics(job_dir(sweep, job))["status"] == "done"


def test_lstm_under_ddp_matches_one_process_and_resumes_in_mid_epoch(
    corpus_dir, cache_dir, tmp_path
):
    # Each rank carries the state of its own rows; rank 0 saves every rank's.
    args = [o for o in tiny_overrides(corpus_dir, cache_dir, *DDP) if not o.startswith("model.")]
    args += ["model=lstm", "model.emsize=16", "model.nhid=16", "model.dropout=0"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # Each stops at step 30 (epoch 2, batch 10), validates there, then resumes to the end.
    for extra in ("trainer.max_steps=30", "trainer.resume=auto"):
        proc = run_cli(*args, extra, f"hydra.run.dir={single}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    first = torchrun(*args, "trainer.max_steps=30", f"hydra.run.dir={ddp}")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    ckpt = load_checkpoint(ddp / "checkpoints" / "last.pt")
    assert ckpt.progress["batch"] == 10 and len(ckpt.carried) == 2
    assert ckpt.carried[0][0].shape == (2, 2, 16)  # [layers, rows per rank, nhid]
    assert not torch.equal(ckpt.carried[0][0], ckpt.carried[1][0])
    second = torchrun(*args, "trainer.resume=auto", f"hydra.run.dir={ddp}")
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "zero state" not in (ddp / "train.log").read_text()  # each rank got its own
    assert_equivalent(single, ddp)
