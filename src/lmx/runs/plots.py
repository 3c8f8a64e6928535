"""The figures of `lmx report`: perplexity against optimizer steps, one line per run, and
with --group-by a bar per group with its standard error. Series are labelled by the settings
that vary, nothing else."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmx.runs.collect import varying_keys
from lmx.runs.groups import Group
from lmx.runs.naming import short_names

MAX_PANELS = 4  # fingerprint groups drawn side by side; more are named in the title


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def label(run: dict[str, Any], keys: list[str]) -> str:
    """'nhead=2, nlayers=1': the varying settings, by short names."""
    pairs = zip(short_names(keys), keys, strict=True)
    return ", ".join(f"{n}={run['settings'].get(k, '-')}" for n, k in pairs) or run["run"]


def train_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train ppl) from the run's TensorBoard events; [] when there are none."""
    events = sorted((run_dir / "tensorboard").glob("**/events.out.tfevents.*"))
    if not events:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for folder in sorted({e.parent for e in events}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/ppl" in acc.Tags().get("scalars", []):
            points.update({e.step: e.value for e in acc.Scalars("train/ppl")})
    return sorted(points.items())


def curves(rows: list[dict[str, Any]]) -> tuple[str, list[tuple[str, list[int], list[float]]]]:
    """What to draw for one fingerprint's runs: validation ppl against steps, or train ppl
    where no run validated more than once (a one-epoch sweep: one dot each otherwise)."""
    keys = varying_keys(rows)
    val = [(r, [h for h in r["history"] if h.get("step") is not None]) for r in rows]
    if any(len(h) > 1 for _, h in val):
        return "validation perplexity", [
            (label(r, keys), [h["step"] for h in hs], [h["val_ppl"] for h in hs])
            for r, hs in val if hs
        ]  # fmt: skip
    series = []
    for r in rows:
        points = train_curve(r["dir"])
        if points:
            series.append((label(r, keys), [s for s, _ in points], [v for _, v in points]))
    return "train perplexity (one validation per run)", series


def plot_curves(path: Path, by_fingerprint: list[tuple[str, list[dict[str, Any]]]]) -> bool:
    """One panel per fingerprint (up to MAX_PANELS); False when there is nothing to draw."""
    panels = [(fp, *curves(rows)) for fp, rows in by_fingerprint[:MAX_PANELS]]
    panels = [p for p in panels if p[2]]
    if not panels:
        return False
    plt = _pyplot()
    from matplotlib.ticker import LogFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (fp, what, series) in zip(axes[0], panels, strict=True):
        for name, steps, values in series:
            ax.plot(steps, values, marker="o" if len(steps) < 12 else None, ms=3, label=name)
        ax.set(xlabel="optimizer step", ylabel=what, yscale="log")
        plain = LogFormatter(labelOnlyBase=False)  # 400, not 4 x 10^2
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_title(_wrap(fp), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    if len(by_fingerprint) > MAX_PANELS:
        fig.suptitle(f"the first {MAX_PANELS} of {len(by_fingerprint)} data fingerprints")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_groups(path: Path, groups: list[Group], keys: list[str], fingerprint: str) -> None:
    """Mean best validation ppl per group with ± 1 standard error bars (none for n=1)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) + 2), 4.5))
    means = [math.exp(g.val[0]) for g in groups]
    se = [g.val[1] or 0.0 for g in groups]  # log scale: the bar is asymmetric in ppl
    low = [m - math.exp(g.val[0] - s) for m, g, s in zip(means, groups, se, strict=True)]
    high = [math.exp(g.val[0] + s) - m for m, g, s in zip(means, groups, se, strict=True)]
    short = short_names(keys)
    names = ["\n".join([*(f"{n}={v}" for n, v in zip(short, g.values, strict=True)), f"n={g.n}"])
             for g in groups]  # fmt: skip
    ax.bar(names, means, color="#4c72b0")
    erred = [i for i, s in enumerate(se) if s > 0]  # a group of one run has no error bar
    if erred:
        ax.errorbar([names[i] for i in erred], [means[i] for i in erred], fmt="none",
                    yerr=[[low[i] for i in erred], [high[i] for i in erred]], capsize=6,
                    ecolor="black")  # fmt: skip
    ax.set(ylabel="best validation ppl (mean ± 1 SE)")
    ax.set_title(_wrap(fingerprint, int(14 * fig.get_figwidth())), fontsize=8)  # fits at 8 pt
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int = 90) -> str:
    parts, line = [], ""
    for piece in text.split(" | "):
        if line and len(line) + len(piece) + 3 > width:
            parts.append(line)
            line = piece
        else:
            line = f"{line} | {piece}" if line else piece
    return "\n".join([*parts, line])
