"""What the weight average (trainer.ema) gains over the raw weights, from runs that kept one.

    python benchmarks/ema_gain.py RUN_DIR [RUN_DIR ...]

A run with trainer.ema.decay validates both the average and its own (raw) weights, and the
raw weights train exactly as they would without the average (it draws no random numbers and
changes no weight), so each run is its own "without EMA" control. For each run (one per
seed) this prints the validation ppl of both after each whole epoch, then, over the runs,
the average's ppl against the raw weights' at the last epoch and at each one's best, with
the standard error from the spread of the runs (lmx.stats.compare_settings), and the mean
of the per-seed differences with its paired standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from lmx.stats import compare_settings


def epoch_ends(run_dir: Path) -> list[dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ends = [h for h in metrics["history"] if not h.get("partial_epoch")]
    if not ends or "val_loss_raw" not in ends[0]:
        raise SystemExit(f"{run_dir}: no validation of the raw weights (run without trainer.ema)")
    return ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    runs = {d: epoch_ends(d) for d in parser.parse_args().runs}
    print("valid ppl after each epoch: average (EMA) / raw weights")
    for run_dir, ends in runs.items():
        cells = "  ".join(f"{math.exp(h['val_loss']):.2f} / {math.exp(h['val_loss_raw']):.2f}"
                          for h in ends)  # fmt: skip
        print(f"  {run_dir}: {cells}")
    if len(runs) < 2:
        return
    for label, pick in (("last epoch", lambda e, k: e[-1][k]),
                        ("best epoch", lambda e, k: min(h[k] for h in e))):  # fmt: skip
        raw = [[pick(e, "val_loss_raw")] for e in runs.values()]
        ema = [[pick(e, "val_loss")] for e in runs.values()]
        c = compare_settings(raw, ema)
        diffs = [100 * math.expm1(b[0] - a[0]) for a, b in zip(raw, ema, strict=True)]
        paired_se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        print(f"{label}: raw {c['ppl_a']:.2f}, EMA {c['ppl_b']:.2f}: EMA vs raw "
              f"{c['b_vs_a_pct']:+.2f}% ± {c['se_pct']:.2f}% (SE over {len(diffs)} runs); "
              f"per-seed {', '.join(f'{d:+.2f}%' for d in diffs)}, mean "
              f"{statistics.fmean(diffs):+.2f}% ± {paired_se:.2f}% (paired SE)")  # fmt: skip


if __name__ == "__main__":
    main()
