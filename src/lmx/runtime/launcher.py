"""How a launcher's processes share the machine: jobs of a parallel sweep split the CPU
threads (and the GPUs), and torchrun's ranks other than 0 write nowhere but a scratch dir."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from lmx.errors import ConfigError

log = logging.getLogger(__name__)


def share_machine(hydra_cfg: DictConfig, threads: int | None = None) -> None:
    """Under a parallel launcher (joblib): each concurrent job gets its share of the CPU
    threads, so jobs do not oversubscribe the cores, and its own GPU when there are several.
    A device.threads the user set (`threads`) wins, and where the jobs' threads then pass the
    cores, that is said."""
    n_jobs = hydra_cfg.launcher.get("n_jobs")
    if not n_jobs or n_jobs == 1:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    concurrent = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores
    share = max(1, cores // concurrent)
    if threads is not None and n_jobs > 0 and concurrent * threads > cores:  # -1: as many as
        # there are cores, or fewer where the sweep has fewer jobs: no claim is made
        log.warning("device.threads=%d for each of %d concurrent jobs: %d threads on %d cores "
                    "slow every job (without device.threads each gets %d)", threads,
                    concurrent, concurrent * threads, cores, share)  # fmt: skip
    torch.set_num_threads(threads or share)  # device.threads: applied again as the run starts
    message = f"{concurrent} concurrent jobs: {torch.get_num_threads()} CPU thread(s) each"
    if torch.cuda.device_count() > 1:
        gpu = hydra_cfg.job.num % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
        message += f", this one on cuda:{gpu}"
    log.info("%s", message)


def relaunch_prefix() -> str:
    """How this run was launched, to launch it again: python, or torchrun with as many
    processes (one node; on several, its own launch options, which the process cannot see)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return "python -m lmx.train"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    options = f"--nproc_per_node={local}" if local == size else "<the same torchrun options>"
    return f"torchrun {options} -m lmx.train"


def torchrun_argv(argv: list[str]) -> list[str]:
    """Under torchrun, ranks other than 0 get a throwaway Hydra run dir: the run's own dir is
    rank 0's (train() broadcasts it), and only rank 0 writes there."""
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("-m (sweeps) cannot run under torchrun; launch one run per torchrun")
    if rank == 0:
        return argv
    import atexit
    import tempfile

    scratch = Path(tempfile.gettempdir()) / f"lmx-rank{rank}-{os.getpid()}"
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [*argv, f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
