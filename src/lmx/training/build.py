"""From a checked config to a `Run` the loop can fit: data, model, optimizer, schedule,
scaler, and the checkpoint to resume from (if any). Under torchrun every rank builds its own;
rank 0 alone writes the run dir."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from lmx.data.batching import num_steps
from lmx.data.streams import UNK_WARN, streams, unk_note
from lmx.errors import ConfigError, DataError
from lmx.runs.status import ERROR_FILE
from lmx.runtime.distributed import World
from lmx.training import hparams
from lmx.training.averaging import WeightAverage
from lmx.training.budget import Budget, parse_duration
from lmx.training.checkpoint import load_checkpoint
from lmx.training.logs import TensorBoard, parameter_count
from lmx.training.loop import Run
from lmx.training.optim import build_optimizer, build_scheduler
from lmx.training.resume import (
    carry_checkpoints,
    check_compatible,
    find_resume_checkpoint,
    legacy_decay_all,
    restore,
    saved_data_hint,
)
from lmx.training.step import make_scaler

log = logging.getLogger("lmx.train")


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


INIT_SHARE = 0.01  # a share of the initial weights left in the final average that is warned of


def _init_share(ema, steps: int) -> float:
    return ema.decay**steps if ema.decay is not None and ema.start_step == 0 else 0.0


def warn_init_share(ema, steps: int, planned: int | None = None) -> None:
    """trainer.ema from step 0 starts from the random initial weights: where over INIT_SHARE
    of them is left in the average after `steps` (decay^steps), its figures are those of a
    partly untrained model. With `planned` (at the end of a run under a time budget), only
    where the planned length did not say it at the start already."""
    if _init_share(ema, steps) <= INIT_SHARE or (
        planned is not None and _init_share(ema, planned) > INIT_SHARE
    ):
        return
    log.warning("trainer.ema.decay=%g starts from the random initial weights, and after the "
                "run's %d steps they are still %.0f%% of the average (decay^steps): its "
                "validation and test figures are those of a partly untrained model; "
                "trainer.ema.start_step=N starts it from the weights of step N, or a lower "
                "decay forgets sooner", ema.decay, steps, 100 * ema.decay**steps)  # fmt: skip


def warn_idle_settings(t, budget: Budget) -> None:
    """Settings that the run's planned length leaves without effect, said once as a new run
    starts (a resume may move its horizon; a time budget can only end a run sooner, so what
    is idle at the planned length is idle under one too)."""
    planned, epoch = budget.planned_steps(), budget.steps_per_epoch
    if planned == 0:  # trainer.epochs=0: a run that only evaluates
        return
    if t.ema.decay is not None and t.ema.start_step >= planned:
        log.warning("trainer.ema.start_step=%d is at or past the run's last step (%d): the "
                    "average never starts, and the raw weights are validated and tested",
                    t.ema.start_step, planned)  # fmt: skip
    else:  # under a time budget the steps taken may be fewer: train.py looks again at the end
        warn_init_share(t.ema, planned)
    every = t.val_every_steps
    if every and (every >= planned or every % epoch == 0):  # the step count runs on
        log.warning("trainer.val_every_steps=%d falls only on epoch ends or past the run's "
                    "last step (%d): no validation happens within an epoch (each ends with "
                    "one anyway)", every, planned)  # fmt: skip


def build_run(
    cfg: DictConfig, run_dir: Path, world: World, device: torch.device, resume_own: bool = False
) -> tuple[Run, dict[str, Any] | None]:
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    d = cfg.data
    resume = "auto" if resume_own else cfg.trainer.resume
    path = find_resume_checkpoint(resume, run_dir) if resume else None
    # On the CPU: the states are copied onto the device as they load (the optimizer's, with
    # AdamW's step count kept on the CPU where torch wants it), and nothing of the file stays
    # on a GPU beside the run
    resume_from = load_checkpoint(path) if path is not None else None
    splits = ("train", "valid", "test") if cfg.trainer.test else ("train", "valid")
    try:
        data = streams(d, splits, device=device, world=world)
    except DataError as err:  # e.g. a resume that left out the run's data.local_dir
        if hint := saved_data_hint(resume_from, d):
            raise DataError(f"{str(err).rstrip('.')}. {hint}") from err
        raise
    log.info(
        "data: %s | vocab %d | tokens %s%s",
        d.local_dir or f"{d.hub_path} ({d.hub_config})",
        data.vocab_size,
        ", ".join(f"{s} {n}" for s, n in data.tokens.items()),
        unk_note(data.unk_share),
    )
    asked = d.tokenizer.vocab_size
    if asked is not None and asked != data.vocab_size:
        log.info(
            "data: the vocabulary has %d types where data.tokenizer.vocab_size=%d asked for %s",
            data.vocab_size,
            asked,
            "more: the training text has no more (or min_frequency left no more), or a "
            "special token the text holds (WikiText's literal <unk>) took two of the places, as "
            "the tokenizers library's trainers count it"
            if asked > data.vocab_size
            else "fewer: the tokenizers library's trainers keep every special token, and BPE's "
            "the whole alphabet of the training text",
        )
    if world.is_main and max(data.unk_share.values(), default=0.0) > UNK_WARN:
        log.warning(
            "data: over %.0f%% of a split's tokens are <unk> (above): its perplexity is that "
            "of a much easier task; a larger vocabulary (data.tokenizer.vocab_size, "
            "min_frequency) keeps more words",
            100 * UNK_WARN,
        )

    seed_everything(cfg.trainer.seed)  # the same initial weights on every rank
    try:
        model = instantiate(cfg.model, ntoken=data.vocab_size).to(device)
    except InstantiationException as err:  # e.g. model.cutoffs beyond this vocabulary
        raise ConfigError(
            f"cannot build model ({cfg.model._target_}): {err.__cause__ or err}"
        ) from None
    if cfg.device.compile:
        model.compile()  # in place: state_dict keys stay those of the plain model
    log.info(
        "model: %s, %.2fM parameters, on %s%s",
        type(model).__name__,
        parameter_count(model) / 1e6,
        device,
        f" x {world.world_size} processes" if world.enabled else "",
    )
    optimizer = build_optimizer(cfg.optim, model, legacy_decay_all(resume_from, resolved))
    steps_per_epoch = num_steps(data.rows["train"], d.bptt, cfg.trainer.limit_train_batches)
    t = cfg.trainer
    budget = Budget(t.epochs, steps_per_epoch, t.max_steps,
                    parse_duration(t.max_time) if t.max_time is not None else None)  # fmt: skip
    schedule = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch, t.epochs, t.max_steps)
    scaler = make_scaler(device, cfg.device.precision)
    average = WeightAverage(model, t.ema.decay, t.ema.start_step)
    if path is None:
        warn_idle_settings(t, budget)
    meta = {
        "config": resolved,
        "vocab_size": data.vocab_size,
        "tokenizer": data.tokenizer.to_str(),  # the checkpoint alone can evaluate
        "data_sha256": data.source_sha256,  # so lmx eval can tell if the text changed since
    }

    if resume_from is not None:
        check_compatible(path, resume_from, {**resolved, "vocab_size": data.vocab_size})
        restore(resume_from, path, model, optimizer, schedule, scaler, average, budget,
                world.rank, world.world_size)  # fmt: skip
    elif resume == "auto":
        log.info("trainer.resume=auto: no checkpoint in %s yet; starting fresh", run_dir)
    if resume_from is not None:
        progress = resume_from.progress
        if progress["epoch"] > t.epochs:
            log.info("resume: the checkpoint is past trainer.epochs=%d (whole epochs done: "
                     "%d): nothing is left to train", t.epochs, progress["epoch"] - 1)  # fmt: skip
        carry_checkpoints(path, progress, run_dir, copy=world.is_main)
    if world.is_main:  # after the resume check: a refused resume leaves the run dir as it was
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier failed try
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        shutil.copy(data.tokenizer_path, run_dir / "tokenizer.json")

    train_model = model
    if world.enabled:
        if data.rows["train"].size(0) < cfg.trainer.accumulate:
            raise ConfigError(
                f"trainer.accumulate={cfg.trainer.accumulate} needs as many batch rows per "
                f"process; each of the {world.world_size} processes has "
                f"{data.rows['train'].size(0)} (data.batch_size / processes)"
            )
        if cfg.model.sparse_embedding:
            raise ConfigError("model.sparse_embedding is for single-process runs")
        if resume_from is None:  # each rank draws its own dropout masks from here on
            torch.manual_seed(cfg.trainer.seed + world.rank)
        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    # purge_step: TensorBoard drops the events an earlier try logged after the checkpoint.
    purge = resume_from.step + 1 if resume_from else None
    tb = TensorBoard(run_dir / "tensorboard", cfg.trainer.tensorboard and world.is_main, purge)
    if resume_from is None:  # a resumed run's entry is in its event files already
        hparams.start_session(tb, resolved, cfg.trainer.hparams_all, parameter_count(model))
    run = Run(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=scaler,
        budget=budget,
        average=average,
        eval_windows={"context": cfg.eval.context, "stride": cfg.eval.stride},
        splits=data.rows,
        train_tokens=data.tokens["train"],
        bptt=d.bptt,
        device=device,
        precision=cfg.device.precision,
        run_dir=run_dir,
        tb=tb,
        checkpoint_meta=meta,
        world=world,
        train_model=train_model,
    )
    return run, resume_from.progress if resume_from else None
