"""The speed levers change speed, not results: each is checked against the plain path."""

from __future__ import annotations

import json
import math
import platform
import resource
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg, run_module, run_python, tiny_overrides, write_corpus
from lmx.data.batching import batchify
from lmx.data.cache import load_corpus
from lmx.models.transformer import TransformerLM
from lmx.perplexity import evaluate
from lmx.runtime import heap
from lmx.train import train

# A small model trained for one epoch of the tiny corpus: a few hundred steps.
GUARD = ("trainer.epochs=2", "model.d_model=32", "model.d_hid=64", "trainer.log_interval=50")


def _val_loss(corpus_dir, cache_dir, run_dir, *extra):
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, *GUARD, *extra))
    metrics = train(cfg, run_dir)
    assert metrics["steps"] >= 300
    return metrics["best_val_loss"]


def test_fast_paths_reach_the_fp32_validation_loss(corpus_dir, cache_dir, tmp_path):
    plain = _val_loss(corpus_dir, cache_dir, tmp_path / "plain", "model.fused_loss=false")
    fused = _val_loss(corpus_dir, cache_dir, tmp_path / "fused")
    bf16 = _val_loss(corpus_dir, cache_dir, tmp_path / "bf16", "device.precision=bf16")
    sparse = _val_loss(corpus_dir, cache_dir, tmp_path / "sparse", "model.sparse_embedding=true")
    # The fused loss and the sparse embedding gradient are the same arithmetic in fp32: only
    # rounding differs.
    assert fused == pytest.approx(plain, rel=1e-3)
    assert sparse == pytest.approx(plain, rel=1e-3)
    # bf16 autocast: the stated tolerance is 2% of the loss after a few hundred steps.
    assert bf16 == pytest.approx(plain, rel=0.02)


def test_stacked_eval_windows_give_the_same_loss(corpus_dir, cache_dir):
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir))
    valid = batchify(load_corpus(cfg.data).splits["valid"].long(), 3, "valid", 7)  # ragged end
    torch.manual_seed(0)
    model = TransformerLM(200, d_model=16, nhead=2, d_hid=16, nlayers=1)
    valid = valid.clamp(max=199)
    one = evaluate(model, valid, 7, torch.device("cpu"), tokens_per_forward=1)
    assert one.tokens == one.total == valid.numel() - valid.size(0) and not one.partial
    for tokens in (50, 10_000):
        stacked = evaluate(model, valid, 7, torch.device("cpu"), tokens_per_forward=tokens)
        assert stacked.loss == pytest.approx(one.loss, rel=1e-6)
        assert stacked.tokens == one.tokens
    limited = evaluate(model, valid, 7, torch.device("cpu"), limit=3, tokens_per_forward=1)
    assert limited.partial and limited.tokens == 3 * 7 * valid.size(0)
    stacked = evaluate(model, valid, 7, torch.device("cpu"), limit=3, tokens_per_forward=100)
    assert stacked.loss == pytest.approx(limited.loss, rel=1e-6)


def test_sparse_embedding_needs_a_sparse_capable_optimizer_and_untied_weights():
    from lmx.config.rules import config_problems

    problems = config_problems(
        compose_cfg(["model.sparse_embedding=true", "model.tie_weights=true", "optim=adamw"])
    )
    assert "model.sparse_embedding needs model.tie_weights=false" in problems
    assert any("takes sparse gradients" in p and "torch.optim.AdamW" in p for p in problems)
    assert config_problems(compose_cfg(["experiment=seed_fast"])) == []


def test_throughput_leaves_out_the_warmup_steps(corpus_dir, cache_dir, tmp_path, monkeypatch):
    # A fake clock: every reading advances 1 s, and the first 4 steps take 100 s more each.
    # If those steps were timed, tokens/s would be far below tokens per step / 1 s.
    from lmx.training import loop

    clock = {"t": 0.0, "steps": 0}

    def now():
        clock["t"] += 1.0
        return clock["t"]

    step = loop.train_step

    def slow_at_first(*args, **kwargs):
        clock["steps"] += 1
        clock["t"] += 100.0 if clock["steps"] <= 4 else 0.0
        return step(*args, **kwargs)

    monkeypatch.setattr(loop.time, "perf_counter", now)
    monkeypatch.setattr(loop, "train_step", slow_at_first)
    cfg = compose_cfg(
        tiny_overrides(
            corpus_dir,
            cache_dir,
            "trainer.limit_train_batches=6",
            "trainer.throughput_warmup_steps=4",
        )
    )
    metrics = train(cfg, tmp_path / "run")
    assert metrics["steps"] == 12 and metrics["throughput_excluded_steps"] == 4
    tokens_per_step = cfg.data.batch_size * cfg.data.bptt
    assert metrics["train_tokens_per_s"] == pytest.approx(tokens_per_step / 1.0)


def test_bench_runs_and_writes_its_figures(corpus_dir, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_module(
        "lmx.bench",
        f"data.local_dir={corpus_dir}",
        "steps=6",
        "warmup=2",
        "seeds=0,1",
        "avg_steps=3",
        "avg_batches=2",
        "lever_steps=3",
        f"out={out}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("measuring lmx_fp32, seed 1 (6 training steps; the last model scored on the "
            "validation split, and the models after each of the last 3 steps on its first 2 "
            "batches)") in proc.stdout  # fmt: skip
    figures = json.loads(out.read_text())
    for name in ("tutorial_loop", "lmx_fp32", "lmx_seed_fast"):
        result = figures[name]
        assert result["train_tokens_per_s"] > 0 and result["eval_tokens_per_s"] > 0
        assert math.isfinite(result["val_loss"]) and result["peak_rss_mb"] > 0
        per_seed = result["val_ppl_per_seed"]
        assert len(per_seed) == 2 and per_seed[0] != per_seed[1]  # the seeds differ
        mean_loss = (math.log(per_seed[0]) + math.log(per_seed[1])) / 2
        assert math.isclose(result["val_ppl"], math.exp(mean_loss))
        # the models after steps 4, 5 and 6 of each seed, all different, averaged
        iterates = result["iterate_val_losses"]
        assert [len(xs) for xs in iterates] == [3, 3] and len({*iterates[0], *iterates[1]}) == 6
        every = iterates[0] + iterates[1]
        assert math.isclose(result["iterate_val_ppl"], math.exp(sum(every) / 6))
    from lmx.bench.settings import LEVERS

    assert list(figures["levers"]) == list(LEVERS)  # every lever measured, none failed
    for name, lever in figures["levers"].items():
        assert "error" not in lever, name
        assert lever["train_tokens_per_s"] > 0 and lever["eval_tokens_per_s"] > 0, name
    assert figures["data"]["cold_s"] > figures["data"]["cached_s"] > 0
    assert all(v > 0 for v in figures["startup"].values())
    assert "| tutorial_loop |" in proc.stdout and "1.00x" in proc.stdout
    peak = figures["machine"]["peak_gflops"]  # the ceiling, measured before the settings
    assert peak["fp32"] > 0 and peak["bf16"] > 0 and isinstance(figures["machine"]["isa"], list)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| lmx_seed_fast |"))
    gflops, mfu = (c.strip() for c in row.split("|")[5:7])  # seed_fast against the bf16 peak
    expected = 100 * float(gflops.replace(",", "")) / peak["bf16"]  # from the rounded GFLOP/s
    assert mfu.endswith("%") and abs(float(mfu[:-1]) - expected) <= 0.1
    assert "matmul peak (2048², best of 5): fp32" in proc.stdout
    assert proc.stdout.count("% ± ") == 2  # tutorial loop and seed_fast vs lmx fp32, 2 seeds
    shown = run_module("lmx.bench", f"show={out}")  # the saved result's table, again
    assert shown.returncode == 0 and shown.stdout.strip() in proc.stdout
    bad = run_module("lmx.bench", f"show={out}", "steps=5")  # nothing runs: no effect
    assert bad.returncode != 0 and f"show={out} prints a saved result: steps" in bad.stderr
    bad = run_module("lmx.bench", f"show={tmp_path}/missing.json")
    assert bad.returncode != 0 and f"show={tmp_path}/missing.json: no such file" in bad.stderr
    (tmp_path / "other.json").write_text("[1]")
    bad = run_module("lmx.bench", f"show={tmp_path}/other.json")
    assert bad.returncode != 0 and "not a bench result" in bad.stderr


@pytest.mark.parametrize(
    "arg, message",
    [
        ("steps=ten", "steps must be an integer"),
        ("seeds=0;1", "seeds must be integers"),
        ("avg_steps=998", "must be more than warmup (5): the timed steps come after it"),
        ("lever_steps=3", "lever_steps (3) must be more than warmup (5), or 0 to skip"),
        ("avg_batches=0", "avg_batches 1 or more"),
        ("seeds=0,0", "seeds=0,0: give each seed once"),
        ("warmup=-1", "warmup must be 0 or more"),
        ("out=/proc/no/bench.json", "out=/proc/no/bench.json: cannot be written"),
    ],
)
def test_bench_argument_errors_are_one_message(corpus_dir, arg, message):
    proc = run_module("lmx.bench", f"data.local_dir={corpus_dir}", arg)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and "measuring" not in proc.stdout  # before any work


def test_every_bench_argument_error_is_in_the_one_message(tmp_path):
    proc = run_module("lmx.bench", f"data.local_dir={tmp_path / 'none'}", "steps=abc", "stepz=5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for part in ("steps must be an integer, got 'abc'", "unknown arguments: stepz",
                 f"data.local_dir={tmp_path / 'none'}: no such folder"):  # fmt: skip
        assert part in proc.stderr, proc.stderr


def test_a_corpus_too_small_for_the_benchs_batches_is_said_before_any_worker(tmp_path):
    folder = write_corpus(tmp_path / "small")
    (folder / "valid.txt").write_text("a few words\n")
    options = ("steps=3", "seeds=0", "lever_steps=0", "avg_steps=0", "warmup=1")
    proc = run_module("lmx.bench", f"data.local_dir={folder}", *options, f"out={tmp_path}/b.json")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "the valid split has 3 tokens: too few for one batch" in proc.stderr
    assert "it needs a corpus with more text" in proc.stderr
    (folder / "valid.txt").write_bytes(b"bad \xff byte\n")  # another data error: as it is
    proc = run_module("lmx.bench", f"data.local_dir={folder}", *options, f"out={tmp_path}/b.json")
    assert proc.returncode != 0 and "is not valid UTF-8" in proc.stderr
    assert "more text" not in proc.stderr and "Traceback" not in proc.stderr


def test_tf32_is_set_for_a_gpu_only():
    from lmx.runtime.device import enable_tf32

    cudnn = torch.backends.cudnn
    before = torch.get_float32_matmul_precision(), cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        enable_tf32(torch.device("cpu"), True)  # nothing to do on a CPU
        assert torch.get_float32_matmul_precision() == "highest"
        enable_tf32(torch.device("cuda"), True)  # a setting alone: no GPU needed to make it
        assert torch.get_float32_matmul_precision() == "high" and cudnn.allow_tf32
        enable_tf32(torch.device("cuda"), False)  # device.tf32=false keeps full fp32
        assert torch.get_float32_matmul_precision() == "highest"
        assert not cudnn.allow_tf32  # cuDNN's RNNs (the LSTM family) too
    finally:
        torch.set_float32_matmul_precision(before[0])
        cudnn.allow_tf32 = before[1]


# A step's worth of large tensors, allocated together and freed together, again and again: the
# minor page faults of the median step (each fault a page the kernel mapped and zeroed anew).
# The control, "mapped", pins glibc's mmap threshold at its initial 128 KiB so that every
# block is mapped afresh: what glibc's moving thresholds do to a training step's tensors
# (docs/benchmarks.md counts them), though not reliably to a probe this small. It shows the
# probe sees such faults; "on" is device.keep_heap.
_HEAP_PROBE = """
import ctypes, resource, sys, torch
from lmx.runtime import heap
if sys.argv[1] == "on":
    assert heap.keep_heap(True)
else:
    assert ctypes.CDLL("libc.so.6").mallopt(heap.M_MMAP_THRESHOLD, 128 * 1024) == 1
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    tensors = [torch.ones(5_000_000) for _ in range(3)]  # 3 x 20 MB
for _ in range(3):
    step()
counts = []
for _ in range(11):
    start = faults()
    step()
    counts.append(faults() - start)
print(sorted(counts)[5])  # the median step: a rare one that grows the heap is not the rule
"""


def _thp_always() -> bool:  # 2 MiB pages: a mapped block faults in a few times only
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return thp.is_file() and "[always]" in thp.read_text()


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _thp_always(),
    reason="glibc's malloc, 4 KiB pages",
)
@pytest.mark.skipif(heap._why_not() is not None, reason="keep_heap leaves malloc alone here")
def test_keep_heap_stops_the_page_faults_of_each_step():
    def faults_per_step(mode: str) -> float:
        proc = run_python("-c", _HEAP_PROBE, mode, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return float(proc.stdout)

    pages = 3 * 20e6 / resource.getpagesize()
    assert faults_per_step("mapped") > 0.5 * pages
    assert faults_per_step("on") < 0.01 * pages


def test_device_settings_take_effect_in_train_evaluate_and_generate(
    corpus_dir, cache_dir, tmp_path, monkeypatch
):
    """device.keep_heap and device.threads are applied by each entry point, not by train
    alone: evaluate takes the checkpoint's saved values, generate the machine's threads (like
    its device: not the training host's) unless the command line gives them."""
    from lmx.evaluate import evaluate_checkpoint
    from lmx.generate import generate
    from lmx.runtime import device as device_mod

    heap_calls, thread_calls = [], []
    monkeypatch.setattr(device_mod, "keep_heap", heap_calls.append)
    monkeypatch.setattr(torch, "set_num_threads", thread_calls.append)
    assert compose_cfg([]).device.keep_heap is True
    short = ("trainer.epochs=1", "trainer.limit_train_batches=2", "device.keep_heap=false")
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, *short, "device.threads=1"))
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    evaluate_checkpoint(run_dir, "valid")  # the saved keep_heap=false, threads=1
    evaluate_checkpoint(run_dir, "valid", overrides=["device.keep_heap=true", "device.threads=2"])
    generate(run_dir, "the", max_new_tokens=2)  # torch's own threads: none set
    generate(run_dir, "the", max_new_tokens=2, overrides=["device.threads=2"])
    assert heap_calls == [False, False, True, False, False]
    assert thread_calls == [1, 1, 2, 2]


def test_keep_heap_false_after_true_stays_set_and_says_so(monkeypatch, caplog):
    from lmx.runtime import heap

    monkeypatch.setattr(heap, "_set_in_this_process", False)
    assert heap.keep_heap(False) is False  # nothing was set: malloc as it is
    monkeypatch.setattr(heap, "_set_in_this_process", True)  # as after a keep_heap=true run
    assert heap.keep_heap(False) is True
    assert "cannot be undone" in caplog.text
    monkeypatch.setattr(heap, "_set_in_this_process", False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # not a threshold
    assert heap._why_not() is None or platform.libc_ver()[0] != "glibc"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000")
    assert heap.keep_heap(True) is False  # the user's own malloc settings win
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert heap.keep_heap(True) is False


def test_the_bench_names_a_cpu_by_its_family_model_and_caches_not_only_its_brand(tmp_path):
    """ "AMD EPYC" alone covers generations that run lmx's shapes at very different speeds."""
    from lmx.bench.peak import _cache_sizes, describe_cpu

    epyc = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 99\n"
    )
    for level, kind, size in ((1, "Data", "32K"), (2, "Unified", "1024K"), (3, "Unified", "32768K"),
                              (1, "Instruction", "32K")):  # fmt: skip
        index = tmp_path / f"index{len(list(tmp_path.iterdir()))}"
        index.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (index / name).write_text(f"{value}\n")
    caches = _cache_sizes(tmp_path)
    assert caches == {2: "1 MiB", 3: "32 MiB"}  # the first processor's block only, too
    assert describe_cpu(epyc, caches) == (
        "AMD EPYC (family 25, model 17, stepping 1; L2 1 MiB/core, L3 32 MiB)"
    )
    assert describe_cpu("model name\t: Some CPU\n", {}) == "Some CPU"  # nothing else known
    assert describe_cpu("CPU part\t: 0xd0c\n", {}, "aarch64") == "aarch64"  # no model name
    assert describe_cpu("cpu family\t: 6\n", {3: "105 MiB"}) == "unknown CPU (family 6; L3 105 MiB)"
