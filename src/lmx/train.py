"""`python -m lmx.train [overrides]`: compose, check, build, fit, report.

Heavy imports (torch, datasets) happen inside `train`, so --help, --cfg and config errors
answer quickly.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lmx.cli import debug, exit_code
from lmx.config.compose import absolute_paths
from lmx.config.rules import validate
from lmx.config.store import register_configs
from lmx.errors import CheckpointError, LmxError
from lmx.paths import config_dir
from lmx.runs.status import (
    ERROR_FILE,
    STATUS_FILE,
    mark_failed,
    mark_interrupted,
    overwrite_refusal,
    read_status,
    record_job,
    record_process,
    resume_command,
)
from lmx.runs.sweep import config_hash, find_finished, unfinished_try, warn_unrun_sweep
from lmx.runtime.launcher import relaunch_prefix
from lmx.training.signals import Interrupted

log = logging.getLogger("lmx.train")
SWEEP_ON = (
    "\nThat is this job alone. The sweep stopped here: its own command again, with "
    "sweep.resume=true and the same hydra.sweep.dir, resumes this job and runs the jobs not "
    "run yet (finished ones are skipped)."
)
register_configs()


def train(cfg: DictConfig, run_dir: Path, resume_own: bool = False) -> dict:
    """One training run into `run_dir`; returns the run summary (metrics.json). `resume_own`:
    resume the run dir's own newest checkpoint whatever trainer.resume says (sweep.resume).

    Under torchrun every rank calls this; rank 0's run dir is the run's, and only rank 0
    writes to it.
    """
    absolute_paths(cfg)
    validate(cfg)  # before any data work

    from lmx.runtime import distributed
    from lmx.runtime.device import apply_settings, resolve_device
    from lmx.training.build import build_run, warn_init_share
    from lmx.training.loop import fit

    world = distributed.world_from_env()
    device = resolve_device(cfg.device, world)
    apply_settings(device, cfg.device)
    distributed.init(world, device)
    try:
        run_dir = Path(world.broadcast(str(run_dir)))
        if not world.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
        run, resumed = build_run(cfg, run_dir, world, device, resume_own)
        if world.is_main:  # after the checks: a try refused there leaves the record as it was
            record_process(run_dir)
        try:
            metrics = fit(run, cfg.trainer, resumed)
            if cfg.trainer.max_time is not None and world.is_main:  # its steps are known now
                warn_init_share(cfg.trainer.ema, metrics["steps"], run.budget.planned_steps())
            return metrics
        finally:
            run.tb.close()
            del run  # distributed.shutdown frees the process group with it
    except BaseException as err:
        # The failed calls' frames hold the DDP model, and with it the process group, which
        # shutdown() must free; clearing their locals keeps the traceback's lines.
        if world.enabled:
            traceback.clear_frames(err.__traceback__)
        raise
    finally:
        distributed.shutdown()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    main_rank = int(os.environ.get("RANK", "0")) == 0  # the others' run dirs are scratch

    # hydra.job.chdir=true runs a job in its run dir: a relative sweep dir is the launch dir's
    sweep_dir = Path(hydra_cfg.runtime.cwd) / hydra_cfg.sweep.dir if multirun else None

    def outcome(what: str, detail: str = "") -> None:  # for the sweep's summary
        if sweep_dir is not None:  # a multirun: one process a job (torchrun refuses -m)
            record_job(run_dir, sweep_dir, what, detail)

    absolute_paths(cfg)  # before hashing: the saved config.yaml holds them resolved
    if not multirun:
        warn_unrun_sweep(hydra_cfg)
    resume_own = False  # sweep.resume: this job's own unfinished try, whatever trainer.resume
    if multirun and cfg.sweep.resume:
        job_hash = config_hash(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        done = find_finished(sweep_dir, job_hash)
        if done is not None:
            log.info("sweep.resume: this job already finished in %s; skipping it", done)
            outcome("skipped", f"finished in {done}")
            return read_status(done)["best_val_ppl"]
        resume_own = unfinished_try(run_dir, job_hash)
        if resume_own:  # its config stays as the job's (trainer.resume as the sweep set it)
            log.info("sweep.resume: %s holds this job's unfinished try; resuming it", run_dir)
    if multirun:
        from lmx.runtime.launcher import share_machine

        share_machine(hydra_cfg, cfg.device.threads)
    resume = resume_command(list(hydra_cfg.overrides.task), run_dir, relaunch_prefix())
    earlier, config_before = read_status(run_dir).get("status"), _mtime(run_dir / "config.yaml")
    status_before = _mtime(run_dir / STATUS_FILE)
    outcome("running")
    try:
        # main() said it before Hydra wrote into the folder where the command line named it
        why = None if multirun else overwrite_refusal(run_dir, cfg.trainer.resume)
        if why is not None:  # a sweep's jobs: sweep.resume decides
            raise CheckpointError(why)
        metrics = train(cfg, run_dir, resume_own)
    except Interrupted as err:  # SIGINT/SIGTERM: saved a checkpoint, then stopped
        outcome("interrupted", err.stopped)
        mark_interrupted(run_dir, f"{err.stopped}. Continue with: {resume}", err.step)
        if main_rank:
            log.warning("lmx: %s. Continue with:\n%s%s", err.stopped, resume, SWEEP_ON * multirun)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        outcome("interrupted", "a second Ctrl-C")
        mark_interrupted(run_dir, "a second Ctrl-C: stopped at once")
        if main_rank:
            log.warning("lmx: interrupted; continue from the last checkpoint with:\n%s%s",
                        resume, SWEEP_ON * multirun)  # fmt: skip
        sys.exit(130)
    except Exception as err:
        # A try that failed before it wrote its config (a refused resume or overwrite, data
        # it could not read) leaves the run in this dir as it was, whatever its status. A
        # sweep's job always says it failed, in its status and in its record for the sweep's
        # summary.
        kept = config_before is not None and not multirun
        if kept and _mtime(run_dir / "config.yaml") == config_before:
            log.warning("lmx: the run in %s is as it was (%s): this try stopped before it "
                        "began", run_dir, earlier or "no status")  # fmt: skip
        else:  # a "done" this try did not write is an earlier run's: it no longer holds
            mark_failed(run_dir, err, over_done=_mtime(run_dir / STATUS_FILE) == status_before)
        if read_status(run_dir).get("status") == "done":  # finished, then failed closing up
            outcome("done")
        else:
            outcome("failed", f"{type(err).__name__}: {err}")
        expected = isinstance(err, LmxError)
        if debug() or not (expected or multirun):
            raise  # an lmx bug: the traceback helps (it is in error.txt too)
        message = str(err) if expected else f"{type(err).__name__}: {err} (see {ERROR_FILE})"
        log.error("lmx: %s", message)
        if multirun:
            return float("nan")  # the sweep goes on; its summary lists this job
        sys.exit(exit_code(err))
    outcome("done")
    log.info("run dir: %s", run_dir)
    return metrics["best_val_ppl"]  # what a sweeper minimizes


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def main() -> None:
    from lmx.cli import fail
    from lmx.config.preflight import check_command_line
    from lmx.runs.status import check_single_run
    from lmx.runtime.launcher import torchrun_argv

    try:
        check_command_line(sys.argv[1:])  # every bad override in one message, before Hydra
        check_single_run(sys.argv[1:])  # before Hydra writes its .hydra/ files into a run dir
        sys.argv[1:] = torchrun_argv(sys.argv[1:])
    except LmxError as err:
        if debug():
            raise
        fail(err)
    _hydra_main()


if __name__ == "__main__":
    main()
