"""Comparing two settings over several runs each: a difference and its standard error.

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
    run_means = [[statistics.fmean(run) for run in runs] for runs in (a, b)]
    mean_a, mean_b = (statistics.fmean(m) for m in run_means)
    var_a, var_b = (statistics.variance(m) / len(m) for m in run_means)  # of each mean
    return {
        "ppl_a": math.exp(mean_a),
        "ppl_b": math.exp(mean_b),
        "b_vs_a_pct": 100 * math.expm1(mean_b - mean_a),
        "se_pct": 100 * math.sqrt(var_a + var_b),
        "runs": [len(a), len(b)],
    }
