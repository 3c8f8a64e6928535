"""Comparing two settings over several runs each: a difference and its standard error; and
how a perplexity prints.

Torch-free, so lmx.bench can re-print a saved result without loading torch.
"""

from __future__ import annotations

import math
import statistics


def compare_settings(a: list[list[float]], b: list[list[float]]) -> dict:
    """How far setting b's loss lies from setting a's, with its standard error.

    a, b: per run (seed), one loss or several (e.g. the validation losses of consecutive
    models, lmx.bench.iterates). Each run counts once, by its mean loss; the standard error of a
    setting's mean comes from how far its runs' means spread, which takes in both the
    step-to-step swing left after averaging and the seed-to-seed difference. Needs two runs
    a setting. Returns the ppl of each (exp of the mean of run means), b vs a in % and its
    standard error in % (in log space, so for small differences it reads as the % of ppl).
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError("comparing two settings needs at least two runs of each")
    (mean_a, se_a), (mean_b, se_b) = (mean_and_se([statistics.fmean(r) for r in runs])
                                      for runs in (a, b))  # fmt: skip
    pct, se_pct = difference_pct((mean_a, se_a), (mean_b, se_b))
    return {
        "ppl_a": math.exp(mean_a),
        "ppl_b": math.exp(mean_b),
        "b_vs_a_pct": pct,
        "se_pct": se_pct,
        "runs": [len(a), len(b)],
    }


def mean_and_se(losses: list[float]) -> tuple[float, float | None]:
    """The mean of per-run losses (log ppl) and its standard error; None from one run."""
    mean = statistics.fmean(losses)
    se = math.sqrt(statistics.variance(losses) / len(losses)) if len(losses) > 1 else None
    return mean, se


def difference_pct(
    a: tuple[float, float | None], b: tuple[float, float | None]
) -> tuple[float, float | None]:
    """How far b's ppl lies from a's in %, and its standard error in % (None unless both
    have one). Each is (mean loss, its standard error); the difference is taken in log space,
    so for small differences the error reads as a % of ppl."""
    pct = 100 * math.expm1(b[0] - a[0])
    se = 100 * math.hypot(a[1], b[1]) if a[1] is not None and b[1] is not None else None
    return pct, se


# Up to here a perplexity prints in full, with two decimals as the tutorial's lines do; a
# diverged run's (e^250) would print hundreds of digits, so beyond it takes e-notation.
FULL_DIGITS_BELOW = 1e9


def shown(value: float, spec: str = "8.2f") -> str:
    """A perplexity as log lines and tables print it (format `spec`, e.g. '  245.31'), or in
    e-notation beyond FULL_DIGITS_BELOW ('1.23e+110')."""
    if abs(value) < FULL_DIGITS_BELOW or not math.isfinite(value):
        return format(value, spec)
    return format(value, ".3g")
