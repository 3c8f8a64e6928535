"""Do two runs follow the same arithmetic? Compares their per-step training losses (TensorBoard
`train/loss`, so log with trainer.log_interval=1), their validation and test losses
(metrics.json, matched by the step each was taken at) and their final weights
(checkpoints/last.pt), and prints the largest relative differences. Steps or validations that
only one run logged (a run stopped by a budget and resumed validates where it stopped) are
named and set aside.

    python benchmarks/compare_runs.py RUN_A RUN_B [--tol 1e-6]

Use it to show that a change to the code left the training arithmetic alone: run the same
command with the old code and the new, then compare the two run dirs. It exits 1 when any
difference is above --tol. Reads checkpoints of any lmx version (plain torch.load).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def train_losses(run_dir: Path) -> dict[int, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()

    la, lb = train_losses(args.a), train_losses(args.b)
    common = sorted(set(la) & set(lb))
    if not common:
        sys.exit(f"the runs logged no training loss at the same step ({len(la)} and {len(lb)})")
    rows = [("train loss, every step both logged", max(rel(la[s], lb[s]) for s in common),
             f"{len(common)} steps")]  # fmt: skip

    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (args.a, args.b))
    # validations matched by the step they were taken at: a run stopped by a budget and resumed
    # with a larger one has an entry for the partial epoch it stopped in that the other lacks
    hb_at = {h["step"]: h for h in mb["history"]}
    only = {args.a: [], args.b: []}
    for ha in ma["history"]:
        hb = hb_at.pop(ha["step"], None)
        if hb is None:
            only[args.a].append(ha["step"])
            continue
        at = f"epoch {ha['epoch']}{' (partial)' if ha.get('partial_epoch') else ''}"
        rows.append((f"{at} mean train loss", rel(ha["train_loss"], hb["train_loss"]), ""))
        rows.append(
            (f"{at} valid loss, step {ha['step']}", rel(ha["val_loss"], hb["val_loss"]), "")
        )
    only[args.b] = sorted(hb_at)
    if ma.get("test_loss") is not None:
        rows.append(("test loss", rel(ma["test_loss"], mb["test_loss"]), ""))

    wa, wb = (
        torch.load(d / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
        for d in (args.a, args.b)
    )
    worst = max(
        ((x - wb[k]).abs().max() / x.abs().max().clamp(min=1e-30)).item() for k, x in wa.items()
    )
    rows.append(("final weights (max |diff| / max |w|, worst tensor)", worst, f"{len(wa)} tensors"))

    for name, value, note in rows:
        print(f"{name:55s} {value:10.3e}  {note}")
    for run, steps in only.items():
        if steps:
            print(f"validated by {run} alone (not compared): step(s) {', '.join(map(str, steps))}")
    for run, logged in ((args.a, la), (args.b, lb)):
        alone = sorted(set(logged) - set(common))
        if alone:  # e.g. the log at the step where a run stopped and was resumed
            print(
                f"train loss logged by {run} alone (not compared): {len(alone)} step(s), "
                f"{', '.join(map(str, alone[:5]))}{' ...' if alone[5:] else ''}"
            )
    bad = [name for name, value, _ in rows if value > args.tol]
    print(f"largest relative difference {max(v for _, v, _ in rows):.3e} (tolerance {args.tol:g})")
    if bad:
        print("above the tolerance: " + ", ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
