"""The machine's ceiling: the fp32 and bf16 matmul rate it reaches on a large square product,
and the CPU flags that decide which kernels torch can use (AVX-512, its bf16 instructions,
AMX). A setting's achieved GFLOP/s over the peak of its precision is its model-FLOPs
utilization (MFU), as nanoGPT and torchtitan report it."""

from __future__ import annotations

import time
from pathlib import Path

# The flags that matter for torch's matmuls on x86, in the order of what they add.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def isa_flags() -> list[str]:
    """Which of ISA_FLAGS this CPU reports (/proc/cpuinfo); [] where that is unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def matmul_gflops(dtype_name: str, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of an [n x n] @ [n x n] product in `dtype_name` (float32, bfloat16): the best
    of `repeats` after one warm-up, so the figure is what the hardware can give, not a mean
    over interruptions."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first is the warm-up
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def peaks(device: str = "cpu", n: int = 2048) -> dict[str, float]:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s} of this machine's [n x n] matmul. On a GPU the fp32
    peak is TF32's, as lmx's fp32 trains there (device.tf32, on by default): against strict
    fp32's its MFU could pass 100%."""
    import torch

    before = torch.get_float32_matmul_precision()
    try:
        if device == "cuda":
            torch.set_float32_matmul_precision("high")
        fp32 = matmul_gflops("float32", n, device=device)
    finally:
        torch.set_float32_matmul_precision(before)
    return {"fp32": fp32, "bf16": matmul_gflops("bfloat16", n, device=device)}
