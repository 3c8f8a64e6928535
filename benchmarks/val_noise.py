"""How much does validation perplexity move from one training step to the next, and do two
settings differ by more than that?

    python benchmarks/val_noise.py RUN_DIR [RUN_DIR ...] [--vs RUN_DIR ...] [--steps 8]
                                   [--batches 120] [--data ../shared/data/wikitext-2] [--fresh]

For each run (a finished `lmx.train` run dir), loads its last checkpoint (the model after
all its steps, whichever epoch was best) and scores `--steps` consecutive models on the
first `--batches` validation batches: the checkpoint's, then the model after each further
step, trained with the run's own model, batches (from the one after the last it trained
on), optimizer (at the lr it had when the checkpoint was saved, after any scheduler decay),
gradient clip and precision (lmx.bench.iterates). The spread of those numbers is the noise in any
"validation ppl after N steps" figure taken from a single step: at the tutorial's SGD lr
5.0, each step moves the model far. The mean over the iterates (and over several runs) is the
steadier figure to compare two settings by. Plain SGD only, as in the tutorial: a stateful
optimizer would need its state.

Each run's losses are written to RUN_DIR/val_iterates.json and read back by a later call with
the same --steps and --batches (--fresh recomputes), so adding seeds to a comparison costs
only the new runs. With --vs, the runs after it are the second setting: the script prints a
table of how far it lies from the first by the iterates' validation ppl and by each loss the
runs' metrics.json records (train ppl of each epoch, valid ppl after each epoch, test ppl),
each with the standard error from the spread of the runs' figures
(lmx.stats.compare_settings).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lmx.bench.iterates import iterate_losses, train_valid_rows
from lmx.errors import LmxError
from lmx.models.pretrained import load_trained
from lmx.runtime.device import resolve_device
from lmx.stats import compare_settings

RECORD = "val_iterates.json"


def iterate_val_losses(run_dir: Path, done: int, steps: int, batches: int, data: str, fresh: bool):
    """(validation losses of `steps` consecutive models of the run, whether they were recorded)."""
    record = run_dir / RECORD
    if record.exists() and not fresh:
        saved = json.loads(record.read_text())
        if (saved["steps"], saved["batches"]) == (steps, batches):
            return saved["val_losses"], True
    try:
        # last.pt: the model after equal steps in every run; best.pt may be an earlier epoch's
        trained = load_trained(run_dir / "checkpoints" / "last.pt", [f"data.local_dir={data}"])
        if trained.checkpoint.step != done:
            raise SystemExit(f"{run_dir}: last.pt is from step {trained.checkpoint.step}, "
                             f"not the run's last ({done})")  # fmt: skip
        cfg = trained.cfg
        device = resolve_device(cfg.device)
        lr = trained.checkpoint.optimizer["param_groups"][0]["lr"]  # the run's next lr
        rows = train_valid_rows(cfg, device)
        losses = iterate_losses(trained.model.to(device), cfg, *rows, device, done, steps,
                                batches, lr)  # fmt: skip
    except (LmxError, ValueError) as err:  # no data, a stateful optimizer: say so, no traceback
        raise SystemExit(f"{run_dir}: {err}") from None
    record.write_text(json.dumps({"steps": steps, "batches": batches, "after_step": done,
                                  "lr": lr, "val_losses": losses}, indent=1))  # fmt: skip
    return losses, False


def recorded_losses(metrics: dict) -> dict[str, float]:
    """The losses a run's metrics.json holds, each named by what it measures."""
    history = metrics.get("history", [])
    losses = {f"train ppl, mean over epoch {h['epoch']}": h["train_loss"] for h in history}
    for h in history:
        losses[f"valid ppl after epoch {h['epoch']} (one model)"] = h["val_loss"]
    if metrics.get("test_loss") is not None:
        losses["test ppl (the best model)"] = metrics["test_loss"]
    return losses


def report_setting(runs: list[Path], args: argparse.Namespace):
    """Prints each run's iterate ppls and the setting's mean. Returns the runs' iterate
    losses and, per run, the losses its metrics.json records (recorded_losses)."""
    every, recorded_per_run = [], []
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        recorded_per_run.append(recorded_losses(metrics))
        losses, recorded = iterate_val_losses(run, metrics["steps"], args.steps, args.batches,
                                              args.data, args.fresh)  # fmt: skip
        ppls = [math.exp(x) for x in losses]
        spread = 100 * (max(ppls) / min(ppls) - 1)
        mean = math.exp(sum(losses) / len(losses))
        shown = " ".join(f"{p:.1f}" for p in ppls[:8]) + (" ..." if len(ppls) > 8 else "")
        print(f"{run}: {shown} | max/min {spread:+.1f}% | exp(mean loss) {mean:.2f}"
              f"{' (recorded)' if recorded else ''}", flush=True)  # fmt: skip
        every.append(losses)
    flat = [x for losses in every for x in losses]
    print(f"all {len(flat)} iterates: exp(mean loss) {math.exp(sum(flat) / len(flat)):.2f}")
    return every, recorded_per_run


def check_comparable(runs: list[Path]) -> None:
    """Exit with a message where the runs' figures cannot be pooled: scored on other data,
    tokens or windows (lmx report's fingerprint), or one training run given twice (the same
    folder, or the same settings and seed: its figures would pass for independent samples)."""
    from lmx.runs.collect import fingerprint, sample_key, settings
    from lmx.runs.status import read_status

    prints: dict[str, Path] = {}
    by_dir: dict[Path, Path] = {}
    by_settings: dict[str, Path] = {}
    for run in runs:
        s = settings(run)
        prints.setdefault(fingerprint({"settings": s, "metrics": read_status(run)}), run)
        same = sample_key(s)
        twin = by_dir.get(run.resolve()) or by_settings.get(same)
        if twin is not None:
            raise SystemExit(f"{twin} and {run} are one training run (the same folder, or the "
                             "same settings and seed): it would count as two samples")  # fmt: skip
        by_dir[run.resolve()], by_settings[same] = run, run
    if len(prints) > 1:
        lines = "\n".join(f"  {run}: {fp}" for fp, run in prints.items())
        raise SystemExit(f"these runs were scored on other data, tokens or windows, so their "
                         f"perplexities are other quantities:\n{lines}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--vs", nargs="+", type=Path, default=[],
                        help="run dirs of a second setting, compared with the first")  # fmt: skip
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--fresh", action="store_true", help="recompute recorded runs")
    args = parser.parse_args()
    check_comparable([*args.runs, *args.vs])
    first, first_recorded = report_setting(args.runs, args)
    if not args.vs:
        return
    second, second_recorded = report_setting(args.vs, args)
    iterates = f"valid ppl, {args.steps} consecutive models, first {args.batches} batches"
    rows = {iterates: (first, second)}
    recorded = [first_recorded, second_recorded]
    for key in recorded[0][0]:
        if all(key in run for runs in recorded for run in runs):
            rows[key] = tuple([[run[key]] for run in runs] for runs in recorded)
    try:  # all of them before the table: a refusal prints no half table
        compared = {name: compare_settings(a, b) for name, (a, b) in rows.items()}
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(f"\n| measure | first ({len(first)} runs) | --vs ({len(second)} runs) | difference "
          f"| standard error |\n| --- | ---: | ---: | ---: | ---: |")  # fmt: skip
    for name, c in compared.items():
        print(f"| {name} | {c['ppl_a']:.2f} | {c['ppl_b']:.2f} | {c['b_vs_a_pct']:+.2f}% "
              f"| {c['se_pct']:.2f}% |")  # fmt: skip
    print(
        "ppl: exp of the mean over runs of each run's mean loss. Standard error: from the "
        "spread of the runs' means, in log space (~% of ppl)."
    )


if __name__ == "__main__":
    main()
