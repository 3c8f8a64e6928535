"""Resume: which checkpoint, what may change since it was written, and loading it back.

A resumed run is the same run: it loads the model, optimizer, scheduler, scaler, progress and
RNG states, and goes on with the same batches and dropout masks. What may differ from the
checkpoint's config:
- the run's length (`trainer.epochs`, `trainer.limit_train_batches`): a schedule whose horizon
  came from the length moves to the new one from the current step, so a cosine lr follows the
  curve of a run planned with the new total from here on;
- settings changed on purpose that act only on the steps to come (dropout, the loss kernel,
  the sparse embedding gradient, the device and precision, the gradient clip, on_nonfinite);
- logging, checkpoint cadence and paths.
Everything else would change the arithmetic of the steps already taken, or is held in the
checkpoint's state and so would silently not take effect (optimizer and scheduler settings,
the seed): it is refused, with the list of what differs. The log says what changed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lmx.config.legacy import typed_config
from lmx.config.rules import leaves
from lmx.config.schema import Interval
from lmx.errors import CheckpointError
from lmx.models.carried import carries_state, set_state
from lmx.training.averaging import WeightAverage
from lmx.training.budget import Budget
from lmx.training.checkpoint import Checkpoint, newest_checkpoint, set_rng_state
from lmx.training.optim import Schedule
from lmx.training.schedules import ClosedFormLR

log = logging.getLogger(__name__)


class ResumeRefused(CheckpointError):
    """The resumed run's config differs from the checkpoint's in a way that cannot hold. The
    run dir is left as it was (its status, config.yaml and checkpoints)."""


LENGTH = (
    "trainer.epochs",
    "trainer.limit_train_batches",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.early_stop.",
)
ON_PURPOSE = (
    "model.dropout",
    "model.attn_dropout",
    "model.fused_loss",
    "model.sparse_embedding",
    "device.",
    "trainer.grad_clip",
    "trainer.on_nonfinite",
    "trainer.accumulate",
    "trainer.val_every_steps",
    "trainer.ema.",
)
FREE = (
    "trainer.log_interval",
    "trainer.progress",
    "trainer.tensorboard",
    "trainer.samples",
    "trainer.hparams_all",
    "name",
    "trainer.resume",
    "trainer.checkpoint_every_steps",
    "trainer.throughput_warmup_steps",
    "trainer.eval_tokens_per_forward",
    "trainer.test",
    "data.local_dir",
    "data.cache_dir",
    "sweep.",
)


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """trainer.resume -> a checkpoint file. "auto": this run dir's newest, or None (fresh
    start). A path: that file, or the newest checkpoint of that run dir; it must exist."""
    if resume == "auto":
        return newest_checkpoint(run_dir / "checkpoints")
    path = Path(resume).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            found = newest_checkpoint(folder)
            if found is not None:
                return found
        raise CheckpointError(f"trainer.resume={resume}: no last.pt or best.pt in {path}")
    raise CheckpointError(f"trainer.resume={resume}: no such file or run dir")


def carry_checkpoints(source: Path, progress: dict[str, Any], run_dir: Path, copy: bool) -> None:
    """A run resumed from another run dir's checkpoint (trainer.resume=PATH) goes on in its
    own run dir: it copies that run's best.pt there, which its best score and its test refer
    to, and the checkpoint it resumed from as its last.pt, until it saves its own (rank 0
    copies: `copy`). Refused where the checkpoint had a best model and no best.pt lies beside
    it: the test would score another model than the run's best."""
    best, own = source.parent / "best.pt", run_dir / "checkpoints"
    if source.parent.resolve() == own.resolve():
        return  # this run's own checkpoint
    if progress.get("best_epoch") is not None and not best.is_file():
        raise CheckpointError(
            f"cannot resume from {source} into {run_dir}: the run's best model (its best.pt) "
            f"is not beside it, and this run's best and test would stand for it; copy that "
            f"best.pt into {source.parent}, or resume in the checkpoint's own run dir"
        )
    if not copy:
        return
    own.mkdir(parents=True, exist_ok=True)
    for src, name in ((best, "best.pt"), (source, "last.pt")):
        if src.is_file():
            tmp = own / f".{name}.carry-{os.getpid()}"
            shutil.copyfile(src, tmp)
            os.replace(tmp, own / name)  # atomic, as every checkpoint write
    log.info("resume: %s and %s carried over into %s", best.name, source.name, own)


def saved_data_hint(ckpt: Checkpoint | None, data: Any) -> str:
    """Where data a resumed run could not read is not the data its checkpoint's run read (a
    resume command without the run's data.local_dir): which it was."""
    saved = ((ckpt.config or {}).get("data") or {}).get("local_dir") if ckpt else None
    if saved is None or saved == data.local_dir:
        return ""
    return (f"The checkpoint's run read data.local_dir={saved}: a resume gives the run's own "
            "overrides again")  # fmt: skip


def _kind(key: str) -> str:
    for kind, prefixes in (("length", LENGTH), ("on purpose", ON_PURPOSE), ("free", FREE)):
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes):
            return kind
    return "refused"


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list[str]]:
    """Each differing setting as 'key: checkpoint X, this run Y', grouped by its kind."""
    old, new = leaves(saved), leaves(current)
    changes: dict[str, list[str]] = {"refused": [], "length": [], "on purpose": [], "free": []}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            changes[_kind(key)].append(f"{key}: checkpoint {a!r}, this run {b!r}")
    return changes


def check_compatible(path: Path, ckpt: Checkpoint, current: dict[str, Any]) -> None:
    """Refuse what may not change; log what did."""
    typed = typed_config(ckpt.config, str(path))  # keys added since it was written: defaults
    saved = {**OmegaConf.to_container(typed, resolve=True, enum_to_str=True),
             "vocab_size": ckpt.vocab_size}  # fmt: skip
    changes = config_changes(saved, current)
    if changes["refused"]:
        raise ResumeRefused(
            f"cannot resume from {path}: these settings differ from the checkpoint's, and "
            "would change the steps it already took or would not take effect (the checkpoint "
            "holds their state):\n" + "\n".join(f"  - {d}" for d in changes["refused"])
        )
    notes = {
        "length": "the run's length: the schedule follows the new horizon",
        "on purpose": "takes effect from the next step",
        "free": "logging, cadence or paths",
    }
    for kind, note in notes.items():
        for change in changes[kind]:
            if not change.startswith("trainer.resume:"):  # it always differs on a resume
                log.info("resume: changed since the checkpoint (%s): %s", note, change)


def legacy_decay_all(ckpt: Checkpoint | None, resolved: dict[str, Any]) -> bool | None:
    """A checkpoint from before weight-decay groups holds one parameter group: the run goes
    on decaying every tensor (optim.decay_all=true, also written into `resolved`), and the
    log says so. None: the optimizer is built as configured."""
    if ckpt is None or ckpt.optimizer is None:
        return None
    optim = resolved["optim"]
    one_group = len(ckpt.optimizer.get("param_groups", [])) == 1
    before = ckpt.format < 3  # format 3: weight-decay groups
    if before and one_group and optim.get("weight_decay") and not optim.get("decay_all"):
        log.warning(
            "resume: the checkpoint decays every tensor (one parameter group, written before "
            "weight-decay groups); this run goes on with optim.decay_all=true"
        )
        optim["decay_all"] = True
        return True
    return None


def restore(
    ckpt: Checkpoint,
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    scaler: torch.amp.GradScaler,
    average: WeightAverage,
    budget: Budget,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """Load the checkpoint's states into the built objects, RNG states last."""
    if ckpt.progress is None:
        raise CheckpointError(f"cannot resume from {path}: it has no training progress in it")
    try:
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer)
        schedule.scheduler.load_state_dict(ckpt.scheduler)
        if ckpt.scaler and scaler.is_enabled():
            scaler.load_state_dict(ckpt.scaler)
        if average.on and not average.load_state_dict(ckpt.ema):
            log.info("resume: the checkpoint has no weight average; it starts from the weights")
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot resume from {path}: {err}") from err
    _move_horizon(schedule, optimizer, ckpt.progress, budget)
    _restore_carried(ckpt, model, rank, world_size)
    # Last, since building the model drew from the RNGs. Under torchrun each rank takes its
    # own state when the world size is unchanged.
    per_rank = ckpt.rng_per_rank
    set_rng_state(per_rank[rank] if per_rank and rank < len(per_rank) else ckpt.rng)
    p = ckpt.progress
    log.info(
        "resuming from %s: epoch %d, batch %d, step %d", path, p["epoch"], p["batch"], p["step"]
    )


def _restore_carried(ckpt: Checkpoint, model: torch.nn.Module, rank: int, world_size: int) -> None:
    """A recurrent model's carried state, this rank's; where the checkpoint has none for it
    (older lmx, another world size) the window after a mid-epoch resume starts from zeros."""
    if not carries_state(model):
        return
    saved = ckpt.carried or []
    if len(saved) == world_size:  # else each process's rows are not those it saved
        set_state(model, saved[rank])
    elif ckpt.progress["batch"] > 0:  # mid-epoch; at an epoch's start the state is reset anyway
        log.warning("resume: no carried state for this process in the checkpoint; the next "
                    "window starts from a zero state, so the run is not bit-exact")  # fmt: skip


def _move_horizon(
    schedule: Schedule, optimizer: torch.optim.Optimizer, p: dict[str, Any], budget: Budget
) -> None:
    """The saved scheduler state carries the old run length; give it this run's (the steps
    already taken plus the steps still to come), and set the lr that the schedule planned
    with the new length gives at the current step."""
    scheduler = schedule.scheduler
    if not schedule.horizon or budget.max_time_s is not None:
        return  # a time budget's horizon is the saved estimate, re-estimated as the run goes
    spe, epochs = budget.steps_per_epoch, budget.epochs
    if schedule.interval == Interval.step:
        left = max(0, spe - p["batch"]) + max(0, epochs - p["epoch"]) * spe
        total = p["step"] + left if p["epoch"] <= epochs else p["step"]
        total = min(total, budget.max_steps) if budget.max_steps is not None else total
    else:
        total = epochs
    moved = {k: max(1, total) for k in schedule.horizon if getattr(scheduler, k) != max(1, total)}
    if not moved:
        return
    if not isinstance(scheduler, ClosedFormLR):  # its lr is a closed form of the step
        raise ResumeRefused(
            f"the run's length changed, and {type(scheduler).__name__} cannot move its horizon "
            f"({', '.join(moved)}) to the new length; keep trainer.epochs and "
            "trainer.limit_train_batches as they were"
        )
    for key, value in moved.items():
        log.info("resume: scheduler %s %s -> %s", key, getattr(scheduler, key), value)
        setattr(scheduler, key, value)
    lrs = scheduler.get_lr()
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
