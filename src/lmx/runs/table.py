"""The table behind `python -m lmx.report PATH`: the runs under PATH side by side.

Sorted by best validation perplexity: the overrides that differ between runs, best val ppl,
test ppl, how much of the eval splits was scored, epochs, tokens/s, wall time, status. Written
as report.csv and report.md in PATH, with validation perplexity per epoch in report.png.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lmx.errors import ConfigError
from lmx.runs.status import STATUS_FILE, read_status

FIXED = ["best_val_ppl", "test_ppl", "eval", "epochs", "tokens_per_s", "wall_time", "status"]


def find_runs(root: Path) -> list[Path]:
    """Run dirs under root: a metrics.json, or a .hydra/ folder (a run that died early)."""
    found = {p.parent for p in root.glob(f"**/{STATUS_FILE}")}
    found |= {p.parent for p in root.glob("**/.hydra") if p.is_dir()}
    return sorted(found)


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = (str(o).partition("=") for o in OmegaConf.load(path))
    # hydra.* and sweep.* say how a job was run, not what it is
    return {k: v for k, _, v in pairs if not k.startswith(("hydra.", "sweep."))}


def collect(root: Path) -> list[dict[str, Any]]:
    rows = []
    for run_dir in find_runs(root):
        metrics = read_status(run_dir)
        rows.append(
            {
                "run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
                "overrides": _overrides(run_dir),
                "best_val_ppl": metrics.get("best_val_ppl"),
                "test_ppl": metrics.get("test_ppl"),
                "eval": _coverage(metrics),
                "epochs": metrics.get("epochs"),
                "tokens_per_s": metrics.get("train_tokens_per_s"),
                "wall_time_s": metrics.get("wall_time_s"),
                # no metrics.json yet: still in its first epoch, or killed there
                "status": metrics.get("status", "running"),
                "error": metrics.get("error", ""),
                "history": metrics.get("history", []),
            }
        )
    return sorted(rows, key=lambda r: (r["best_val_ppl"] is None, r["best_val_ppl"] or 0.0))


def _coverage(metrics: dict[str, Any]) -> str:
    """'full', or which split was scored in part ('partial: val 3.2%'); '-' if unknown."""
    parts = []
    for split in ("val", "test"):
        scored, total = metrics.get(f"{split}_tokens_scored"), metrics.get(f"{split}_tokens_total")
        if scored is not None and total:
            parts.append((split, scored, total))
    if not parts:
        return "-"  # written before lmx recorded it, or nothing scored yet
    partial = [f"{split} {100 * a / b:.1f}%" for split, a, b in parts if a != b]
    return "partial: " + ", ".join(partial) if partial else "full"


def varying_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for r in rows for k in r["overrides"]})
    return [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:,.{digits}f}"
    return str(value)


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    keys = varying_keys(rows)
    header = ["run", *keys, *FIXED]
    body = [
        [
            r["run"],
            *(r["overrides"].get(k, "-") for k in keys),
            _fmt(r["best_val_ppl"]),
            _fmt(r["test_ppl"]),
            r["eval"],
            _fmt(r["epochs"]),
            _fmt(r["tokens_per_s"], 0),
            _wall(r["wall_time_s"]),
            r["status"],
        ]
        for r in rows
    ]
    return header, body


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


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = varying_keys(rows)
    fields = [
        "run",
        *keys,
        "best_val_ppl",
        "test_ppl",
        "eval",
        "epochs",
        "tokens_per_s",
        "wall_time_s",
        "status",
        "error",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")  # no history
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **r["overrides"]})


def plot(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Validation perplexity per epoch, one line per run; False when nothing to plot."""
    curves = [r for r in rows if r["history"]]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(10, 5))
    keys = varying_keys(rows)
    for r in curves:
        # a short label where few settings vary; the run's folder name otherwise
        short = ", ".join(f"{k}={r['overrides'].get(k, '-')}" for k in keys)
        label = f"{r['run']}: {short}" if short and len(keys) <= 2 else r["run"]
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h["val_ppl"] for h in r["history"]], marker="o", label=label)
    ax.set(
        xlabel="epoch",
        ylabel="validation perplexity",
        yscale="log",
        title="validation perplexity per epoch",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report(root: Path) -> str:
    """Write report.csv, report.md (and report.png) into root; return the printed table."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder")
    rows = collect(root)
    if not rows:
        raise ConfigError(f"no runs under {root} (a run dir holds metrics.json or .hydra/)")
    header, body = table(rows)
    text = to_text(header, body)
    (root / "report.md").write_text(to_markdown(header, body))
    write_csv(root / "report.csv", rows)
    outputs = ["report.csv", "report.md"] + (
        ["report.png"] if plot(root / "report.png", rows) else []
    )
    stopped = {
        status: [f"{r['run']}: {r['error']}" for r in rows if r["status"] == status]
        for status in ("failed", "interrupted")
    }
    notes = [line for status, runs in stopped.items() if runs for line in ["", f"{status}:", *runs]]
    return "\n".join(
        [
            text,
            *notes,
            "",
            f"wrote {', '.join(outputs)} in {root}",
        ]
    )
