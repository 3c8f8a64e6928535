"""The bench driver: each measurement in a fresh process, the settings over their seeds, the
levers, data preparation and startup; the figures combined into one result."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from lmx.bench.peak import cpu_model, isa_flags, peaks
from lmx.bench.settings import LEVERS, RESULT_TAG, SETTINGS


def _worker(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "lmx.bench", *args], capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"bench worker {args[0]} failed:\n{proc.stderr[-3000:]}")


def _time_command(args: list[str], until: str | None = None) -> float:
    """Seconds from starting `python -m lmx.train ARGS` to its exit, or to an output line
    containing `until` (then the process is stopped)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmx.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        if until is not None and until in line:
            elapsed = time.perf_counter() - start
            proc.kill()
            proc.wait()
            return elapsed
    proc.wait()
    if until is not None:
        raise RuntimeError(f"`lmx.train {' '.join(args)}` never printed {until!r}")
    return time.perf_counter() - start


def _machine() -> dict:
    import torch

    cpu = cpu_model()
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["isa"] = isa_flags()
    print("measuring the matmul peak (fp32, bf16)...", flush=True)
    info["peak_gflops"] = peaks("cuda" if torch.cuda.is_available() else "cpu")
    return info


def _combine(runs: list[dict]) -> dict:
    """One setting's figures over its seeds: median tokens/s, exp(mean loss) as the ppl."""
    losses = [r["val_loss"] for r in runs]
    iterates = [r["iterate_val_losses"] for r in runs]
    every = [x for xs in iterates for x in xs]
    return {
        **runs[0],  # flops per token
        "train_tokens_per_s": statistics.median(r["train_tokens_per_s"] for r in runs),
        "eval_tokens_per_s": statistics.median(r["eval_tokens_per_s"] for r in runs),
        "val_loss": statistics.fmean(losses),
        "val_ppl": math.exp(statistics.fmean(losses)),
        "val_ppl_per_seed": [math.exp(x) for x in losses],
        "iterate_val_ppl": math.exp(statistics.fmean(every)) if every else None,
        "iterate_val_ppl_per_seed": [math.exp(statistics.fmean(xs)) for xs in iterates if xs],
        "iterate_val_losses": iterates,
        "train_tokens_per_s_per_seed": [r["train_tokens_per_s"] for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def bench(data_dir: str, steps: int, seeds: list[int], warmup: int, lever_steps: int,
          avg_steps: int, avg_batches: int) -> dict:  # fmt: skip
    results: dict = {
        "machine": _machine(),
        "steps": steps,
        "seeds": seeds,
        "warmup_steps_excluded": warmup,
        "avg_steps": avg_steps,
        "avg_batches": avg_batches,
    }
    common = [f"data={data_dir}", f"warmup={warmup}", f"avg_batches={avg_batches}"]
    for name in SETTINGS:
        runs = []
        for seed in seeds:
            averaged = (f", and the models after each of the last {avg_steps} steps on its "
                        f"first {avg_batches} batches" if avg_steps else "")  # fmt: skip
            print(f"measuring {name}, seed {seed} ({steps} training steps; the last model "
                  f"scored on the validation split{averaged})...", flush=True)  # fmt: skip
            runs.append(_worker([f"worker={name}", *common, f"steps={steps}", f"seed={seed}",
                                 f"avg_steps={avg_steps}"]))  # fmt: skip
        results[name] = _combine(runs)
    if lever_steps:
        results["levers"] = {}
        for name in LEVERS:
            print(f"measuring lever {name!r} ({lever_steps} steps)...", flush=True)
            try:
                results["levers"][name] = _worker(
                    [f"worker={name}", *common, f"steps={lever_steps}", "seed=0", "avg_steps=0"]
                )
            except RuntimeError as err:  # one lever failing must not lose the others
                print(err, file=sys.stderr)
                results["levers"][name] = {"error": str(err).splitlines()[-1]}
    print("measuring data preparation (cold, then cached)...", flush=True)
    results["data"] = _worker(["worker=data", f"data={data_dir}"])
    print("measuring startup...", flush=True)
    with tempfile.TemporaryDirectory(prefix="lmx-bench-run-") as tmp:
        first_step = [
            "experiment=seed_fast",
            f"data.local_dir={data_dir}",
            "trainer.log_interval=1",
            "trainer.progress=false",
            f"hydra.run.dir={tmp}/run",
        ]
        results["startup"] = {
            "help_s": _time_command(["--help"]),
            "cfg_job_s": _time_command(["--cfg", "job"]),
            "config_error_s": _time_command(["model.nhed=4"]),
            "first_step_s": _time_command(first_step, until="batches |"),
        }
    return results
