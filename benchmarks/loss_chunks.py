"""The fused loss's row-chunk size on this CPU: forward + backward time of the tutorial's
decoder ([700 x 200] hidden, 28,782 types) for each chunk size, fp32 and bf16.

    python benchmarks/loss_chunks.py [--rows 32,64,128,256,512,1024] [--threads 2] [--repeats 30]

lmx.models.fused_loss picks its CPU chunk by rule (fused_loss.chunk_rows); this is the
measurement that rule comes from. It prints the CPU model and its matmul ISA flags, then the
milliseconds per call (the median of `--repeats`, after warm-up) and each size against 64.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmx.bench.peak import cpu_model, isa_flags
from lmx.models import fused_loss


def time_call(rows: int, bf16: bool, repeats: int, n=700, d=200, v=28782) -> float:
    torch.manual_seed(0)
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.05).requires_grad_()
    b = torch.zeros(v, requires_grad=True)
    t = torch.randint(0, v, (n,))
    fused_loss.CHUNK_ROWS = rows
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = fused_loss.linear_cross_entropy(h, w, b, t)
        loss.backward()
        if i >= 5:
            times.append(time.perf_counter() - start)
        h.grad = w.grad = b.grad = None
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="32,64,128,256,512,1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    print(f"{cpu_model()}; flags {' '.join(isa_flags())}; {args.threads} threads; "
          f"torch {torch.__version__}")  # fmt: skip
    for bf16 in (False, True):
        figures = {r: time_call(r, bf16, args.repeats) for r in rows}
        base = figures.get(64)
        for r, ms in figures.items():
            ratio = f"{base / ms:5.2f}x vs 64" if base else ""
            print(f"{'bf16' if bf16 else 'fp32'} chunk {r:5d}: {ms:7.1f} ms  {ratio}")


if __name__ == "__main__":
    main()
