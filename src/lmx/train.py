"""`python -m lmx.train [overrides]`: compose, validate, seed, build, fit, report.

Heavy imports (torch, datasets) happen inside `train`, so --help, --cfg and config errors
answer quickly.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lmx.cli import debug, exit_code
from lmx.config import register_configs, validate
from lmx.errors import ConfigError, LmxError
from lmx.paths import config_dir
from lmx.stop_signals import Interrupted
from lmx.sweep import ERROR_FILE, config_hash, find_finished, mark_failed, read_status

log = logging.getLogger("lmx.train")
register_configs()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """One training run into `run_dir`; returns the run summary (metrics.json).

    Under torchrun every rank calls this; rank 0's run dir is the run's, and only rank 0
    writes to it.
    """
    validate(cfg)  # before any data work
    import torch
    from hydra.utils import instantiate
    from torch.nn.parallel import DistributedDataParallel

    from lmx import distributed
    from lmx.batching import batchify
    from lmx.corpus import load_corpus
    from lmx.device import resolve_device
    from lmx.optim import build_optimizer, build_scheduler
    from lmx.tb_logger import TensorBoard
    from lmx.trainer import Run, fit, num_steps

    if cfg.device.threads is not None:
        torch.set_num_threads(cfg.device.threads)
    world = distributed.world_from_env()
    device = resolve_device(cfg.device, world)
    distributed.init(world, device)
    try:
        run_dir = Path(world.broadcast(str(run_dir)))
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        if world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        else:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
        if not world.is_main:
            world.barrier()  # rank 0 builds the token cache first; the others then read it
        corpus = load_corpus(cfg.data)
        if world.is_main:
            world.barrier()
            shutil.copy(corpus.tokenizer_path, run_dir / "tokenizer.json")
        log.info(
            "data: vocab %d | tokens train %d, valid %d, test %d",
            corpus.vocab_size,
            *(len(corpus.splits[s]) for s in ("train", "valid", "test")),
        )

        d = cfg.data
        # The streams are small (16 MB for WikiText-2's train split): they move to the device
        # once, so that a step does no host-to-device copy. Under torchrun each rank keeps its
        # own rows.
        splits = {
            "train": world.train_rows(batchify(corpus.splits["train"], d.batch_size, "train",
                                               d.bptt)),
            "valid": world.eval_rows(batchify(corpus.splits["valid"], d.eval_batch_size, "valid",
                                              d.bptt)),
            "test": world.eval_rows(batchify(corpus.splits["test"], d.eval_batch_size, "test",
                                             d.bptt)),
        }  # fmt: skip
        splits = {name: rows.to(device) for name, rows in splits.items()}
        seed_everything(cfg.trainer.seed)  # the same initial weights on every rank
        model = instantiate(cfg.model, ntoken=corpus.vocab_size).to(device)
        if cfg.device.compile:
            model.compile()  # in place: state_dict keys stay those of the plain model
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "model: %s, %.2fM parameters, on %s%s",
            type(model).__name__,
            n_params / 1e6,
            device,
            f" x {world.world_size} processes" if world.enabled else "",
        )
        optimizer = build_optimizer(cfg.optim, model.parameters())
        steps_per_epoch = num_steps(splits["train"], d.bptt, cfg.trainer.limit_train_batches)
        scheduler, interval = build_scheduler(
            cfg.scheduler, optimizer, steps_per_epoch, cfg.trainer.epochs
        )

        meta = {
            "config": resolved,
            "vocab_size": corpus.vocab_size,
            "tokenizer": corpus.tokenizer.to_str(),  # the checkpoint alone can evaluate
        }
        resume_from = _load_resume_state(
            cfg, run_dir, meta, model, optimizer, scheduler, device, world.rank
        )
        if world.enabled:
            if cfg.model.sparse_embedding:
                raise ConfigError("model.sparse_embedding is for single-process runs")
            if resume_from is None:  # each rank draws its own dropout masks from here on
                torch.manual_seed(cfg.trainer.seed + world.rank)
            ids = [device.index] if device.type == "cuda" else None
            train_model = DistributedDataParallel(model, device_ids=ids)
        else:
            train_model = model
        # purge_step: TensorBoard drops the events an earlier try logged after the checkpoint.
        purge = resume_from["progress"]["step"] + 1 if resume_from else None
        tb = TensorBoard(
            run_dir / "tensorboard",
            enabled=cfg.trainer.tensorboard and world.is_main,
            purge_step=purge,
        )
        try:
            run = Run(
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                interval=interval,
                splits=splits,
                train_tokens=len(corpus.splits["train"]),
                bptt=d.bptt,
                device=device,
                precision=cfg.device.precision,
                run_dir=run_dir,
                tb=tb,
                checkpoint_meta=meta,
                world=world,
                train_model=train_model,
            )
            return fit(run, cfg.trainer, resume_from)
        finally:
            tb.close()
    finally:
        distributed.shutdown()


def _load_resume_state(cfg, run_dir, meta, model, optimizer, scheduler, device, rank=0):
    """trainer.resume: load a checkpoint's states into the built objects; None: fresh start."""
    if cfg.trainer.resume is None:
        return None
    from lmx.checkpoint import load_checkpoint
    from lmx.errors import CheckpointError
    from lmx.resume import check_compatible, find_resume_checkpoint, set_rng_state

    path = find_resume_checkpoint(cfg.trainer.resume, run_dir)
    if path is None:
        log.info("trainer.resume=auto: no checkpoint in %s yet; starting fresh", run_dir)
        return None
    ckpt = load_checkpoint(path, map_location=device)
    if "progress" not in ckpt:
        raise CheckpointError(f"cannot resume from {path}: it has no training progress in it")
    check_compatible(path, ckpt, {**meta["config"], "vocab_size": meta["vocab_size"]})
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot resume from {path}: {err}") from err
    # Last, since building the model above drew from the RNGs. Under torchrun each rank
    # takes its own state (when the world size is unchanged).
    per_rank = ckpt.get("rng_per_rank")
    set_rng_state(per_rank[rank] if per_rank and rank < len(per_rank) else ckpt["rng"])
    p = ckpt["progress"]
    log.info(
        "resuming from %s: epoch %d, batch %d, step %d", path, p["epoch"], p["batch"], p["step"]
    )
    return ckpt


def _share_machine(hydra_cfg: DictConfig) -> None:
    """Under a parallel launcher (joblib): each concurrent job gets its share of the CPU
    threads, so jobs do not oversubscribe the cores, and its own GPU when there are several."""
    n_jobs = hydra_cfg.launcher.get("n_jobs")
    if not n_jobs or n_jobs == 1:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    concurrent = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores
    torch.set_num_threads(max(1, cores // concurrent))
    message = f"{concurrent} concurrent jobs: {torch.get_num_threads()} CPU thread(s) each"
    if torch.cuda.device_count() > 1:
        gpu = hydra_cfg.job.num % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
        message += f", this one on cuda:{gpu}"
    log.info("%s", message)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and cfg.sweep.resume:
        job_hash = config_hash(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        done = find_finished(Path(hydra_cfg.sweep.dir), job_hash)
        if done is not None:
            log.info("sweep.resume: this job already finished in %s; skipping it", done)
            return read_status(done)["best_val_ppl"]
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier failed try in this dir
    if multirun:
        _share_machine(hydra_cfg)
    try:
        metrics = train(cfg, run_dir)
    except Interrupted as err:  # SIGINT/SIGTERM: saved a checkpoint, then stopped
        mark_failed(run_dir, err)
        log.error("lmx: %s", err)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt as err:  # a second Ctrl-C, or one outside the training loop
        mark_failed(run_dir, err)
        log.error("lmx: interrupted; outputs so far are in %s", run_dir)
        sys.exit(130)
    except Exception as err:
        mark_failed(run_dir, err)
        expected = isinstance(err, LmxError)
        if debug() or not (expected or multirun):
            raise  # an lmx bug: the traceback helps (it is in error.txt too)
        message = str(err) if expected else f"{type(err).__name__}: {err} (see {ERROR_FILE})"
        log.error("lmx: %s", message)
        if multirun:
            return float("nan")  # the sweep goes on; its summary lists this job
        sys.exit(exit_code(err))
    log.info("run dir: %s", run_dir)
    return metrics["best_val_ppl"]  # what a sweeper minimizes


def _torchrun_argv(argv: list[str]) -> list[str]:
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


def main() -> None:
    from lmx.cli import fail
    from lmx.preflight import check_command_line

    try:
        check_command_line(sys.argv[1:])  # every bad override in one message, before Hydra
        sys.argv[1:] = _torchrun_argv(sys.argv[1:])
    except LmxError as err:
        if debug():
            raise
        fail(err)
    _hydra_main()


if __name__ == "__main__":
    main()
