"""How much does validation perplexity move from one training step to the next?

    python benchmarks/val_noise.py RUN_DIR [RUN_DIR ...] [--steps 8] [--batches 120]
                                   [--data ../shared/data/wikitext-2]

For each run (a finished `lmx.train` run dir), loads its best checkpoint and scores `--steps`
consecutive models on the first `--batches` validation batches: the checkpoint's, then the
model after each further step, trained with the run's own model, batches (from the one after
the last it trained on), optimizer (at its configured lr), gradient clip and precision
(lmx.iterates). The best checkpoint must be the last one, as in a run whose last epoch was
its best. The spread of those numbers is the noise in any "validation ppl after N steps"
figure taken from a single step: at the tutorial's SGD lr 5.0, each step moves the model far.
The mean over the iterates (and over several runs) is the steadier figure to compare two
settings by. Plain SGD only, as in the tutorial: a stateful optimizer would need its state.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lmx.device import resolve_device
from lmx.iterates import iterate_losses, streams
from lmx.pretrained import load_trained


def iterate_ppls(run_dir: Path, steps: int, batches: int, data: str) -> list[float]:
    trained = load_trained(run_dir, [f"data.local_dir={data}"])
    cfg = trained.cfg
    device = resolve_device(cfg.device)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics["best_epoch"] != metrics["epochs"]:
        last, best = metrics["epochs"], metrics["best_epoch"]
        raise SystemExit(f"{run_dir}: best.pt is from epoch {best}, not the last ({last})")
    done = metrics["steps"]
    try:
        losses = iterate_losses(trained.model.to(device), cfg, *streams(cfg, device), device,
                                done, steps, batches)  # fmt: skip
    except ValueError as err:
        raise SystemExit(f"{run_dir}: {err}") from None
    return [math.exp(x) for x in losses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    args = parser.parse_args()
    losses = []
    for run in args.runs:
        ppls = iterate_ppls(run, args.steps, args.batches, args.data)
        losses += [math.log(p) for p in ppls]
        spread = 100 * (max(ppls) / min(ppls) - 1)
        mean = math.exp(sum(math.log(p) for p in ppls) / len(ppls))
        print(f"{run}: {' '.join(f'{p:.1f}' for p in ppls)} | max/min {spread:+.1f}% | "
              f"exp(mean loss) {mean:.2f}")  # fmt: skip
    print(f"all {len(losses)} iterates: exp(mean loss) {math.exp(sum(losses) / len(losses)):.2f}")


if __name__ == "__main__":
    main()
