"""Where a training step's time goes on this CPU, and two alternatives to the fused loss's
choices, measured against them.

    python benchmarks/step_parts.py [--experiment seed_fast] [--threads 2]

It prints the CPU model and its matmul ISA flags, then:
1. ms per step of lmx's own train_step (lmx.bench.step_loop: the experiment's model,
   optimizer and clip, no per-step check, device.keep_heap as configured, one batch of
   random token ids with the WikiText-2 vocabulary), best of three 10-step runs; then the ops
   that take the most self CPU time over 10 steps (torch.profiler), in ms per step;
2. the decoder's three bf16 matmuls (forward logits, grad of the hidden, grad of the
   weight) with the hidden size D padded with zeros from 200 to 208, 224 and 256 (the
   forward's inner size; an output size of the two gradient products): zeros change no
   product, so the padding would be exact if the wider shape suited the matmul kernels;
3. one 64-row chunk of the fused loss's per-chunk work four ways, timed call by call in
   turn (median and best, µs):
   - `lmx`: the fused loss's own chunk (fused_loss._chunk_grad: the chunk cast to fp32,
     the bias added, softmax, the losses, one_hot taken off, the bias grad, the scale, the
     cast back into the bf16 chunk);
   - `bias_bf16`: the bias added to the bf16 chunk, the softmax from bf16 into fp32, the
     scale left for later (it could be applied to the [N, D] matmul operands);
   - `softmax_bf16`: as `bias_bf16` with the softmax written in bf16;
   - `softmax_bf16_apart`: as `softmax_bf16`, written into a second bf16 buffer (through
     torch's private `torch._softmax(..., out=)`), so nothing is copied back into the chunk.
   All four add into one bias-gradient buffer that is never reset: only their time counts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmx.bench.peak import cpu_model, isa_flags
from lmx.models import fused_loss

N, D, V, ROWS = 700, 200, 28782, 64  # the tutorial's batch of 20 x 35 tokens, its decoder


def step_figures(experiment: str, threads: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from lmx.bench.step_loop import step_loop

    steps = step_loop([f"experiment={experiment}", f"device.threads={threads}"], V)

    def ms_per_step(n: int) -> float:
        return steps(n) * 1000 / n

    ms_per_step(5)
    print(f"step: {min(ms_per_step(10) for _ in range(3)):.1f} ms ({experiment}, best of 3 x 10)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ms_per_step(10)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    for e in ops:
        share = e.self_cpu_time_total / total
        print(f"  {e.key:28s} {e.self_cpu_time_total / 1e4:6.1f} ms/step  {share:6.1%}"
              f"  {e.count / 10:5.1f} calls/step")  # fmt: skip


def median_ms(call, repeats: int = 12) -> float:
    call(), call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def decoder_matmuls_ms(h, w, g, out) -> list[float]:
    """Forward logits, grad of the hidden, grad of the weight: median ms of each."""
    return [median_ms(lambda: torch.mm(h, w.t(), out=out)), median_ms(lambda: g @ w),
            median_ms(lambda: g.t() @ h)]  # fmt: skip


def matmul_figures() -> None:
    g = torch.randn(N, V).bfloat16()
    out = torch.empty(N, V, dtype=torch.bfloat16)
    for d in (200, 208, 224, 256):
        h = torch.zeros(N, d, dtype=torch.bfloat16)
        w = torch.zeros(V, d, dtype=torch.bfloat16)
        h[:, :D], w[:, :D] = torch.randn(N, D), torch.randn(V, D)
        parts = decoder_matmuls_ms(h, w, g, out)
        gflops = [2 * N * D * V / ms / 1e6 for ms in parts]  # useful work: D, not d
        print(f"  D={d}: forward {parts[0]:5.1f} ms ({gflops[0]:4.0f} GFLOP/s), grad hidden "
              f"{parts[1]:5.1f} ({gflops[1]:4.0f}), grad weight {parts[2]:5.1f} "
              f"({gflops[2]:4.0f}); sum {sum(parts):5.1f} ms")  # fmt: skip


def chunk_ways(targets: torch.Tensor) -> dict:
    bias32 = torch.randn(V) * 0.1
    bias16, apart = bias32.bfloat16(), torch.empty(ROWS, V, dtype=torch.bfloat16)
    grad_bias = torch.zeros(V)

    def lmx(chunk):
        return fused_loss._chunk_grad(chunk, bias32, targets, 1.0 / N, grad_bias)

    def in_bf16(chunk, dtype=None, out=None):
        chunk.add_(bias16)
        if out is not None:
            probs = torch._softmax(chunk, 1, False, out=out)
        else:
            probs = torch.softmax(chunk, 1, dtype=dtype)
        losses, rows = fused_loss._token_losses(chunk, probs, targets)
        probs[rows, targets] -= 1.0
        grad_bias.add_(probs.sum(0, dtype=torch.float32))
        if out is None:
            chunk.copy_(probs)
        return losses

    return {
        "lmx": lmx,
        "bias_bf16": lambda chunk: in_bf16(chunk, torch.float32),
        "softmax_bf16": in_bf16,
        "softmax_bf16_apart": lambda chunk: in_bf16(chunk, out=apart),
    }


def chunk_figures(calls: int = 400) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(ROWS, V) * 3).bfloat16()
    targets = torch.randint(0, V, (ROWS,))
    ways = chunk_ways(targets)
    chunks = {name: logits.clone() for name in ways}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(calls):  # in turn, so a slow spell of the host falls on every way
        for name, way in ways.items():
            chunks[name].copy_(logits)
            start = time.perf_counter()
            way(chunks[name])
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"  {name:20s} median {statistics.median(t) * 1e6:6.0f} µs, best {min(t) * 1e6:6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="seed_fast")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}; flags {' '.join(isa_flags())}; {args.threads} threads; "
          f"torch {torch.__version__}")  # fmt: skip
    step_figures(args.experiment, args.threads)
    print("the decoder's bf16 matmuls, [700 x D] hidden, [28,782 x D] weight:")
    matmul_figures()
    print(f"one [{ROWS} x {V}] chunk of the fused loss, four ways:")
    chunk_figures()


if __name__ == "__main__":
    main()
