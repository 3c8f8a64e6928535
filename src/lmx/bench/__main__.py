"""`python -m lmx.bench`: lmx side by side with the tutorial's own loop, on this machine.

    python -m lmx.bench data.local_dir=../shared/data/wikitext-2 [steps=1000] [seeds=0,1,2]
                        [avg_steps=8] [avg_batches=120] [lever_steps=60] [warmup=5] [out=PATH]
    python -m lmx.bench show=outputs/bench.json   # the table of a saved result, again

Measures, each setting and seed in a fresh process (so peak memory is its own):
  (a) for the tutorial's loop (lmx.bench.tutorial_reference), lmx fp32 (experiment=seed_tutorial)
      and lmx experiment=seed_fast, on the same token ids and batches: steady-state training
      tokens/s (the first `warmup` steps of each process left out; the median over seeds),
      eval tokens/s on the whole validation split (the median over seeds), and validation
      perplexity after `steps` steps from each seed, two ways. At the tutorial's SGD lr 5.0
      consecutive models of one run differ a lot in validation ppl (docs/benchmarks.md has the
      spread), so besides the whole split scored by the model after `steps` steps, the
      models after each of the last `avg_steps` steps are scored on the first `avg_batches`
      validation batches (lmx.bench.iterates). Each figure is exp(mean validation loss)
      over the seeds (and models); the averaged figure's difference from lmx fp32 comes
      with its standard error (from the spread of the seeds' means, lmx.stats) when there
      are two seeds or more;
  (b) data preparation: cold (empty cache) and cached;
  (c) startup: `--help`, `--cfg job`, a config error, and the command to the first step;
  (d) peak memory (max RSS; on CUDA also the allocator's peak);
  (e) each speed lever on its own row (lever_steps steps each, seed 0; 0 skips them).
Prints a table and writes JSON (default outputs/bench.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from lmx.bench.settings import RESULT_TAG
from lmx.bench.table import table
from lmx.cli import fail, parse_args, run
from lmx.errors import ConfigError

USAGE = __doc__.split("\n\n")[1].strip()


def _int(args: dict[str, str], key: str, default: int) -> int:
    value = args.pop(key, None)
    try:
        return default if value is None else int(value)
    except ValueError:
        fail(ConfigError(f"{key} must be an integer, got {value!r}\n{USAGE}"))


def main(argv: list[str]) -> None:
    args = parse_args(argv, USAGE)
    worker = args.pop("worker", None)
    if worker is not None:  # one measurement, in its own process
        data, steps, warmup = args["data"], _int(args, "steps", 0), _int(args, "warmup", 0)
        seed = _int(args, "seed", 0)
        avg = _int(args, "avg_steps", 0), _int(args, "avg_batches", 0)
        from lmx.bench.workers import work_data, work_lmx, work_tutorial

        if worker == "tutorial_loop":
            result = work_tutorial(data, steps, warmup, seed, *avg)
        elif worker == "data":
            result = work_data(data)
        else:
            result = work_lmx(worker, data, steps, warmup, seed, *avg)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return
    saved = args.pop("show", None)
    if saved is not None:  # re-print a saved result's table
        if not Path(saved).is_file():
            fail(ConfigError(f"show={saved}: no such file"))
        try:
            print(table(json.loads(Path(saved).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as err:
            fail(ConfigError(f"show={saved}: not a bench result ({type(err).__name__}: {err})"))
        return
    data = args.pop("data.local_dir", None)
    if data is None:
        fail(ConfigError(f"data.local_dir=PATH is required\n{USAGE}"))
    steps, warmup = _int(args, "steps", 1000), _int(args, "warmup", 5)
    lever_steps = _int(args, "lever_steps", 60)  # 0: skip the per-lever table
    avg_steps, avg_batches = _int(args, "avg_steps", 8), _int(args, "avg_batches", 120)
    seeds_arg = args.pop("seeds", "0,1,2")
    try:
        seeds = [int(x) for x in seeds_arg.split(",")]
    except ValueError:
        fail(ConfigError(f"seeds must be integers separated by commas, got {seeds_arg!r}"))
    out = Path(args.pop("out", "outputs/bench.json"))
    if args:
        fail(ConfigError(f"unknown arguments: {', '.join(args)}\n{USAGE}"))
    if avg_steps < 0 or avg_batches < 1:
        fail(ConfigError(f"avg_steps must be 0 or more and avg_batches 1 or more, got "
                         f"{avg_steps} and {avg_batches}"))  # fmt: skip
    if steps - max(avg_steps, 1) + 1 <= warmup:
        fail(ConfigError(f"steps ({steps}) - avg_steps ({avg_steps}) + 1 must be more than "
                         f"warmup ({warmup}): the timed steps come after it"))  # fmt: skip
    if lever_steps and lever_steps <= warmup:
        fail(ConfigError(f"lever_steps ({lever_steps}) must be more than warmup ({warmup}), "
                         "or 0 to skip the lever rows"))  # fmt: skip
    from lmx.bench.run import bench

    results = bench(
        str(Path(data).resolve()), steps, seeds, warmup, lever_steps, avg_steps, avg_batches
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"written: {out}")


if __name__ == "__main__":
    run(main)
