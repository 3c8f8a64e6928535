"""`python -m lmx.bench`: lmx side by side with the tutorial's own loop, on this machine.

    python -m lmx.bench data.local_dir=../shared/data/wikitext-2 [steps=1000] [seeds=0,1,2]
                        [avg_steps=8] [avg_batches=120] [lever_steps=60] [warmup=5] [out=PATH]
    python -m lmx.bench show=outputs/bench.json   # the table of a saved result, again

Measures, each setting and seed in a fresh process (so peak memory is its own):
  (a) for the tutorial's loop (lmx.tutorial_reference), lmx fp32 (experiment=seed_tutorial)
      and lmx experiment=seed_fast, on the same token ids and batches: steady-state training
      tokens/s (the first `warmup` steps of each process left out; the median over seeds),
      eval tokens/s on the whole validation split (the median over seeds), and validation
      perplexity after `steps` steps from each seed, two ways. At the tutorial's SGD lr 5.0
      8 consecutive models of one run span 10-35% in validation ppl (max/min), so besides
      the whole split scored by the model after `steps` steps, the models after each of the
      last `avg_steps` steps are scored on the first `avg_batches` validation batches
      (lmx.iterates). Each figure is exp(mean validation loss) over the seeds (and models);
      the averaged figure's difference from lmx fp32 comes with its standard error (from
      the spread of the seeds' means, lmx.stats) when there are two seeds or more;
  (b) data preparation: cold (empty cache) and cached;
  (c) startup: `--help`, `--cfg job`, a config error, and the command to the first step;
  (d) peak memory (max RSS; on CUDA also the allocator's peak);
  (e) each speed lever on its own row (lever_steps steps each, seed 0; 0 skips them).
Prints a table and writes JSON (default outputs/bench.json).
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmx.cli import fail, parse_args, run
from lmx.errors import ConfigError
from lmx.stats import compare_settings

USAGE = __doc__.split("\n\n")[1].strip()
SETTINGS = {  # name -> lmx overrides (None: the tutorial's own loop)
    "tutorial_loop": None,
    "lmx_fp32": ["experiment=seed_tutorial"],
    "lmx_seed_fast": ["experiment=seed_fast"],
}
# The speed levers one at a time, each on top of the previous row (train and eval speed only).
LEVERS = {
    "fp32, plain loss, one eval window": [
        "experiment=seed_tutorial",
        "model.fused_loss=false",
        "trainer.eval_tokens_per_forward=1",
    ],
    "+ fused decoder loss": ["experiment=seed_tutorial", "trainer.eval_tokens_per_forward=1"],
    "+ stacked eval windows": ["experiment=seed_tutorial"],
    "+ bf16 autocast": ["experiment=seed_tutorial", "device.precision=bf16"],
    "+ sparse embedding gradient (= seed_fast)": ["experiment=seed_fast"],
    # inductor cannot compile a sparse gradient: compile is measured on the dense bf16 row
    "bf16 + torch.compile (dense embedding)": [
        "experiment=seed_tutorial",
        "device.precision=bf16",
        "device.compile=true",
    ],
}
RESULT_TAG = "LMX_BENCH_RESULT "


# ---------------------------------------------------------------------------- workers
def _peak_memory() -> dict[str, float]:
    import torch

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _flops_per_token(d: int, d_hid: int, nlayers: int, ntoken: int, bptt: int) -> float:
    """6 x matmul weights (forward + backward) plus the attention products (12 T d a layer)."""
    weights = nlayers * (4 * d * d + 2 * d * d_hid) + d * ntoken
    return 6 * weights + 12 * nlayers * bptt * d


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from lmx.config import register_configs
    from lmx.paths import config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def work_tutorial(
    data_dir: str, steps: int, warmup: int, seed: int, avg_steps: int, avg_batches: int
) -> dict:
    import torch

    from lmx import tutorial_reference as ref
    from lmx.corpus import load_corpus

    cfg = _compose([f"data.local_dir={data_dir}"])
    corpus = load_corpus(cfg.data)  # the same ids as lmx trains on
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    ntokens = corpus.vocab_size
    model = ref.TransformerModel(ntokens, 200, 2, 200, 2, 0.2).to(device)
    train = ref.batchify(corpus.splits["train"], 20).to(device)
    valid = ref.batchify(corpus.splits["valid"], 10).to(device)
    first = steps - max(avg_steps, 1) + 1  # the steps before the first averaged model
    tokens, seconds = ref.train_steps(model, train, 35, ntokens, first, warmup=warmup)
    iterates = []
    for k in range(avg_steps):  # the models after steps first .. steps
        if k:
            ref.train_steps(model, train, 35, ntokens, 1, warmup=1, first=first + k - 1)
        iterates.append(ref.evaluate(model, valid, 35, ntokens, limit=avg_batches))
    start = time.perf_counter()
    val_loss = ref.evaluate(model, valid, 35, ntokens)
    eval_seconds = time.perf_counter() - start
    return {
        "train_tokens_per_s": tokens / seconds,
        "eval_tokens_per_s": (valid.numel() - valid.size(1)) / eval_seconds,
        "val_loss": val_loss,
        "iterate_val_losses": iterates,
        "flops_per_token": _flops_per_token(200, 200, 2, ntokens, 35),
        **_peak_memory(),
    }


def work_lmx(
    name: str, data_dir: str, steps: int, warmup: int, seed: int, avg_steps: int, avg_batches: int
) -> dict:
    from lmx.device import resolve_device
    from lmx.iterates import iterate_losses, streams
    from lmx.pretrained import load_trained
    from lmx.train import train

    first = steps - max(avg_steps, 1) + 1  # lmx's trainer runs these, then lmx.iterates
    cfg = _compose(
        [
            *{**SETTINGS, **LEVERS}[name],
            f"data.local_dir={data_dir}",
            "trainer.epochs=1",
            f"trainer.limit_train_batches={first}",
            "trainer.limit_eval_batches=1",  # the trainer's own validation is not used
            f"trainer.throughput_warmup_steps={warmup}",
            f"trainer.seed={seed}",
            "trainer.test=false",
            "trainer.checkpoint_every_steps=null",
            "trainer.tensorboard=false",
            "trainer.progress=false",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="lmx-bench-") as tmp:
        metrics = train(cfg, Path(tmp) / "run")
        model = load_trained(Path(tmp) / "run" / "checkpoints" / "best.pt", []).model
    device = resolve_device(cfg.device)
    model.to(device)
    train_ids, valid = streams(cfg, device)
    iterates = []
    if avg_steps:
        iterates = iterate_losses(model, cfg, train_ids, valid, device, first, avg_steps,
                                  avg_batches)  # fmt: skip
    val_loss, eval_tokens_per_s = _lmx_eval(cfg, model, valid, device)
    m = cfg.model
    return {
        "train_tokens_per_s": metrics["train_tokens_per_s"],
        "eval_tokens_per_s": eval_tokens_per_s,
        "val_loss": val_loss,
        "iterate_val_losses": iterates,
        "flops_per_token": _flops_per_token(
            m.d_model, m.d_hid, m.nlayers, metrics["vocab_size"], cfg.data.bptt
        ),
        **_peak_memory(),
    }


def _lmx_eval(cfg, model, valid, device) -> tuple[float, float]:
    """lmx's evaluate over the whole validation split: (loss, tokens/s after a warm-up)."""
    from lmx.trainer import evaluate

    args = dict(
        precision=cfg.device.precision, tokens_per_forward=cfg.trainer.eval_tokens_per_forward
    )
    evaluate(model, valid, cfg.data.bptt, device, **args, limit=2)  # warm-up
    start = time.perf_counter()
    loss = evaluate(model, valid, cfg.data.bptt, device, **args)
    return loss, (valid.numel() - valid.size(0)) / (time.perf_counter() - start)


def work_data(data_dir: str) -> dict:
    from lmx.corpus import load_corpus

    with tempfile.TemporaryDirectory(prefix="lmx-bench-cache-") as cache:
        cfg = _compose([f"data.local_dir={data_dir}", f"data.cache_dir={cache}"])
        start = time.perf_counter()
        load_corpus(cfg.data)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        load_corpus(cfg.data)
        cached = time.perf_counter() - start
    return {"cold_s": cold, "cached_s": cached}


# ---------------------------------------------------------------------------- driver
def _worker(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "lmx.bench", *args], capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"bench worker {args[0]} failed:\n{proc.stderr[-3000:]}")


def _time_command(args: list[str], until: str | None = None) -> float:
    """Seconds from starting `python -m lmx.train ARGS` to its exit, or to an output line
    containing `until` (then the process is stopped)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmx.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        if until is not None and until in line:
            elapsed = time.perf_counter() - start
            proc.kill()
            proc.wait()
            return elapsed
    proc.wait()
    if until is not None:
        raise RuntimeError(f"`lmx.train {' '.join(args)}` never printed {until!r}")
    return time.perf_counter() - start


def _machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _combine(runs: list[dict]) -> dict:
    """One setting's figures over its seeds: median tokens/s, exp(mean loss) as the ppl."""
    losses = [r["val_loss"] for r in runs]
    iterates = [r["iterate_val_losses"] for r in runs]
    every = [x for xs in iterates for x in xs]
    return {
        **runs[0],  # flops per token
        "train_tokens_per_s": statistics.median(r["train_tokens_per_s"] for r in runs),
        "eval_tokens_per_s": statistics.median(r["eval_tokens_per_s"] for r in runs),
        "val_loss": statistics.fmean(losses),
        "val_ppl": math.exp(statistics.fmean(losses)),
        "val_ppl_per_seed": [math.exp(x) for x in losses],
        "iterate_val_ppl": math.exp(statistics.fmean(every)) if every else None,
        "iterate_val_ppl_per_seed": [math.exp(statistics.fmean(xs)) for xs in iterates if xs],
        "iterate_val_losses": iterates,
        "train_tokens_per_s_per_seed": [r["train_tokens_per_s"] for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def bench(data_dir: str, steps: int, seeds: list[int], warmup: int, lever_steps: int,
          avg_steps: int, avg_batches: int) -> dict:  # fmt: skip
    results: dict = {
        "machine": _machine(),
        "steps": steps,
        "seeds": seeds,
        "warmup_steps_excluded": warmup,
        "avg_steps": avg_steps,
        "avg_batches": avg_batches,
    }
    common = [f"data={data_dir}", f"warmup={warmup}", f"avg_batches={avg_batches}"]
    for name in SETTINGS:
        runs = []
        for seed in seeds:
            print(f"measuring {name}, seed {seed} ({steps} training steps, {avg_steps} "
                  "models scored, the validation split)...", flush=True)  # fmt: skip
            runs.append(_worker([f"worker={name}", *common, f"steps={steps}", f"seed={seed}",
                                 f"avg_steps={avg_steps}"]))  # fmt: skip
        results[name] = _combine(runs)
    if lever_steps:
        results["levers"] = {}
        for name in LEVERS:
            print(f"measuring lever {name!r} ({lever_steps} steps)...", flush=True)
            try:
                results["levers"][name] = _worker(
                    [f"worker={name}", *common, f"steps={lever_steps}", "seed=0", "avg_steps=0"]
                )
            except RuntimeError as err:  # one lever failing must not lose the others
                print(err, file=sys.stderr)
                results["levers"][name] = {"error": str(err).splitlines()[-1]}
    print("measuring data preparation (cold, then cached)...", flush=True)
    results["data"] = _worker(["worker=data", f"data={data_dir}"])
    print("measuring startup...", flush=True)
    with tempfile.TemporaryDirectory(prefix="lmx-bench-run-") as tmp:
        first_step = [
            "experiment=seed_fast",
            f"data.local_dir={data_dir}",
            "trainer.log_interval=1",
            "trainer.progress=false",
            f"hydra.run.dir={tmp}/run",
        ]
        results["startup"] = {
            "help_s": _time_command(["--help"]),
            "cfg_job_s": _time_command(["--cfg", "job"]),
            "config_error_s": _time_command(["model.nhed=4"]),
            "first_step_s": _time_command(first_step, until="batches |"),
        }
    return results


def _table(r: dict) -> str:
    base = r["tutorial_loop"]["train_tokens_per_s"]
    fp32 = r["lmx_fp32"]
    steps, k = r["steps"], r["avg_steps"]
    averaged = f"steps {steps - k + 1}-{steps}" if k > 1 else f"step {steps}"
    rows = [
        "| setting | train tokens/s | vs tutorial | eval tokens/s | GFLOP/s (train) "
        f"| valid ppl, model after {steps} steps | vs lmx fp32 "
        f"| valid ppl, models after {averaged}, first {r['avg_batches']} batches "
        "| vs lmx fp32 (± standard error) | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seeds = " / ".join(str(x) for x in r["seeds"])
    per_seed = [f"per seed ({seeds}):"]
    for name in SETTINGS:
        s = r[name]
        if k:
            ratio = s["iterate_val_ppl"] / fp32["iterate_val_ppl"]
            averaged_ppl = f"{s['iterate_val_ppl']:,.2f} | {100 * (ratio - 1):+.1f}%"
            if len(r["seeds"]) > 1 and name != "lmx_fp32":
                c = compare_settings(fp32["iterate_val_losses"], s["iterate_val_losses"])
                averaged_ppl += f" ± {c['se_pct']:.1f}%"
        else:
            averaged_ppl = "- | -"
        rows.append(
            f"| {name} | {s['train_tokens_per_s']:,.0f} | {s['train_tokens_per_s'] / base:.2f}x "
            f"| {s['eval_tokens_per_s']:,.0f} "
            f"| {s['train_tokens_per_s'] * s['flops_per_token'] / 1e9:,.1f} "
            f"| {s['val_ppl']:,.2f} | {100 * (s['val_ppl'] / fp32['val_ppl'] - 1):+.1f}% "
            f"| {averaged_ppl} | {s['peak_rss_mb']:,.0f} |"
        )
        one = " / ".join(f"{x:,.1f}" for x in s["val_ppl_per_seed"])
        many = " / ".join(f"{x:,.1f}" for x in s["iterate_val_ppl_per_seed"])
        per_seed.append(f"  {name}: after {steps} steps {one}" + (f"; averaged {many}" * bool(k)))
    rows += ["", *per_seed]
    if r.get("levers"):
        rows += [
            "",
            "| lever (each row adds to the one above) | train tokens/s | eval tokens/s |",
            "| --- | ---: | ---: |",
        ]
        for name, lever in r["levers"].items():
            if "error" in lever:
                rows.append(f"| {name} | failed: {lever['error']} | |")
                continue
            train, evals = lever["train_tokens_per_s"], lever["eval_tokens_per_s"]
            rows.append(f"| {name} | {train:,.0f} | {evals:,.0f} |")
    d, st = r["data"], r["startup"]
    rows += [
        "",
        f"data preparation: cold {d['cold_s']:.2f} s, cached {d['cached_s']:.3f} s",
        f"startup: --help {st['help_s']:.2f} s, --cfg job {st['cfg_job_s']:.2f} s, config error "
        f"{st['config_error_s']:.2f} s, command to first training step {st['first_step_s']:.2f} s",
        f"machine: {r['machine']}",
    ]
    return "\n".join(rows)


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
        try:
            print(_table(json.loads(Path(saved).read_text())))
        except (OSError, ValueError, KeyError) as err:
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
    if steps - max(avg_steps, 1) + 1 <= warmup or lever_steps and lever_steps <= warmup:
        fail(ConfigError(f"steps ({steps}) - avg_steps ({avg_steps}) + 1 and lever_steps "
                         f"({lever_steps}) must be more than warmup ({warmup})"))  # fmt: skip
    results = bench(
        str(Path(data).resolve()), steps, seeds, warmup, lever_steps, avg_steps, avg_batches
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(_table(results))
    print(f"written: {out}")


if __name__ == "__main__":
    run(main)
