"""The tables of `lmx report`: the runs of one fingerprint side by side, as text, Markdown,
CSV and HTML. Columns are the settings that vary between those runs, then the figures."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path
from typing import Any

from lmx.runs.collect import varying_keys
from lmx.stats import shown

FIGURES = ["best_val_ppl", "test_ppl", "epochs", "steps", "tokens_per_s", "wall_time", "status"]
MAX_SETTING_COLUMNS = 8  # the rest go to report.csv, and a line under the table names them


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else shown(value, f",.{digits}f")
    return str(value)


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.5:
        return "<1 s"  # not "0 s": the run took some time
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def shown_keys(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(the varying settings a table shows, those left to report.csv): group choices first
    (model=lstm says more than its keys), then what a run set on its command line."""
    keys = varying_keys(rows)
    typed = {k for r in rows for k in r.get("overrides", {})}
    ranked = sorted(keys, key=lambda k: ("." in k, k not in typed))  # stable: a-z within
    shown = set(ranked[:MAX_SETTING_COLUMNS])
    return [k for k in keys if k in shown], [k for k in keys if k not in shown]


def run_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, cells, the varying settings left out of the columns)."""
    keys, hidden = shown_keys(rows)
    header = ["run", *keys, *FIGURES]
    body = [
        [r["run"], *(r["settings"].get(k, "-") for k in keys), _fmt(r["best_val_ppl"]),
         _fmt(r["test_ppl"]), _fmt(r["epochs"]), _fmt(r["steps"]), _fmt(r["tokens_per_s"], 0),
         _wall(r["wall_time_s"]), r["status"]]
        for r in rows
    ]  # fmt: skip
    return header, body, hidden


def to_text(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def to_markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_html(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Every run, one line each, with its fingerprint and the settings that vary."""
    keys = varying_keys(rows)
    fields = ["run", "fingerprint", *keys, "best_val_ppl", "test_ppl", "eval", "epochs", "steps",
              "tokens_per_s", "wall_time_s", "status", "error"]  # fmt: skip
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: r["settings"].get(k, "") for k in keys}, **r})


def write_rows_csv(path: Path, header: list[str], body: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)
