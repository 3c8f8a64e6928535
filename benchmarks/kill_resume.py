"""Kill-and-resume check: SIGKILL a training run at random moments, resume it each time, and
compare the end result with an uninterrupted run of the same config, bit for bit.

    python benchmarks/kill_resume.py --kills 10 [--data ../shared/data/wikitext-2] [--seed 0]

Each try runs `python -m lmx.train ... trainer.resume=auto` in the same run dir; a kill lands
at a uniformly random time within the run's expected length (startup included), so some
land during startup, some mid-step, some mid-checkpoint-write. After the last kill the run is
left to finish. Prints kills survived and mismatches (must be 0) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 4.0  # about how long `python -m lmx.train` takes to reach its first step here
SMALL_RUN = [
    "model.d_model=32",
    "model.nhead=2",
    "model.d_hid=64",
    "model.nlayers=1",
    "model.dropout=0.3",  # dropout on: a resume that lost the RNG state would differ
    "optim=adamw",
    "optim.lr=0.003",
    "scheduler=cosine",
    "scheduler.warmup_steps=20",
    "trainer.epochs=3",
    "trainer.limit_train_batches=60",
    "trainer.limit_eval_batches=10",
    "trainer.checkpoint_every_steps=7",
    "trainer.log_interval=5",
    "trainer.progress=false",
    "trainer.resume=auto",
    "device=cpu",
]


def start(run_dir: Path, data: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmx.train",
            *SMALL_RUN,
            f"data.local_dir={data}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def outcome(run_dir: Path) -> tuple[dict, dict]:
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return last["model"], metrics


def mismatches(a: Path, b: Path) -> list[str]:
    (pa, ma), (pb, mb) = outcome(a), outcome(b)
    bad = [f"parameter {k}" for k in pa if not torch.equal(pa[k], pb[k])]
    for key in ("steps", "best_val_loss", "best_epoch", "test_loss", "status"):
        if ma.get(key) != mb.get(key):
            bad.append(f"metrics {key}: {ma.get(key)} vs {mb.get(key)}")
    for ha, hb in zip(ma["history"], mb["history"], strict=True):
        for key in ("train_loss", "val_loss", "lr", "step"):
            if ha[key] != hb[key]:
                bad.append(f"epoch {ha['epoch']} {key}: {ha[key]} vs {hb[key]}")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/wikitext-2")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="lmx-kill-resume-"))

    begin = time.perf_counter()
    reference = root / "reference"
    if start(reference, args.data).wait() != 0:
        sys.exit(f"the uninterrupted run failed; see {reference}/train.log")
    expected = time.perf_counter() - begin
    print(f"uninterrupted run: {expected:.1f} s ({reference})")

    # Kill at a random moment within the expected rest of the run; a run that finishes
    # before its kill ends a cycle, and a new cycle starts until `--kills` kills landed.
    total_steps = 3 * 60
    kills, tries, cycles, bad = 0, 0, 0, []
    while kills < args.kills:
        cycles += 1
        killed_dir = root / f"killed-{cycles}"
        while True:
            tries += 1
            last = killed_dir / "checkpoints" / "last.pt"
            done = torch.load(last, weights_only=True)["progress"]["step"] if last.is_file() else 0
            proc = start(killed_dir, args.data)
            if kills < args.kills:
                delay = rng.uniform(
                    0.0, STARTUP_S + (expected - STARTUP_S) * (1 - done / total_steps)
                )
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    print(f"kill {kills}: {delay:.2f} s into try {tries} (resumed at step {done})")
                    continue
            if proc.wait() != 0:
                sys.exit(f"try {tries} failed; see {killed_dir}/train.log")
            break
        bad += [f"cycle {cycles}: {line}" for line in mismatches(reference, killed_dir)]

    print(f"kills survived: {kills} | tries: {tries} | cycles: {cycles} | mismatches: {len(bad)}")
    for line in bad:
        print("  ", line)
    if args.json:
        figures = {
            "kills": kills,
            "tries": tries,
            "cycles": cycles,
            "mismatches": len(bad),
            "details": bad,
            "uninterrupted_seconds": round(expected, 1),
            "run_dirs": str(root),
        }
        args.json.write_text(json.dumps(figures, indent=2))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
