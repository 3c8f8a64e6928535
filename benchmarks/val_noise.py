"""How much does validation perplexity move from one training step to the next?

    python benchmarks/val_noise.py RUN_DIR [RUN_DIR ...] [--steps 8] [--batches 120]
                                   [--data ../shared/data/wikitext-2]

For each run (a finished `lmx.train` run dir), loads its best checkpoint and continues
training with the run's own model, batches, optimizer (at its configured lr) and precision
for `--steps` steps, from the batch after the last one it trained on (the best checkpoint
must be the last one, as in a run whose last epoch was its best). Before each step it scores the
current model on the first `--batches` validation batches. The spread of those numbers is the
noise in any "validation ppl after N steps" figure taken from a single step: at the tutorial's
SGD lr 5.0, each step moves the model far. The mean over the iterates (and over several runs)
is the steadier figure to compare two settings by. Only for stateless optimizers (plain SGD, as in
the tutorial): a stateful one would need its saved state, which best.pt does not reload here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from lmx.batching import batch_starts, batchify, get_batch
from lmx.corpus import load_corpus
from lmx.device import autocast, resolve_device
from lmx.optim import build_optimizer
from lmx.pretrained import load_trained
from lmx.trainer import clip_grad_norm, evaluate


def iterate_ppls(run_dir: Path, steps: int, batches: int, data: str) -> list[float]:
    trained = load_trained(run_dir, [f"data.local_dir={data}"])
    cfg, model = trained.cfg, trained.model
    if not cfg.optim._target_.endswith(".SGD") or cfg.optim.get("momentum", 0):
        raise SystemExit(f"{run_dir}: only plain SGD runs (no optimizer state) are supported")
    device = resolve_device(cfg.device)
    model.to(device)
    splits = load_corpus(cfg.data).splits
    train = batchify(splits["train"], cfg.data.batch_size).to(device)
    valid = batchify(splits["valid"], cfg.data.eval_batch_size).to(device)
    optimizer = build_optimizer(cfg.optim, model.parameters())  # at its configured lr
    done = json.loads((run_dir / "metrics.json").read_text())["steps"]
    torch.manual_seed(cfg.trainer.seed + done)  # dropout masks for the extra steps
    ppls = []
    starts = batch_starts(train, cfg.data.bptt)
    first = done % len(starts)  # after whole epochs: the next epoch's first batches
    for i in starts[first : first + steps]:
        loss = evaluate(model, valid, cfg.data.bptt, device, cfg.device.precision, batches)
        ppls.append(math.exp(loss))
        model.train()
        data, targets = get_batch(train, i, cfg.data.bptt)
        with autocast(device, cfg.device.precision):
            step_loss = model(data, targets)
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        clip_grad_norm(model.parameters(), cfg.trainer.grad_clip or math.inf)
        optimizer.step()
    return ppls


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
