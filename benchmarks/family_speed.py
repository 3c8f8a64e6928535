"""Training tokens/s of each model family and head, side by side, at the tutorial's size.

    python benchmarks/family_speed.py --data ../shared/data/wikitext-2 [--steps 150]
        [--rounds 2] [--cutoffs 2000,10000] [--only SETTING,...] [--out PATH] [OVERRIDE ...]

Every setting runs `python -m lmx.train` for `--steps` steps in its own process, with
seed_fast's settings (bf16 autocast, the fused loss for the softmax head, the sparse
embedding gradient) unless overridden, and reads its metrics.json `train_tokens_per_s`
(the first 5 steps of each process left out). The rounds interleave the settings, so a
drift of the machine's speed touches all of them alike; each figure is the median over
rounds, and the ratio is against the tutorial Transformer with the full softmax, measured in
the same rounds. The sizes are the tutorial's: embedding and hidden size 200, 2 layers (GPT:
2 heads, MLP 200, untied as the sparse embedding needs). The heads: the full softmax, the
adaptive softmax, and the adaptive softmax with its tied adaptive input (model.adaptive_input).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FAMILIES = {
    "transformer": ["model=transformer"],
    "lstm": ["model=lstm", "model.emsize=200", "model.nhid=200", "model.nlayers=2"],
    "gpt": ["model=gpt", "model.d_hid=200", "model.tie_weights=false"],
}
HEADS = {
    "softmax": [],
    "adaptive": ["model.head=adaptive"],
    # the embedding tied to the head, dense (a sparse gradient does not apply to it)
    "adaptive + input": ["model.head=adaptive", "model.adaptive_input=true",
                         "model.sparse_embedding=false"],
}  # fmt: skip


def measure(overrides: list[str], data: str, steps: int) -> float:
    with tempfile.TemporaryDirectory(prefix="lmx-family-") as tmp:
        cmd = [sys.executable, "-m", "lmx.train", "experiment=seed_fast", *overrides,
               f"data.local_dir={data}", "trainer.epochs=1",
               f"trainer.limit_train_batches={steps}", "trainer.limit_eval_batches=1",
               "trainer.test=false", "trainer.tensorboard=false", "trainer.progress=false",
               "trainer.checkpoint_every_steps=null", f"hydra.run.dir={tmp}/run"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(overrides)} failed:\n{proc.stderr[-2000:]}")
        return json.loads((Path(tmp) / "run" / "metrics.json").read_text())["train_tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="outputs/family_speed.json")
    parser.add_argument("--cutoffs", default="2000,10000", help="the adaptive head's")
    parser.add_argument("--only", help="a comma-separated subset, e.g. 'lstm + adaptive'")
    parser.add_argument("overrides", nargs="*", help="extra lmx overrides for every setting")
    args = parser.parse_args()
    adaptive = [f"model.cutoffs=[{args.cutoffs}]"]
    settings = {f"{f} + {h}": [*fo, *ho, *(adaptive if ho else []), *args.overrides]
                for f, fo in FAMILIES.items() for h, ho in HEADS.items()}  # fmt: skip
    only = ["transformer + softmax", *args.only.split(",")] if args.only else list(settings)
    unknown = [name for name in only if name not in settings]
    if unknown:
        parser.error(f"--only: no setting {unknown[0]!r}; the settings: {', '.join(settings)}")
    settings = {name: settings[name] for name in dict.fromkeys(only)}  # the baseline first
    speeds: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(args.rounds):
        for name, overrides in settings.items():
            print(f"round {r + 1}/{args.rounds}: {name} ({args.steps} steps)...", flush=True)
            speeds[name].append(measure(overrides, args.data, args.steps))
    base = statistics.median(speeds["transformer + softmax"])
    print(f"\n{_machine()} | torch threads: default | {args.steps} steps, {args.rounds} rounds")
    print(f"{'setting':<32} {'train tokens/s':>15} {'vs transformer + softmax':>26}  per round")
    for name, values in speeds.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name:<32} {median:>15,.0f} {median / base:>25.2f}x  {rounds}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": _machine(), "steps": args.steps,
                                          "speeds": speeds}, indent=1))  # fmt: skip


def _machine() -> str:
    """The CPU, and the GPU where there is one: the runs take device=auto, so they use it."""
    import torch

    gpu = f" | GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"CPU: {_cpu()}{gpu}"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
