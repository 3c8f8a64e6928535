"""Crash-safe file writes, and the names of a run's summary and checkpoint files (no heavy
imports here)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from lmx.errors import LmxError

METRICS_FILE = "metrics.json"  # the run summary; its "status" says running, done or failed
# a run's checkpoints/ files; on a tie in steps, last.pt wins (newest_checkpoint)
CHECKPOINT_NAMES = ("last.pt", "best.pt")


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints in a run's checkpoints/ folder, in CHECKPOINT_NAMES order."""
    return [folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()]


class WriteError(LmxError):
    """A file could not be written (disk full, no permission); the message names it."""


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call write(file) on a temp file beside `path`, fsync it, then rename it over `path`.

    A crash mid-write leaves the previous file intact: readers see the old or the new one.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from err


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2).encode()
    atomic_write(path, lambda f: f.write(text))
