"""`lmx report PATH [--group-by KEY[,KEY]] [--baseline KEY=VALUE[,...]]`: compare the runs
under PATH (a run dir, a sweep dir, outputs/).

Runs are split by data fingerprint (corpus, tokenizer, evaluation windows, share scored) and
ranked within each, never across. --group-by pools the runs of each fingerprint by KEYs (over
seeds and every other setting): n, mean ± standard error, and the difference from a baseline
group with its standard error (lmx.runs.groups).

Writes into PATH: report.csv (every run), report.md, report.html (tables and figures in one
file that opens in a browser), report.png (perplexity against steps) and, grouped,
report_groups.csv and report_groups.png (bars with error bars).
"""

from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path
from typing import Any

from lmx.cli import print_to_reader, run
from lmx.config.rules import did_you_mean
from lmx.errors import ConfigError
from lmx.runs.collect import NOT_SCORED, collect
from lmx.runs.groups import (
    NUMBER_COLUMNS,
    Group,
    NoSuchGroup,
    group_notes,
    group_numbers,
    group_runs,
    group_table,
    parse_keys,
)
from lmx.runs.plots import plot_curves, plot_groups
from lmx.runs.table import (
    run_table,
    to_html,
    to_markdown,
    to_text,
    write_csv,
    write_rows_csv,
)

GROUP_NOTE = (
    "mean ± standard error over the finished runs of each group, the error on the log scale in "
    "%; a difference is the ppl over the baseline's less 1, in %, ± the standard error of the "
    "log difference; * marks one beyond 2 standard errors"
)
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.1em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:.5em 0}.note{color:#666;font-size:.85em}"""


def by_fingerprint(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Runs split by fingerprint, largest set first, the unscored last."""
    split: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        split.setdefault(r["fingerprint"], []).append(r)
    return sorted(split.items(), key=lambda kv: (kv[0] == NOT_SCORED, -len(kv[1])))


def report(root: Path, group_by: str | None = None, baseline: str | None = None) -> str:
    """Write the report files into root; return the text printed."""
    root = Path(root)
    if root.is_file():
        raise ConfigError(f"{root} is a file: give a run dir, a sweep dir or a folder of runs")
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder")
    rows = collect(root)
    if not rows:
        raise ConfigError(f"no runs under {root} (a run dir holds metrics.json or .hydra/)")
    if baseline and not group_by:
        raise ConfigError("--baseline needs --group-by")
    keys = parse_keys(group_by, rows) if group_by else []
    sets = by_fingerprint(rows)
    page = _Page(root)
    grouped: list[tuple[str, list[Group], list[str], list[list[str]]]] = []
    missing: list[NoSuchGroup] = []  # fingerprints without the --baseline group
    for fp, runs in sets:
        header, cells, hidden = run_table(runs)
        title = f"{len(runs)} run(s) on {fp}" if fp != NOT_SCORED else f"{len(runs)} run(s) {fp}"
        page.section(title, header, cells)
        notes = [f"{len(hidden)} more settings differ (report.csv has them): "
                 f"{', '.join(hidden)}"] if hidden else []  # fmt: skip
        if keys and fp != NOT_SCORED:
            try:
                groups = group_runs(runs, keys, baseline)
            except NoSuchGroup as err:
                missing.append(err)
                groups = group_runs(runs, keys, None)
                notes.append(f"{err}: here the first group is the baseline")
            notes += group_notes(groups, keys)
            g_header, g_cells = group_table(groups, keys)
            page.grouped(keys, g_header, g_cells)
            grouped.append((fp, groups, g_header, g_cells))
        page.notes(notes)
        page.errors([f"{r['run']}: {r['status']}: {r['error']}" for r in runs if r["error"]])
    if missing and len(missing) == len(grouped):
        raise missing[0]  # no set of runs has it: a typo, most likely
    if len([fp for fp, _ in sets if fp != NOT_SCORED]) > 1:
        page.text.insert(0, "runs on different data, tokens or evaluations are ranked apart")

    written = ["report.csv", "report.md", "report.html"]
    for stale in [*root.glob("report_groups*.png"), root / "report_groups.csv"]:
        stale.unlink(missing_ok=True)  # an earlier call's grouping
    write_csv(root / "report.csv", rows)
    figures = []
    if plot_curves(root / "report.png", [(fp, rs) for fp, rs in sets if fp != NOT_SCORED]):
        figures.append("report.png")
    if grouped:
        cells = [[fp, *row, *group_numbers(g)] for fp, groups, _, g_cells in grouped
                 for g, row in zip(groups, g_cells, strict=True)]  # fmt: skip
        header = ["fingerprint", *grouped[0][2], *NUMBER_COLUMNS]
        write_rows_csv(root / "report_groups.csv", header, cells)
        written.append("report_groups.csv")
    for i, (fp, groups, _, _) in enumerate(grouped):
        name = "report_groups.png" if i == 0 else f"report_groups_{i + 1}.png"
        plot_groups(root / name, groups, keys, fp)
        figures.append(name)
    written += figures
    page.write(root, figures)
    return "\n".join([*page.text, "", f"wrote {', '.join(written)} in {root}"]).lstrip("\n")


class _Page:
    """The report as printed text, Markdown and HTML at once: each part added once."""

    def __init__(self, root: Path):
        self.text: list[str] = []
        self.md = ["# lmx report\n"]
        self.body = [f"<h1>lmx report: {html.escape(str(root))}</h1>"]

    def section(self, title: str, header: list[str], cells: list[list[str]]) -> None:
        self.text += ["", f"== {title}", to_text(header, cells)]
        self.md += [f"\n## {title}\n", to_markdown(header, cells)]
        self.body += [f"<h2>{html.escape(title)}</h2>", to_html(header, cells)]

    def grouped(self, keys: list[str], header: list[str], cells: list[list[str]]) -> None:
        by = ", ".join(keys)
        self.text += ["", f"grouped by {by} ({GROUP_NOTE}):", to_text(header, cells)]
        self.md += [f"\nGrouped by {by} ({GROUP_NOTE}):\n", to_markdown(header, cells)]
        self.body += [f"<p class=note>Grouped by {html.escape(by)}: {html.escape(GROUP_NOTE)}.</p>",
                      to_html(header, cells)]  # fmt: skip

    def notes(self, notes: list[str]) -> None:
        self.text += notes
        self.md += [f"\n{n}\n" for n in notes]
        self.body += [f"<p class=note>{html.escape(n)}</p>" for n in notes]

    def errors(self, errors: list[str]) -> None:
        if errors:
            self.text += ["", *errors]
            self.md += ["\n" + "\n".join(f"- {e}" for e in errors) + "\n"]
            self.body += ["<ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in errors) + "</ul>"]

    def write(self, root: Path, figures: list[str]) -> None:
        """report.md and report.html, the figures linked and embedded."""
        self.md += [f"\n![{f}]({f})\n" for f in figures]
        (root / "report.md").write_text("".join(self.md))
        images = "".join(_image(root / f) for f in figures)
        (root / "report.html").write_text(
            f"<!doctype html><html><head><meta charset=utf-8><title>lmx report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(self.body)}{images}</body></html>\n"
        )


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{path.name}" src="data:image/png;base64,{data}"></p>'


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmx report",
        description="Compare the runs under PATH (a run dir, a sweep dir or outputs/).",
    )
    p.add_argument("path", help="a run dir, a multirun dir or outputs/")
    p.add_argument(
        "--group-by",
        metavar="KEY[,KEY]",
        help="pool runs by these settings (over seeds and all else): n, mean ± SE, differences",
    )
    p.add_argument("--baseline", metavar="KEY=VALUE[,...]",
                   help="the group the others are compared with (default: the first)")  # fmt: skip
    return p


def main(argv: list[str]) -> None:
    p = parser()
    args, unknown = p.parse_known_args(argv)
    if unknown:  # argparse names a misspelled flag but suggests nothing
        flags = [f for a in p._actions for f in a.option_strings]
        hints = "".join(did_you_mean(u.split("=")[0], flags) for u in unknown if u[:1] == "-")
        p.error(f"unrecognized arguments: {' '.join(unknown)}{hints}")
    print_to_reader(report(Path(args.path), args.group_by, args.baseline))


if __name__ == "__main__":
    run(main)
