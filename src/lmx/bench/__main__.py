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
from lmx.paths import uncreatable

USAGE = __doc__.split("\n\n")[1].strip()


def _int(args: dict[str, str], key: str, default: int, problems: list[str] | None = None) -> int:
    """args[key] as an int (popped), or `default`; a problem noted (or raised) if it is none."""
    value = args.pop(key, None)
    try:
        return default if value is None else int(value)
    except ValueError:
        message = f"{key} must be an integer, got {value!r}"
        if problems is None:
            fail(ConfigError(f"{message}\n{USAGE}"))
        problems.append(message)
        return default


def _options(args: dict[str, str]) -> dict:
    """The bench's options, with every problem in one message, before any work: the data
    folder is read, and the output's folder tried, now rather than after an hour."""
    problems: list[str] = []
    data = args.pop("data.local_dir", None)
    if data is None:
        problems.append("data.local_dir=PATH is required")
    o = {"data": data, "steps": _int(args, "steps", 1000, problems),
         "warmup": _int(args, "warmup", 5, problems),
         "lever_steps": _int(args, "lever_steps", 60, problems),  # 0: no per-lever rows
         "avg_steps": _int(args, "avg_steps", 8, problems),
         "avg_batches": _int(args, "avg_batches", 120, problems)}  # fmt: skip
    seeds_arg = args.pop("seeds", "0,1,2")
    try:
        o["seeds"] = [int(x) for x in seeds_arg.split(",")]
        if len(set(o["seeds"])) < len(o["seeds"]):  # one sample would count as two
            problems.append(f"seeds={seeds_arg}: give each seed once")
    except ValueError:
        problems.append(f"seeds must be integers separated by commas, got {seeds_arg!r}")
    out = o["out"] = Path(args.pop("out", "outputs/bench.json"))
    if args:
        problems.append(f"unknown arguments: {', '.join(args)}")
    problems += _range_problems(o)
    if data is not None:
        from lmx.data.sources import local_files
        from lmx.errors import DataError

        try:
            local_files(data)
        except DataError as err:
            problems.append(str(err))
    why = f"{out} is a folder" if out.is_dir() else uncreatable(out.parent)
    if why is not None:
        problems.append(f"out={out}: cannot be written ({why})")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        fail(ConfigError(f"invalid bench options:\n{lines}\n{USAGE}"))
    _check_batches(data)
    return o


def _check_batches(data: str) -> None:
    """The splits batch as the tutorial's config needs (train and valid rows of bptt + 1
    tokens), said as lmx train says it, before a worker meets it (the tokens are cached
    for the workers)."""
    from lmx.config.compose import compose
    from lmx.data.streams import streams
    from lmx.errors import DataError

    try:
        cfg = compose([f"data.local_dir={data}"])
    except Exception as err:  # e.g. a path that Hydra reads as a list (a comma in it)
        fail(ConfigError(f"data.local_dir={data}: {err}"))
    try:
        streams(cfg.data, ("train", "valid"))
    except DataError as err:
        if "too few for one batch" not in str(err):
            fail(err)
        fail(DataError(f"{err} (lmx bench runs the tutorial's data settings and takes no "
                       "data.* option: it needs a corpus with more text)"))  # fmt: skip


def _range_problems(o: dict) -> list[str]:
    steps, warmup, avg_steps, levers = o["steps"], o["warmup"], o["avg_steps"], o["lever_steps"]
    problems = [f"warmup must be 0 or more, got {warmup}"] if warmup < 0 else []
    if avg_steps < 0 or o["avg_batches"] < 1:
        problems.append(f"avg_steps must be 0 or more and avg_batches 1 or more, got "
                        f"{avg_steps} and {o['avg_batches']}")  # fmt: skip
    if steps - max(avg_steps, 1) + 1 <= warmup:
        problems.append(f"steps ({steps}) - avg_steps ({avg_steps}) + 1 must be more than "
                        f"warmup ({warmup}): the timed steps come after it")  # fmt: skip
    if levers and levers <= warmup:
        problems.append(f"lever_steps ({levers}) must be more than warmup ({warmup}), or 0 "
                        "to skip the lever rows")  # fmt: skip
    return problems


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
        if args:
            fail(ConfigError(f"show={saved} prints a saved result: {', '.join(args)} would "
                             "have no effect"))  # fmt: skip
        if not Path(saved).is_file():
            fail(ConfigError(f"show={saved}: no such file"))
        try:
            print(table(json.loads(Path(saved).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as err:
            fail(ConfigError(f"show={saved}: not a bench result ({type(err).__name__}: {err})"))
        return
    o = _options(args)
    from lmx.bench.run import bench

    results = bench(str(Path(o["data"]).resolve()), o["steps"], o["seeds"], o["warmup"],
                    o["lever_steps"], o["avg_steps"], o["avg_batches"])  # fmt: skip
    out = o["out"]
    if out.exists():
        print(f"replacing {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"written: {out}")


if __name__ == "__main__":
    run(main)
