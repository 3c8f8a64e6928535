"""device.keep_heap's effect on a training step: ms per step and minor page faults per step of an
experiment's model with the WikiText-2 vocabulary (28,782 types), with glibc's malloc defaults
and with keep_heap, each in its own process, alternating.

    python benchmarks/keep_heap.py [--experiment seed_fast] [--rounds 3] [--steps 30]

Each process times `--steps` of lmx's own training step (lmx.bench.step_loop: the
experiment's autocast, optimizer and trainer.grad_clip, no per-step check, on one batch of
random token ids) after 5 warm-up steps, on 2 threads. `--experiment tutorial_loop` times
the tutorial's own train() instead (lmx.bench.tutorial_reference.train_steps, over a random
stream), with the same malloc setting. It prints the CPU, a line per process, and the
median per mode with their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from lmx.bench.peak import cpu_model, isa_flags

_WORKER = """
import json, resource, sys, torch
from lmx.bench import tutorial_reference as ref
from lmx.bench.step_loop import step_loop
from lmx.config.compose import compose
from lmx.runtime.device import apply_settings

experiment, keep, steps = sys.argv[1], sys.argv[2] == "on", int(sys.argv[3])
torch.set_num_threads(2)
settings = [f"device.keep_heap={keep}", "device.threads=2"]
if experiment == "tutorial_loop":  # the tutorial's own train() over a random [T, 20] stream
    apply_settings(torch.device("cpu"), compose(settings).device)
    torch.manual_seed(0)
    model = ref.TransformerModel(28782, 200, 2, 200, 2, 0.2)
    stream = torch.randint(0, 28782, ((steps + 5) * 35 + 1, 20))
    def run(n, first):
        return ref.train_steps(model, stream, 35, 28782, n, warmup=0, first=first)[1]
else:  # lmx's train_step, as the trainer calls it without a per-step check
    steps_of = step_loop([f"experiment={experiment}", *settings])
    def run(n, first):
        return steps_of(n)
run(5, 0)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
seconds = run(steps, 5)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"ms": 1000 * seconds / steps, "faults": faults / steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="seed_fast")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"{cpu_model()}; flags {' '.join(isa_flags())}; experiment={args.experiment}")
    ms: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for mode in ("off", "on"):
            out = subprocess.run(
                [sys.executable, "-c", _WORKER, args.experiment, mode, str(args.steps)],
                capture_output=True, text=True,
            )  # fmt: skip
            if out.returncode:
                sys.exit(f"the {mode} process failed:\n{out.stderr}")
            figures = json.loads(out.stdout.splitlines()[-1])
            ms[mode].append(figures["ms"])
            print(f"round {r + 1}, keep_heap {mode:3s}: {figures['ms']:6.1f} ms/step, "
                  f"{figures['faults']:8.1f} minor faults/step")  # fmt: skip
    off, on = statistics.median(ms["off"]), statistics.median(ms["on"])
    print(f"median: off {off:.1f} ms/step, on {on:.1f} ms/step ({off / on:.2f}x)")


if __name__ == "__main__":
    main()
