"""Sweeps that survive failures and resume: config hashes, finished jobs, a summary.

Every run dir says how its run ended (lmx.runs.status); the sweep dir also records the keys
it varies (lmx.runs.naming). A resumed sweep skips the jobs whose
resolved config (less the `sweep` node) hashes equal to a finished run in the sweep dir.

The summary counts this multirun's jobs only. A multirun writes a fresh id into its sweep dir
as it starts; each job records its outcome under that id in its own run dir (both files in
lmx.runs.status: running, then done, failed, interrupted or skipped). So runs that an older
sweep left in the same dir are not counted, whatever their files' times, and a job that
failed in a folder still holding an older finished run is counted as failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lmx.config.compose import absolute_paths
from lmx.config.legacy import typed_config
from lmx.errors import LmxError
from lmx.files import checkpoint_files
from lmx.runs.naming import SWEPT_FILE, planned_sweep_keys
from lmx.runs.status import (
    ERROR_FILE,
    JOB_FILE,
    MULTIRUN_FILE,
    STATUS_FILE,
    read_job,
    read_status,
)

log = logging.getLogger(__name__)


def config_hash(resolved: dict[str, Any]) -> str:
    """Identity of a job: its resolved config, less the sweep controls themselves, and with
    trainer.resume=auto counted as none (a job's own try resumed is the same job; a resume
    from another run's checkpoint is not)."""
    job = {k: v for k, v in resolved.items() if k != "sweep"}
    trainer = job.get("trainer")
    if isinstance(trainer, dict) and trainer.get("resume") == "auto":
        job["trainer"] = {**trainer, "resume": None}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def _saved_hash(run_dir: Path) -> str | None:
    """The config_hash of a run dir's config.yaml, on today's schema; None where it has none
    or this lmx cannot read it."""
    if not (run_dir / "config.yaml").is_file():
        return None
    saved = absolute_paths(OmegaConf.load(run_dir / "config.yaml"))  # older runs: relative
    try:  # on today's schema: keys added since at the value the run had
        typed = typed_config(OmegaConf.to_container(saved), str(run_dir / "config.yaml"))
    except LmxError:
        return None
    return config_hash(OmegaConf.to_container(typed, resolve=True, enum_to_str=True))


def find_finished(sweep_dir: Path, job_hash: str) -> Path | None:
    """A run dir under sweep_dir that finished with this config hash, if any."""
    for metrics in sorted(sweep_dir.glob(f"**/{STATUS_FILE}")):
        run_dir = metrics.parent
        if read_status(run_dir).get("status") == "done" and _saved_hash(run_dir) == job_hash:
            return run_dir
    return None


def unfinished_try(run_dir: Path, job_hash: str) -> bool:
    """Whether the job's folder holds checkpoints of an unfinished try of this very job (its
    config hash): what sweep.resume resumes. A finished run, or another config's, is not."""
    return (
        bool(checkpoint_files(run_dir / "checkpoints"))
        and read_status(run_dir).get("status") != "done"
        and _saved_hash(run_dir) == job_hash
    )


def jobs_of(sweep_dir: Path, multirun: str) -> dict[Path, dict]:
    """{run dir: its JOB_FILE record} of the jobs of `multirun` under sweep_dir."""
    records = {p.parent: read_job(p.parent) for p in sorted(sweep_dir.glob(f"**/{JOB_FILE}"))}
    return {d: r for d, r in records.items() if r.get("multirun") == multirun}


def warn_unrun_sweep(hydra_cfg: DictConfig) -> None:
    """A single run of a config that plans a sweep (a sweep preset without -m) is one job of
    its defaults: say so. lmx's own resume command for a sweep's job sets every swept key, so
    it plans none and is not warned."""
    params = OmegaConf.select(hydra_cfg, "sweeper.params")
    planned = planned_sweep_keys(params, list(hydra_cfg.overrides.task))
    if planned:
        log.warning("lmx: this config plans a sweep over %s, which runs with -m; without it "
                    "this is one run of the defaults", ", ".join(planned))  # fmt: skip


class SweepSummary(Callback):
    """Before a multirun: record the keys it varies (job names, HParams). After it: list the
    failed jobs with their errors, and exit non-zero if any."""

    multirun = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        params = OmegaConf.select(config, "hydra.sweeper.params")
        keys = planned_sweep_keys(params, list(config.hydra.overrides.task))
        (sweep_dir / SWEPT_FILE).write_text(json.dumps(keys))  # this sweep's, never an older one's
        self.multirun = uuid.uuid4().hex
        (sweep_dir / MULTIRUN_FILE).write_text(self.multirun)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = jobs_of(sweep_dir, self.multirun)
        skipped = sum(r["outcome"] == "skipped" for r in jobs.values())
        failed = {d: r for d, r in jobs.items() if r["outcome"] in ("failed", "running")}
        before = f" ({skipped} of them skipped: finished before)" if skipped else ""
        if not failed:
            log.info("sweep: %d job(s) finished in %s%s", len(jobs), sweep_dir, before)
            return
        lines = [f"sweep: {len(failed)} of {len(jobs)} job(s) failed in {sweep_dir}{before}:"]
        for run_dir, record in failed.items():
            error = (
                record["detail"]
                if record["outcome"] == "failed"
                else "stopped without saying how (killed?)"
            )
            lines.append(f"  {run_dir.relative_to(sweep_dir)}: {error}")
        lines.append(f"  (each failed job's traceback is in its {ERROR_FILE})")
        log.error("\n".join(lines))
        raise SystemExit(1)
