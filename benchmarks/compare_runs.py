"""Do two runs follow the same arithmetic? Compares their per-step training losses (TensorBoard
`train/loss`, so log with trainer.log_interval=1), their validation and test losses
(metrics.json) and their final weights (checkpoints/last.pt), and prints the largest
relative differences.

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
    if sorted(la) != sorted(lb):
        sys.exit(f"the runs logged different steps: {len(la)} and {len(lb)}")
    rows = [("train loss, every step", max(rel(la[s], lb[s]) for s in la), f"{len(la)} steps")]

    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (args.a, args.b))
    for i, (ha, hb) in enumerate(zip(ma["history"], mb["history"], strict=True)):
        rows.append((f"epoch {i + 1} mean train loss", rel(ha["train_loss"], hb["train_loss"]), ""))
        rows.append((f"epoch {i + 1} valid loss", rel(ha["val_loss"], hb["val_loss"]), ""))
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
    bad = [name for name, value, _ in rows if value > args.tol]
    print(f"largest relative difference {max(v for _, v, _ in rows):.3e} (tolerance {args.tol:g})")
    if bad:
        print("above the tolerance: " + ", ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
