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

from lmx.errors import CheckpointError, ConfigError
from lmx.files import METRICS_FILE, checkpoint_files, write_json

STATUS_FILE = METRICS_FILE
ERROR_FILE = "error.txt"
# A multirun's own record of its jobs, for its summary (lmx.runs.sweep): the id it writes
# into its sweep dir as it starts, and each job's outcome under that id in its run dir.
MULTIRUN_FILE = ".lmx_multirun"
JOB_FILE = ".lmx_job.json"  # {"multirun": id, "outcome": ..., "detail": ...}
PROCESS_FILE = ".lmx_process.json"  # {"host": ..., "pid": ...} of the try that started last


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def record_process(run_dir: Path) -> None:
    """Which process is running the run (its host and pid), written as each try starts, so
    that a report can tell a live run from one killed without a word (shown_status)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / PROCESS_FILE, {"host": socket.gethostname(), "pid": os.getpid()})


def shown_status(run_dir: Path, summary: dict[str, Any]) -> str:
    """A run's status for a report: its metrics.json's ("running" where it has none yet,
    "unreadable" where it is damaged), or "killed" where it says running but the process
    that last started it, on this machine, is gone (SIGKILL, out of memory): it resumes from
    its last checkpoint."""
    if not summary and (run_dir / STATUS_FILE).is_file():
        return "unreadable"  # a damaged metrics.json: no figure of it can be trusted
    status = summary.get("status", "running")
    try:
        process = json.loads((run_dir / PROCESS_FILE).read_text())
        if status != "running" or process["host"] != socket.gethostname():
            return status  # another machine's process cannot be looked at from here
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        return "killed"
    except (OSError, ValueError, KeyError, TypeError):  # no record (an older run), another
        pass  # user's live process, a damaged record
    return status


def overwrite_refusal(run_dir: Path, resume: str | None) -> str | None:
    """Why a run into `run_dir` would replace another run's checkpoints there, or None: a
    new run (no trainer.resume) or one resumed from a checkpoint in another folder."""
    own = run_dir / "checkpoints"
    found = checkpoint_files(own)
    if not found or resume == "auto":
        return None
    if resume:
        source = Path(str(resume)).expanduser()
        if not source.exists():
            return None  # the resume says so itself: no such file or run dir
        folder = source.parent if source.is_file() else source
        if (folder / "checkpoints").is_dir():
            folder = folder / "checkpoints"
        if folder.resolve() == own.resolve():
            return None  # this run's own checkpoint: a resume
    return (f"{run_dir} already holds a run ({found[0]}); this run would replace its "
            "checkpoints. trainer.resume=auto continues it; to start afresh, give another "
            f"hydra.run.dir or remove {run_dir}")  # fmt: skip


def check_single_run(argv: list[str]) -> None:
    """A single run (no -m) into a hydra.run.dir named on the command line that holds another
    run's checkpoints is refused here (overwrite_refusal), before Hydra writes its .hydra/
    files into that folder; so is sweep.resume=true, which only a multirun reads. A sweep's
    jobs are left to sweep.resume."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lmx.config.preflight import overrides_of

    overrides = overrides_of(argv)
    shows = {"-m", "--multirun", "-c", "--cfg", "-i", "--info"}  # a sweep, or a look: no run
    if overrides is None or any(a.split("=", 1)[0] in shows for a in argv):
        return
    parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(overrides)}
    flag = parsed.get("sweep.resume")
    if flag is not None and not flag.is_sweep_override() and flag.value() is True:
        raise ConfigError(
            "sweep.resume=true has no effect without -m: it skips a multirun's finished jobs; "
            "a single run resumes with trainer.resume=auto"
        )
    run_dir, resume = parsed.get("hydra.run.dir"), parsed.get("trainer.resume")
    if run_dir is None or run_dir.is_sweep_override() or not str(run_dir.value() or ""):
        return
    resume_value = None if resume is None or resume.is_sweep_override() else resume.value()
    why = overwrite_refusal(Path(str(run_dir.value())), resume_value)
    if why is not None:
        raise CheckpointError(why)


def _mark(run_dir: Path, status: str, message: str, over_done: bool = False, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = read_status(run_dir)
    if summary.get("status") == "done" and not over_done:
        return  # the results were complete before the stop (e.g. Ctrl-C while closing up)
    summary.update(status=status, error=" ".join(message.split()), **fields)  # one line
    write_json(run_dir / STATUS_FILE, summary)


def mark_failed(run_dir: Path, err: BaseException, over_done: bool = False) -> None:
    """Keep the traceback and flag the run as failed; what it had written stays. A "done"
    status stays too (this try finished before it failed) unless `over_done`: the caller
    knows that "done" was an earlier run's in the same dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    (run_dir / ERROR_FILE).write_text(text)
    _mark(run_dir, "failed", f"{type(err).__name__}: {err}", over_done)


def mark_interrupted(run_dir: Path, message: str, steps: int | None = None) -> None:
    """A signal stopped the run after it saved last.pt: it resumes with trainer.resume=auto.
    `steps`: those last.pt holds (metrics.json's count is its last validation's)."""
    _mark(run_dir, "interrupted", message, **({"steps": steps} if steps is not None else {}))


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
