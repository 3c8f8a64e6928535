"""`lmx COMMAND ...`: every lmx command behind one console script.

    lmx train [KEY=VALUE ...] [-m]     train (and sweep): `python -m lmx.train`
    lmx eval ckpt=PATH [split=test]    score a checkpoint: `python -m lmx.evaluate`
    lmx generate ckpt=PATH prompt=...  sample text: `python -m lmx.generate`
    lmx report PATH [--group-by K]     compare runs: `python -m lmx.report`
    lmx bench data.local_dir=PATH      speed against the tutorial's loop: `python -m lmx.bench`

`lmx COMMAND --help` lists a command's own options.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("lmx.train", "train a model, or sweep with -m (Hydra: key=value overrides)"),
    "eval": ("lmx.evaluate", "score a checkpoint on a split"),
    "generate": ("lmx.generate", "sample continuations of a prompt from a checkpoint"),
    "report": ("lmx.report", "compare runs: tables, error bars, plots, report.html"),
    "bench": ("lmx.bench.__main__", "lmx's speed side by side with the tutorial's loop"),
}
USAGE = (
    "usage: lmx COMMAND [ARGS ...]\n\ncommands:\n"
    + "".join(f"  {name:<10}{help}\n" for name, (_, help) in COMMANDS.items())
    + "\n`lmx COMMAND --help` lists a command's options."
)


def main() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from lmx.config.rules import did_you_mean

        print(f"lmx: no command {name!r}{did_you_mean(name, list(COMMANDS))}\n{USAGE}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"lmx {name}", *rest]
    if name == "train":
        module.main()  # Hydra reads sys.argv itself
    else:
        from lmx.cli import run

        run(module.main)


if __name__ == "__main__":
    main()
