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
    """The CPU's model name and what tells same-named parts apart: "AMD EPYC" covers several
    generations whose bf16 matmuls at lmx's shapes differ by far more than noise, so the
    family, model and stepping numbers and the L2 and L3 sizes are named with it."""
    import platform

    unnamed = platform.processor() or "unknown CPU"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return unnamed
    return describe_cpu(cpuinfo, _cache_sizes(Path("/sys/devices/system/cpu/cpu0/cache")), unnamed)


def describe_cpu(cpuinfo: str, caches: dict[int, str], unnamed: str = "unknown CPU") -> str:
    """The CPU as `<model name> (family F, model M, stepping S; L2 <size>/core, L3 <size>)`,
    from the first processor's block of /proc/cpuinfo and {level: size} of cpu0's caches; a
    part missing from either is left out; `unnamed` where cpuinfo has no model name (ARM)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    ident = ", ".join(f"{name} {fields[key]}" for key, name in
                      (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
                      if key in fields)  # fmt: skip
    cache = ", ".join(f"L{level} {caches[level]}{'/core' if level == 2 else ''}"
                      for level in (2, 3) if level in caches)  # fmt: skip
    detail = "; ".join(part for part in (ident, cache) if part)
    name = fields.get("model name", unnamed)
    return f"{name} ({detail})" if detail else name


def _cache_sizes(cache_dir: Path) -> dict[int, str]:
    """{level: size} of the unified caches in cache_dir (sysfs: index*/level, type, size)."""
    sizes = {}
    for index in sorted(cache_dir.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Unified":
                size = (index / "size").read_text().strip()
                kib = int(size.rstrip("K")) if size.endswith("K") else None
                sizes[int((index / "level").read_text())] = (
                    f"{kib // 1024} MiB" if kib and kib % 1024 == 0 else size
                )
        except (OSError, ValueError):
            continue
    return sizes


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
