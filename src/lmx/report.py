"""`python -m lmx.report PATH`: compare the runs under PATH (a run dir, a sweep dir, outputs/).

Prints the table (lmx.runs.table) and writes report.csv, report.md and report.png in PATH.
"""

from __future__ import annotations

from pathlib import Path

from lmx.cli import run
from lmx.runs.table import report

USAGE = "usage: python -m lmx.report PATH   (a run dir, a multirun dir or outputs/)"


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    print(report(Path(argv[0])))


if __name__ == "__main__":
    run(main)
