"""How a run ended, on disk: `status` in its metrics.json says running, done, interrupted
(stopped by a signal after saving: resumable) or failed (error.txt keeps the traceback); and
the command that continues it."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import traceback
from pathlib import Path
from typing import Any

from lmx.files import METRICS_FILE, write_json

STATUS_FILE = METRICS_FILE
ERROR_FILE = "error.txt"
# A multirun's own record of its jobs, for its summary (lmx.runs.sweep): the id it writes
# into its sweep dir as it starts, and each job's outcome under that id in its run dir.
MULTIRUN_FILE = ".lmx_multirun"
JOB_FILE = ".lmx_job.json"  # {"multirun": id, "outcome": ..., "detail": ...}


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def shown_status(summary: dict[str, Any]) -> str:
    """A run's status for a report: "running" where its metrics.json says so but the process
    that wrote it, on this machine, is gone (SIGKILL, out of memory) is "killed" (it resumes
    from its last checkpoint). No metrics.json yet: "running" (or killed in its first
    epoch: nothing tells)."""
    status = summary.get("status", "running")
    process = summary.get("process") or {}
    if status != "running" or process.get("host") != socket.gethostname():
        return status  # another machine's process cannot be looked at from here
    try:
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        return "killed"
    except (OSError, KeyError, TypeError, ValueError):  # another user's live process, a bad pid
        pass
    return status


def _mark(run_dir: Path, status: str, message: str, over_done: bool = False) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = read_status(run_dir)
    if summary.get("status") == "done" and not over_done:
        return  # the results were complete before the stop (e.g. Ctrl-C while closing up)
    summary.update(status=status, error=" ".join(message.split()))  # one line, for tables
    write_json(run_dir / STATUS_FILE, summary)


def mark_failed(run_dir: Path, err: BaseException, over_done: bool = False) -> None:
    """Keep the traceback and flag the run as failed; what it had written stays. A "done"
    status stays too (this try finished before it failed) unless `over_done`: the caller
    knows that "done" was an earlier run's in the same dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    (run_dir / ERROR_FILE).write_text(text)
    _mark(run_dir, "failed", f"{type(err).__name__}: {err}", over_done)


def mark_interrupted(run_dir: Path, message: str) -> None:
    """A signal stopped the run after it saved last.pt: it resumes with trainer.resume=auto."""
    _mark(run_dir, "interrupted", message)


def resume_command(overrides: list[str], run_dir: Path, launch: str = "python -m lmx.train") -> str:
    """The shell command that continues the run in `run_dir`: its own overrides (Hydra's
    syntax, as typed), then trainer.resume=auto and the run dir, each quoted for the shell.
    The dir is quoted for Hydra too: a sweep job's folder (0_model.nhead=1) holds '='."""
    keep = [o for o in overrides if not o.lstrip("+~").startswith("trainer.resume=")]
    args = [*keep, "trainer.resume=auto", f"hydra.run.dir={hydra_quoted(str(run_dir))}"]
    return f"{launch} " + " ".join(_shell(a) for a in args)


def _shell(arg: str) -> str:
    """One argument for a POSIX shell: as it is, in double quotes where that is enough (the
    readable form of a Hydra-quoted value), else shlex's quoting."""
    if shlex.quote(arg) == arg:
        return arg
    return f'"{arg}"' if not set(arg) & set('"$`\\!') else shlex.quote(arg)


def hydra_quoted(text: str) -> str:
    """`text` as one quoted value of a Hydra override. Inside quotes Hydra unescapes only a
    backslash before a quote: so a quote gets one, and backslashes before one, or before the
    closing quote, are doubled; any other backslash stays as it is."""
    text = re.sub(r"\\+(?='|$)", lambda m: m.group(0) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def record_job(run_dir: Path, sweep_dir: Path, outcome: str, detail: str = "") -> None:
    """This job's outcome (running, done, failed, interrupted, skipped) for the summary of the
    multirun whose id is in sweep_dir; nothing where none is (a sweep dir made by hand)."""
    try:
        multirun = (sweep_dir / MULTIRUN_FILE).read_text().strip()
    except OSError:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"multirun": multirun, "outcome": outcome, "detail": " ".join(detail.split())}
    (run_dir / JOB_FILE).write_text(json.dumps(record))


def read_job(run_dir: Path) -> dict:
    """run_dir's JOB_FILE record: {} where there is none, or none that reads."""
    try:
        record = json.loads((run_dir / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
