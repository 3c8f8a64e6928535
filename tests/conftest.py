"""Shared fixtures: a tiny corpus the tests write themselves, and Hydra composition."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lmx.config.store import register_configs
from lmx.paths import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_WT2 = REPO.parent / "shared" / "data" / "wikitext-2"

register_configs()

# Tiny test models gain nothing from a second thread, and on a busy 2-core machine OpenMP's
# spinning threads make each step ~15x slower. Subprocesses get the same via OMP_NUM_THREADS.
torch.set_num_threads(1)

# A tiny model and few batches: a whole run takes a second or two on a CPU.
TINY = [
    "model.d_model=16",
    "model.nhead=2",
    "model.d_hid=32",
    "model.nlayers=1",
    "data.batch_size=4",
    "data.eval_batch_size=2",
    "data.bptt=8",
    "trainer.epochs=2",
    "trainer.log_interval=2",
    "trainer.progress=false",
    "optim.lr=1.0",
    "device=cpu",
]


def write_corpus(folder: Path, names=("train.txt", "valid.txt", "test.txt")) -> Path:
    """Small WikiText-like files: headings, empty lines, punctuation, <unk>, mixed case."""
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "<unk>"]
    sizes = (300, 40, 40)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n_lines in zip(names, sizes, strict=True):
        lines = []
        for k in range(n_lines):
            if k % 10 == 0:
                lines += [" ", " = The Heading = ", " "]
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
            lines.append(f' The {sentence} , and ( it ) said : " yes " . ')
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [])


def tiny_overrides(corpus: Path, cache: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.local_dir={corpus}", f"data.cache_dir={cache}", *extra]


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: int = 300):
    """`python -m MODULE ARGS` in a subprocess, as a user would run it."""
    return run_python("-m", module, *args, cwd=cwd, timeout=timeout)


def run_python(*args: str, cwd: Path | None = None, timeout: int = 300):
    """`python ARGS` (a script or -m MODULE) in a subprocess, from the repo root by default."""
    env = {k: v for k, v in os.environ.items() if k not in ("LMX_DEBUG", "HYDRA_FULL_ERROR")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_dir(sweep: Path, num: int | str) -> Path:
    """A sweep job's run dir: NUM_<swept values> (lmx.runs.naming), or NUM where none."""
    found = [p for p in sweep.glob(f"{num}*") if p.name == str(num) or p.name.startswith(f"{num}_")]
    assert len(found) == 1, f"job {num} in {sweep}: {found}"
    return found[0]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_module("lmx.train", *args, **kwargs)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny 2-epoch run shared by the tests that inspect a finished run: (cfg, dir, metrics)."""
    from lmx.train import train

    root = tmp_path_factory.mktemp("tiny")
    corpus, cache = write_corpus(root / "corpus"), root / "cache"
    cfg = compose_cfg(tiny_overrides(corpus, cache))
    run_dir = root / "run"
    metrics = train(cfg, run_dir)
    return cfg, run_dir, metrics


def sigint_after_step(monkeypatch, stop_at: int) -> None:
    """Make the training loop send this process a real SIGINT (Ctrl-C) right after optimizer
    step `stop_at`; the loop handles it between steps. Undo with monkeypatch.undo()."""
    import signal

    from lmx.training import loop

    step, calls = loop.train_step, []

    def step_then_sigint(*args, **kwargs):
        out = step(*args, **kwargs)
        calls.append(1)
        if len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(loop, "train_step", step_then_sigint)


def sigkill_after_first_save(args: list[str], run_dir: Path) -> None:
    """Start `python -m lmx.train ARGS` into `run_dir` and SIGKILL it as soon as its first
    last.pt exists (a periodic save, mid-epoch in the tests' settings)."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "lmx.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before a save"
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
