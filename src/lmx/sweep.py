"""Sweeps that survive failures and resume: run status on disk, config hashes, a summary.

Every run dir says how its run ended in metrics.json ("status": running, done or failed). A
failed job also leaves error.txt with its traceback. A resumed sweep skips the jobs whose
resolved config (less the `sweep` node) hashes equal to a finished run in the sweep dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lmx.files import METRICS_FILE, write_json

log = logging.getLogger(__name__)

STATUS_FILE = METRICS_FILE
ERROR_FILE = "error.txt"


def config_hash(resolved: dict[str, Any]) -> str:
    """Identity of a job: its resolved config, less the sweep controls themselves."""
    job = {k: v for k, v in resolved.items() if k != "sweep"}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def find_finished(sweep_dir: Path, job_hash: str) -> Path | None:
    """A run dir under sweep_dir that finished with this config hash, if any."""
    for metrics in sorted(sweep_dir.glob(f"**/{STATUS_FILE}")):
        run_dir = metrics.parent
        if read_status(run_dir).get("status") != "done" or not (run_dir / "config.yaml").is_file():
            continue
        saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
        if config_hash(saved) == job_hash:
            return run_dir
    return None


def mark_failed(run_dir: Path, err: BaseException) -> None:
    """Keep the traceback and flag the run as failed; what it had written stays."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    (run_dir / ERROR_FILE).write_text(text)
    status = read_status(run_dir)
    if status.get("status") == "done":
        return  # the results were complete before the error (e.g. Ctrl-C while closing up)
    one_line = " ".join(f"{type(err).__name__}: {err}".split())  # for tables and summaries
    status.update(status="failed", error=one_line)
    write_json(run_dir / STATUS_FILE, status)


class SweepSummary(Callback):
    """After a multirun: list the failed jobs with their errors, and exit non-zero if any."""

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
