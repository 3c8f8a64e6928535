"""Sweeps that survive failures and resume: config hashes, finished jobs, a summary.

Every run dir says how its run ended (lmx.runs.status); the sweep dir also records the keys
it varies (lmx.runs.naming). A resumed sweep skips the jobs whose
resolved config (less the `sweep` node) hashes equal to a finished run in the sweep dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
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


class SweepSummary(Callback):
    """Before a multirun: record the keys it varies (job names, HParams). After it: list the
    failed jobs with their errors, and exit non-zero if any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        keys = typed_sweep_keys(list(config.hydra.overrides.task))
        (sweep_dir / SWEPT_FILE).write_text(json.dumps(keys))  # this sweep's, never an older one's

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = sorted({p.parent for p in sweep_dir.glob(f"**/{STATUS_FILE}")})
        failed = [r for r in runs if read_status(r).get("status") == "failed"]
        if not failed:
            log.info("sweep: %d job(s) finished in %s", len(runs), sweep_dir)
            return
        lines = [f"sweep: {len(failed)} of {len(runs)} job(s) failed in {sweep_dir}:"]
        for run_dir in failed:
            error = read_status(run_dir).get("error", "?")
            lines.append(f"  {run_dir.relative_to(sweep_dir)}: {error}")
        lines.append(f"  (each failed job's traceback is in its {ERROR_FILE})")
        log.error("\n".join(lines))
        raise SystemExit(1)
