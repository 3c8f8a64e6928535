"""What a resume needs beyond the weights: which checkpoint, RNG states, and a config check.

A checkpoint stores every RNG the run draws from (python, numpy, torch CPU and CUDA) in forms
that torch.load(weights_only=True) accepts, so restoring them makes the next step draw the
same dropout masks as the uninterrupted run would have.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmx.errors import CheckpointError

CHECKPOINT_NAMES = ("last.pt", "best.pt")
# Settings a checkpoint's state depends on; the rest (epochs, logging, paths) may change.
_MUST_MATCH = ("model", "data.tokenizer", "data.batch_size", "data.bptt", "vocab_size")
_MUST_MATCH_TARGETS = ("optim._target_", "scheduler._target_")


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def newest_checkpoint(folder: Path) -> Path | None:
    """The most recently written of last.pt / best.pt in `folder`, or None."""
    found = [folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


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


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return "<absent>"
        tree = tree[part]
    return tree


def _leaves(tree: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}"))
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: checkpoint X, this run Y' for each setting the checkpoint's state depends on."""
    diffs = []
    for key in (*_MUST_MATCH, *_MUST_MATCH_TARGETS):
        old, new = _leaves(_lookup(saved, key), key), _leaves(_lookup(current, key), key)
        for leaf in sorted(old.keys() | new.keys()):
            a, b = old.get(leaf, "<absent>"), new.get(leaf, "<absent>")
            if a != b:
                diffs.append(f"{leaf}: checkpoint {a!r}, this run {b!r}")
    return diffs


def check_compatible(path: Path, ckpt: dict[str, Any], current: dict[str, Any]) -> None:
    saved = {**ckpt.get("config", {}), "vocab_size": ckpt.get("vocab_size")}
    diffs = config_differences(saved, current)
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: its config differs from this run's in\n"
            + "\n".join(f"  - {d}" for d in diffs)
        )
