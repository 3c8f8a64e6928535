"""`lmx report --group-by KEY[,KEY]`: the runs of one fingerprint pooled by the values of
KEYs (over seeds and every other key), each group's mean perplexity with its standard error,
and its difference from a baseline group with the standard error of that difference.

Means are taken of the losses (log ppl), as lmx.stats does: the ppl shown is exp(mean loss)
and errors are in %. A difference beyond 2 standard errors is marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmx.config.rules import did_you_mean
from lmx.errors import ConfigError
from lmx.stats import difference_pct, mean_and_se

MARK_BEYOND_SE = 2.0


@dataclass
class Group:
    values: tuple[str, ...]  # one per group-by key
    runs: list[dict[str, Any]]
    val: tuple[float, float | None]  # mean best validation loss, its standard error
    test: tuple[float, float | None] | None  # None unless every run has a test loss
    val_diff: tuple[float, float | None] | None = None  # vs the baseline, in %
    test_diff: tuple[float, float | None] | None = None
    baseline: bool = False

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
    for r in rows:
        if r["best_val_loss"] is not None:
            pooled.setdefault(tuple(r["settings"].get(k, "-") for k in keys), []).append(r)
    groups = []
    for values in sorted(pooled, key=lambda vs: [_natural(v) for v in vs]):
        runs = pooled[values]
        tests = [r["test_loss"] for r in runs]
        groups.append(Group(values, runs, mean_and_se([r["best_val_loss"] for r in runs]),
                            mean_and_se(tests) if None not in tests else None))  # fmt: skip
    if not groups:
        return groups
    base = _find_baseline(groups, keys, baseline)
    base.baseline = True
    for g in groups:
        g.val_diff = difference_pct(base.val, g.val)
        if g.test is not None and base.test is not None:
            g.test_diff = difference_pct(base.test, g.test)
    return groups


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
    raise ConfigError(f"--baseline {baseline}: no such group; the groups: "
                      + "; ".join(g.label(keys) for g in groups))  # fmt: skip


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
    spread = f" ± {_pct(100 * math.expm1(se))}%" if se is not None else ""
    return f"{math.exp(mean):,.2f}{spread}"


def diff_text(diff: tuple[float, float | None] | None) -> str:
    """'+3.12% ± 1.1% *' (* beyond 2 standard errors), '+3.12%' without one, '-' for none."""
    if diff is None:
        return "-"
    pct, se = diff
    if se is None:
        return f"{pct:+.2f}%"
    mark = " *" if abs(pct) > MARK_BEYOND_SE * se else ""
    return f"{pct:+.2f}% ± {_pct(se)}%{mark}"


def _pct(value: float) -> str:
    """Two significant digits, without an exponent: 0.012, 2.5, 41, 330."""
    return f"{value:.0f}" if value >= 100 else f"{value:.2g}"


def group_table(groups: list[Group], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    header = [*keys, "n", "val_ppl", "test_ppl", "val_vs_base", "test_vs_base"]
    body = [
        [*g.values, str(g.n), ppl_text(g.val), ppl_text(g.test),
         *(("baseline", "baseline") if g.baseline else
           (diff_text(g.val_diff), diff_text(g.test_diff)))]
        for g in groups
    ]  # fmt: skip
    return header, body
