"""Checkpoints: one plain dict per file, written atomically, loaded with weights_only=True.

Keys: model, optimizer, scheduler, epoch, step, best_val_loss, config (resolved, plain
containers), vocab_size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmx.errors import CheckpointError
from lmx.files import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))  # WriteError names the path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # weights_only: tensors and plain containers only; a pickle carrying code is refused.
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
