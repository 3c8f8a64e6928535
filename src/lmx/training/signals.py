"""SIGINT / SIGTERM during training: finish the current step, save, then stop.

The first signal only sets a flag that the loop checks between steps, so the checkpoint it
writes is a consistent state. A second Ctrl-C falls through to Python's default and stops at
once (the last periodic checkpoint is still there).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

from lmx.errors import LmxError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(LmxError):
    """Training stopped on a signal after saving; the exit status is 128 + the signal."""

    def __init__(self, message: str, signum: int, stopped: str = "", step: int | None = None):
        super().__init__(message)
        self.signum = signum
        self.stopped = stopped or message  # what happened, without how to go on
        self.step = step  # the optimizer steps the saved checkpoint holds

    @classmethod
    def after(cls, signum: int, progress, last_path: Path, run_dir: Path) -> Interrupted:
        """The message once `last_path` holds the state after `progress`'s last step."""
        name = "SIGINT" if signum == 2 else "SIGTERM" if signum == 15 else f"signal {signum}"
        p = progress
        stopped = (f"{name}: stopped after step {p.step} (epoch {p.epoch}, batch {p.batch}) "
                   f"and saved {last_path}")  # fmt: skip
        hint = (f"Continue it with its own overrides, trainer.resume=auto and the run dir "
                f"{run_dir} (python -m lmx.train prints the whole command)")  # fmt: skip
        return cls(f"{stopped}. {hint}", signum, stopped, p.step)


class StopSignals:
    """Context manager: `requested` is the first signal number received, or None."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        for sig, handler in self._previous.items():  # a second signal acts at once
            signal.signal(sig, handler)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
