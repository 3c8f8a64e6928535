"""What a checkpoint holds, defined once: `Checkpoint`. Every writer and reader goes through it.

On disk a checkpoint is one plain dict (`Checkpoint.to_dict`), written atomically and read
with torch.load(weights_only=True), so a file that carries code is refused without running
it. Readers that do not know lmx find the summary keys `epoch`, `step` and `best_val_loss`
at the top level. Checkpoints written by older lmx versions load too: their configs pass
through lmx.config.legacy.upgrade_config (moved `_target_` paths).

It also holds every RNG the run draws from (python, numpy, torch CPU and CUDA), so that a
resumed run draws the same dropout masks as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmx.config.legacy import upgrade_config
from lmx.errors import CheckpointError
from lmx.files import atomic_write, checkpoint_files
from lmx.models.carried import carries_state, get_state

if TYPE_CHECKING:
    from lmx.training.loop import Run
    from lmx.training.state import Progress

log = logging.getLogger(__name__)

# 1: before `format` was stored (the layout before lmx's subpackages); 2: subpackages;
# 3: weight-decay groups (a one-group AdamW checkpoint before 3 decayed every tensor)
FORMAT = 3
_SUMMARY = ("epoch", "step", "best_val_loss")  # derived from progress; for outside readers


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]  # the model's state_dict
    config: dict[str, Any]  # the run's resolved config, plain containers
    vocab_size: int
    tokenizer: str | None = None  # the tokenizers JSON; None: tokenizer.json in the run dir
    # split -> sha256 of the local text file the run read; None: from the Hub, or an older run
    data_sha256: dict[str, str] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # the fp16 gradient scaler's state (CUDA)
    ema: dict[str, Any] | None = None  # the weight average (trainer.ema), if the run keeps one
    progress: dict[str, Any] | None = None  # lmx.training.state.Progress, as a dict
    rng: dict[str, Any] | None = None  # rank 0's RNG states
    rng_per_rank: list[dict[str, Any]] | None = None  # every rank's, under torchrun
    # A recurrent model's state carried into the next window (lmx.models.carried), per rank:
    # exact resume in mid-epoch needs it. None: a model that carries none.
    carried: list[Any] | None = None
    format: int = FORMAT

    def eval_weights(self) -> dict[str, torch.Tensor]:
        """The weights to score: the average where the run kept one, else the model's own."""
        return {**self.model, **self.ema["weights"]} if self.ema else self.model

    @property
    def step(self) -> int:
        return self.progress["step"] if self.progress else 0

    def to_dict(self) -> dict[str, Any]:
        # Shallow: dataclasses.asdict would deep-copy every tensor of the model and optimizer.
        fields = (f.name for f in dataclasses.fields(self))
        out = {k: getattr(self, k) for k in fields if getattr(self, k) is not None}
        if self.progress:
            p = self.progress
            out.update(epoch=p["epoch"] - 1, step=p["step"], best_val_loss=p["best_val_loss"])
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any], path: Path) -> Checkpoint:
        for key in ("model", "config", "vocab_size"):
            if key not in state:
                raise CheckpointError(f"{path} is not an lmx checkpoint: it has no {key!r} entry")
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in state.items() if k in fields}
        known["config"] = upgrade_config(state["config"])
        known.setdefault("format", 1)
        return cls(**known)


def save_run(path: Path, run: Run, progress: Progress) -> None:
    """A training run's checkpoint. Called on every rank: rank 0 writes, with every rank's
    RNG state; the others wait until the file is complete."""
    per_rank = run.world.gather((rng_state(), get_state(run.model)))
    if run.world.is_main:
        rngs = [rng for rng, _ in per_rank]
        ckpt = Checkpoint(
            model=run.model.state_dict(),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.schedule.scheduler.state_dict(),
            scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
            ema=run.average.state_dict(),
            progress=progress.to_dict(),
            rng=rngs[0],
            rng_per_rank=rngs if run.world.enabled else None,
            carried=[state for _, state in per_rank] if carries_state(run.model) else None,
            **run.checkpoint_meta,
        )
        save_checkpoint(path, ckpt)
    run.world.barrier()


class Saver:
    """Where a run's checkpoints go (`best`, `last`), and the run's wall time that last.pt
    carries (all its tries together), kept by the caller's clock so that tests can fake it."""

    def __init__(self, run: Run, progress: Progress, clock):
        self.run, self.progress, self.clock = run, progress, clock
        self.before_save = lambda: None  # the loop's meters read: no non-finite weights saved
        self.best = run.run_dir / "checkpoints" / "best.pt"
        self.last = run.run_dir / "checkpoints" / "last.pt"
        self.start = clock()

    def wall_seconds(self, agreed: bool = False) -> float:
        """The run's wall time; `agreed`: the same on every rank under torchrun (a collective:
        every rank must ask), for decisions such as a time budget."""
        wall = self.progress.wall_seconds + self.clock() - self.start
        if agreed and self.run.budget.max_time_s is not None:  # only a time budget needs it
            return self.run.world.max(wall, torch.device("cpu"))  # gloo: no GPU wait
        return wall

    def save(self, path: Path) -> None:
        # best.pt too: a kill between its write and last.pt's resumes from it (the newer step)
        self.progress.wall_seconds, self.start = self.wall_seconds(), self.clock()
        self.before_save()
        save_run(path, self.run, self.progress)

    def save_last(self) -> None:
        self.save(self.last)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = ckpt.to_dict()
    atomic_write(path, lambda f: torch.save(state, f))  # WriteError names the path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> Checkpoint:
    """mmap: tensors stay on disk until touched (cheap when only the metadata is wanted)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        if not zipfile.is_zipfile(path):  # what torch.save writes; else torch's own long story
            raise CheckpointError(
                f"cannot load checkpoint {path}: not a whole file torch.save wrote (damaged, "
                "cut short, or another kind of file)"
            ) from None
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an lmx checkpoint: it holds a {type(state)}")
    return Checkpoint.from_dict(state, path)


def newest_checkpoint(folder: Path) -> Path | None:
    """The one of last.pt / best.pt in `folder` with the most training steps, or None."""
    found = checkpoint_files(folder)
    if len(found) < 2:
        return found[0] if found else None
    steps = []
    for path in found:
        try:
            steps.append(load_checkpoint(path, mmap=True).step)  # the step only
        except CheckpointError as err:  # e.g. a damaged best.pt: last.pt can still resume
            log.warning("resume: skipping %s: %s", path, err)
            steps.append(-1)
    return found[steps.index(max(steps))]


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Every RNG's state, in forms that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore rng_state()'s states, wherever the checkpoint was loaded (map_location): torch
    and numpy take RNG states on the CPU only."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    saved = state["cuda"]
    now = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, gpu_state in enumerate(saved[:now]):
        torch.cuda.set_rng_state(gpu_state.cpu(), index)
    if len(saved) > now:
        log.warning(
            "resume: the checkpoint holds the RNG states of %d GPU(s) and this machine has %d; "
            "restored %d of them. Dropout on the GPUs without a saved state will not repeat "
            "the saved run's masks.",
            len(saved),
            now,
            now,
        )
