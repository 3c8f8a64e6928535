"""Sweeps that survive failures and resume: config hashes, finished jobs, a summary.

Every run dir says how its run ended (lmx.runs.status); the sweep dir also records the keys
it varies (lmx.runs.naming). A resumed sweep skips the jobs whose
resolved config (less the `sweep` node) hashes equal to a finished run in the sweep dir, and
leaves a SKIPPED_FILE in its own run dir, so the summary can tell what this multirun ran, what
it skipped, and what older sweeps left in the same dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lmx.config.compose import absolute_paths
from lmx.config.legacy import typed_config
from lmx.errors import LmxError
from lmx.runs.naming import SWEPT_FILE, typed_sweep_keys
from lmx.runs.status import ERROR_FILE, STATUS_FILE, read_status

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.txt"


def config_hash(resolved: dict[str, Any]) -> str:
    """Identity of a job: its resolved config, less the sweep controls themselves."""
    job = {k: v for k, v in resolved.items() if k != "sweep"}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def find_finished(sweep_dir: Path, job_hash: str) -> Path | None:
    """A run dir under sweep_dir that finished with this config hash, if any."""
    for metrics in sorted(sweep_dir.glob(f"**/{STATUS_FILE}")):
        run_dir = metrics.parent
        if read_status(run_dir).get("status") != "done" or not (run_dir / "config.yaml").is_file():
            continue
        saved = absolute_paths(OmegaConf.load(run_dir / "config.yaml"))  # older runs: relative
        try:  # on today's schema: keys added since at the value the run had
            typed = typed_config(OmegaConf.to_container(saved), str(run_dir / "config.yaml"))
        except LmxError:
            continue  # a config this lmx cannot read is no finished job of this sweep
        saved = OmegaConf.to_container(typed, resolve=True, enum_to_str=True)
        if config_hash(saved) == job_hash:
            return run_dir
    return None


def mark_skipped(run_dir: Path, done: Path) -> None:
    """Record in this job's run dir that sweep.resume skipped it: it had finished in `done`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SKIPPED_FILE).write_text(f"sweep.resume skipped this job: it finished in {done}\n")


def _since(path: Path, started: float) -> bool:
    return path.is_file() and path.stat().st_mtime >= started


def jobs_since(sweep_dir: Path, started: float) -> tuple[list[Path], list[Path]]:
    """(ran, skipped): the run dirs under sweep_dir whose status a job wrote since `started`
    (the epoch seconds a multirun began), and those sweep.resume marked skipped since then.
    Run dirs older sweeps left in the same dir are in neither."""
    ran = sorted(p.parent for p in sweep_dir.glob(f"**/{STATUS_FILE}") if _since(p, started))
    skipped = sorted(p.parent for p in sweep_dir.glob(f"**/{SKIPPED_FILE}")
                     if _since(p, started) and p.parent not in ran)  # fmt: skip
    return ran, skipped


class SweepSummary(Callback):
    """Before a multirun: record the keys it varies (job names, HParams). After it: list the
    failed jobs with their errors, and exit non-zero if any."""

    # A second's slack: a file system's clock may lag this process's by its timestamp grain.
    started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        keys = typed_sweep_keys(list(config.hydra.overrides.task))
        (sweep_dir / SWEPT_FILE).write_text(json.dumps(keys))  # this sweep's, never an older one's

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        ran, skipped = jobs_since(sweep_dir, self.started)
        failed = [r for r in ran if read_status(r).get("status") == "failed"]
        jobs = len(ran) + len(skipped)
        if not failed:
            before = f" ({len(skipped)} of them skipped: finished before)" if skipped else ""
            log.info("sweep: %d job(s) finished in %s%s", jobs, sweep_dir, before)
            return
        lines = [f"sweep: {len(failed)} of {jobs} job(s) failed in {sweep_dir}:"]
        for run_dir in failed:
            error = read_status(run_dir).get("error", "?")
            lines.append(f"  {run_dir.relative_to(sweep_dir)}: {error}")
        lines.append(f"  (each failed job's traceback is in its {ERROR_FILE})")
        log.error("\n".join(lines))
        raise SystemExit(1)
