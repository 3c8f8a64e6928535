"""`lmx report --group-by KEY[,KEY]`: the runs of one fingerprint pooled by the values of
KEYs (over seeds and every other key), each group's mean perplexity with its standard error,
and its difference from a baseline group with the standard error of that difference.

Means are taken of the losses (log ppl), as lmx.stats does: the ppl shown is exp(mean loss),
and every standard error is on that log scale, in % (100 x SE of the mean loss: for small
values, the % of ppl). A difference larger than 2 standard errors (on the log scale) is
marked. With a few runs a group, a standard error is itself rough (2 runs: 1 degree of
freedom), so a mark is a pointer, not a test.

Only finished runs with finite losses are pooled; the others (running, failed, diverged) are
counted beside n, never averaged in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmx.config.rules import did_you_mean
from lmx.errors import ConfigError
from lmx.stats import difference_pct, mean_and_se, shown

MARK_BEYOND_SE = 2.0


class NoSuchGroup(ConfigError):
    """--baseline names values that no group of these runs has."""


@dataclass
class Group:
    values: tuple[str, ...]  # one per group-by key
    runs: list[dict[str, Any]]
    val: tuple[float, float | None]  # mean best validation loss, its standard error
    test: tuple[float, float | None] | None  # None unless every run has a test loss
    val_diff: tuple[float, float | None] | None = None  # vs the baseline, in %
    test_diff: tuple[float, float | None] | None = None
    baseline: bool = False
    left_out: int = 0  # runs of these values not pooled: not done, or a non-finite loss

    @property
    def n(self) -> int:
        return len(self.runs)

    def label(self, keys: list[str]) -> str:
        return ",".join(f"{k}={v}" for k, v in zip(keys, self.values, strict=True))


def parse_keys(text: str, rows: list[dict[str, Any]]) -> list[str]:
    """KEY[,KEY] of --group-by, each a setting the runs have."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    known = sorted({k for r in rows for k in r["settings"]})
    for key in keys:
        if key not in known:
            raise ConfigError(f"--group-by: no run has a setting {key!r}"
                              f"{did_you_mean(key, known)}")  # fmt: skip
    if not keys:
        raise ConfigError("--group-by needs KEY[,KEY], e.g. --group-by model.nhead")
    return keys


def group_runs(rows: list[dict[str, Any]], keys: list[str], baseline: str | None) -> list[Group]:
    """Scored runs pooled by their values of `keys`, sorted by those values; differences are
    from the `baseline` group (KEY=VALUE[,KEY=VALUE]; None: the first group)."""
    pooled: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    left_out: dict[tuple[str, ...], int] = {}
    for r in rows:
        values = tuple(r["settings"].get(k, "-") for k in keys)
        if r["status"] == "done" and _finite(r["best_val_loss"]):
            pooled.setdefault(values, []).append(r)
        else:
            left_out[values] = left_out.get(values, 0) + 1
    groups = []
    for values in sorted(pooled, key=lambda vs: [_natural(v) for v in vs]):
        runs = pooled[values]
        tests = [r["test_loss"] for r in runs]
        test = mean_and_se(tests) if all(_finite(t) for t in tests) else None
        val = mean_and_se([r["best_val_loss"] for r in runs])
        groups.append(Group(values, runs, val, test, left_out=left_out.get(values, 0)))
    if not groups:
        return groups
    base = _find_baseline(groups, keys, baseline)
    base.baseline = True
    for g in groups:
        g.val_diff = difference_pct(base.val, g.val)
        if g.test is not None and base.test is not None:
            g.test_diff = difference_pct(base.test, g.test)
    return groups


SEED_KEY = "trainer.seed"


WIDE_SE = 0.1  # a log-scale SE from which "± x%" misreads as a % of ppl by 5% and more


def group_notes(groups: list[Group], keys: list[str]) -> list[str]:
    """What a reader must know before trusting a group's figures: other settings that differ
    inside it (a seed is expected to), runs that are one sample twice (the same settings and
    seed: a copy, or a resumed run beside the original), and a group of one (no error bar)."""
    from lmx.runs.collect import is_admin, sample_key

    notes = []
    for g in groups:
        label = g.label(keys)
        settings = [r["settings"] for r in g.runs]
        mixed = sorted(k for k in {k for s in settings for k in s}
                       if k not in keys and k != SEED_KEY and not is_admin(k)
                       and len({s.get(k) for s in settings}) > 1)  # fmt: skip
        if mixed:
            shown_keys = ", ".join(mixed[:4]) + (f" and {len(mixed) - 4} more" if mixed[4:] else "")
            notes.append(f"{label} pools runs whose {shown_keys} also differ")
        seen: dict[str, str] = {}
        for r, s in zip(g.runs, settings, strict=True):
            same = sample_key(s)
            if same in seen:
                notes.append(f"{label}: {r['run']} has the settings and seed of {seen[same]}: "
                             "one sample counted twice")  # fmt: skip
            seen.setdefault(same, r["run"])
        if g.n == 1:
            notes.append(f"{label} has one run: no standard error")
    spreads = [stat for g in groups for stat in (g.val, g.test) if stat and stat[1] is not None]
    if spreads and max(se for _, se in spreads) >= WIDE_SE:
        mean, se = max(spreads, key=lambda stat: stat[1])
        ppl, factor = math.exp(mean), math.exp(se)
        notes.append(f"± is 100 × the standard error of log ppl, which reads as a % of ppl only "
                     f"while small: {shown(ppl, ',.2f')} ± {_pct(100 * se)}% spans "
                     f"{shown(ppl / factor, ',.2f')} to {shown(ppl * factor, ',.2f')} "
                     f"(×/÷ {factor:.2f})")  # fmt: skip
    return notes


def _find_baseline(groups: list[Group], keys: list[str], baseline: str | None) -> Group:
    if baseline is None:
        return groups[0]
    wanted = dict(p.partition("=")[::2] for p in baseline.split(","))
    unknown = [k for k in wanted if k not in keys]
    if unknown:
        raise ConfigError(f"--baseline: {unknown[0]!r} is not a --group-by key "
                          f"({', '.join(keys)})")  # fmt: skip
    for g in groups:
        if all(dict(zip(keys, g.values, strict=True))[k] == v for k, v in wanted.items()):
            return g
    raise NoSuchGroup(f"--baseline {baseline}: no such group; the groups: "
                      + "; ".join(g.label(keys) for g in groups))  # fmt: skip


def _finite(loss: float | None) -> bool:
    return loss is not None and math.isfinite(loss)


def _natural(value: str) -> tuple:
    """Numbers in numeric order, before text: 2 < 10 < abc."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def ppl_text(stat: tuple[float, float | None] | None) -> str:
    """exp(mean) ± SE in %: '245.31 ± 1.2%'."""
    if stat is None:
        return "-"
    mean, se = stat
    spread = f" ± {_pct(100 * se)}%" if se is not None else ""
    return f"{shown(math.exp(mean), ',.2f')}{spread}"


def diff_text(diff: tuple[float, float | None] | None) -> str:
    """'+3.12% ± 1.1% *' (* beyond 2 standard errors), '+3.12%' without one, '-' for none."""
    if diff is None:
        return "-"
    pct, se = diff
    if se is None:
        return f"{pct:+.2f}%"
    mark = " *" if abs(100 * math.log1p(pct / 100)) > MARK_BEYOND_SE * se else ""
    return f"{pct:+.2f}% ± {_pct(se)}%{mark}"


def _pct(value: float) -> str:
    """Two significant digits, without an exponent: 0.012, 2.5, 41, 330."""
    return f"{value:.0f}" if value >= 100 else f"{value:.2g}"


# report_groups.csv's numbers beside the table's text: the finished runs, and each mean loss
# (log ppl) with its standard error (empty for a group of one)
NUMBER_COLUMNS = ["n_finished", "val_loss_mean", "val_loss_se", "test_loss_mean", "test_loss_se"]


def group_numbers(g: Group) -> list[Any]:
    return [g.n, *(x for stat in (g.val, g.test) for x in (stat or (None, None)))]


def group_table(groups: list[Group], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    header = [*keys, "n", "val_ppl", "test_ppl", "val_vs_base", "test_vs_base"]
    body = [
        [*g.values, f"{g.n}" + (f" (+{g.left_out} left out)" if g.left_out else ""),
         ppl_text(g.val), ppl_text(g.test),
         *(("baseline", "baseline") if g.baseline else
           (diff_text(g.val_diff), diff_text(g.test_diff)))]
        for g in groups
    ]  # fmt: skip
    return header, body
