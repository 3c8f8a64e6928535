"""The GPU path, measured: training tokens/s, time per tutorial epoch, MFU and peak memory.

    python benchmarks/gpu_check.py --data ../shared/data/wikitext-2 [--steps 400]
        [--warmup 50] [--only NAME,...] [--out PATH]

Each setting runs lmx's own trainer (`lmx.train.train`) for `--steps` steps in a fresh
process on the GPU (so its peak memory is its own), then scores the whole validation split:
- `tutorial`: the tutorial's config (`python -m lmx.train` with no options), fp32 (TF32);
- `tutorial_read_each_step`: the same with trainer.on_nonfinite=skip, whose step reads its
  loss and norm before the update: the cost of one host sync per step;
- `seed_fast`: bf16 and a sparse embedding gradient; with model.fused_loss=true, which on a
  GPU takes the plain expression below 1 GiB of fp32 logits (fused_loss.PLAIN_LOGITS_BYTES;
  the measurement that chose it ran seed_fast when it took the chunked loss);
- `seed_fast_plain_loss`: the same with model.fused_loss=false (logits, then cross-entropy);
- `seed_fast_compiled`: device.compile=true (the loss as inductor fuses it, dense embedding);
- `wt2_strong_cpu`: the 4-layer, 256-wide preset; and `wt2_strong_cpu_compiled`.

Reports for each: train tokens/s (steps after `--warmup` of each process), the time one
epoch of WikiText-2's training stream would take at that rate, model-FLOPs utilization
against the GPU's measured dense matmul peak in the setting's precision (lmx.bench.peak), the
allocator's peak memory, and eval tokens/s. On a machine without CUDA it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "tutorial": [],
    "tutorial_read_each_step": ["trainer.on_nonfinite=skip"],
    "seed_fast": ["experiment=seed_fast"],
    "seed_fast_plain_loss": ["experiment=seed_fast", "model.fused_loss=false"],
    "seed_fast_compiled": ["experiment=seed_fast", "device.compile=true",
                            "model.sparse_embedding=false"],
    "wt2_strong_cpu": ["experiment=wt2_strong_cpu"],
    "wt2_strong_cpu_compiled": ["experiment=wt2_strong_cpu", "device.compile=true"],
}  # fmt: skip
TAG = "GPU_CHECK_RESULT "


def measure(name: str, data: str, steps: int, warmup: int) -> dict:
    """One setting, in this process: train `steps` steps, then score the validation split."""
    import torch

    from lmx.bench.iterates import train_valid_rows
    from lmx.bench.workers import flops_per_token, lmx_eval
    from lmx.config.compose import compose
    from lmx.models.pretrained import load_trained
    from lmx.runtime.device import resolve_device
    from lmx.train import train

    cfg = compose([*SETTINGS[name], f"data.local_dir={data}", "device=cuda", "trainer.epochs=1",
                   f"trainer.limit_train_batches={steps}", "trainer.limit_eval_batches=1",
                   f"trainer.throughput_warmup_steps={warmup}", "trainer.test=false",
                   "trainer.checkpoint_every_steps=null", "trainer.tensorboard=false",
                   "trainer.progress=false"])  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lmx-gpu-") as tmp:
        metrics = train(cfg, Path(tmp) / "run")
        model = load_trained(Path(tmp) / "run" / "checkpoints" / "best.pt", []).model
    device = resolve_device(cfg.device)
    _, valid = train_valid_rows(cfg, device)
    val_loss, eval_tps = lmx_eval(cfg, model.to(device), valid, device)  # as the bench times it
    m = cfg.model
    return {
        "precision": cfg.device.precision.value,
        "train_tokens_per_s": metrics["train_tokens_per_s"],
        "eval_tokens_per_s": eval_tps,
        "val_ppl_after_steps": math.exp(val_loss),
        "flops_per_token": flops_per_token(
            m.d_model, m.d_hid, m.nlayers, metrics["vocab_size"], cfg.data.bptt
        ),  # fmt: skip
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="WikiText-2 folder (data.local_dir)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--only", default=",".join(SETTINGS))
    parser.add_argument("--out", default="outputs/gpu_check.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a worker process: one setting
    args = parser.parse_args()
    if args.one:
        print(TAG + json.dumps(measure(args.one, args.data, args.steps, args.warmup)))
        return
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured")
        return
    unknown = [n for n in args.only.split(",") if n not in SETTINGS]
    if unknown:
        sys.exit(f"--only: unknown {', '.join(unknown)}; settings: {', '.join(SETTINGS)}")
    from lmx.bench.peak import peaks

    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32 (device.tf32=true)
    peak = peaks("cuda", n=8192)
    epoch = _epoch_tokens(args.data)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "peak_gflops": peak, "epoch_tokens": epoch, "settings": {}}  # fmt: skip
    print(
        f"{results['gpu']}, torch {torch.__version__}: dense matmul peak "
        f"{peak['fp32'] / 1000:.0f} TFLOP/s fp32 (TF32), {peak['bf16'] / 1000:.0f} bf16"
    )
    print(f"{'setting':28} {'train tok/s':>12} {'epoch s':>8} {'MFU':>6} {'peak MB':>8} "
          f"{'eval tok/s':>11}")  # fmt: skip
    for name in args.only.split(","):
        cmd = [sys.executable, __file__, "--data", args.data, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--one", name]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith(TAG)]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"{name:28} failed: {' | '.join(tail)}")
            results["settings"][name] = {"error": "\n".join(tail)}
            continue
        r = json.loads(lines[-1][len(TAG) :])
        tps = r["train_tokens_per_s"]
        precision = "bf16" if r["precision"] == "bf16" else "fp32"
        r["mfu"] = tps * r["flops_per_token"] / (peak[precision] * 1e9)
        r["epoch_seconds"] = epoch / tps
        results["settings"][name] = r
        print(
            f"{name:28} {tps:12,.0f} {r['epoch_seconds']:8.1f} {r['mfu']:6.1%} "
            f"{r['peak_cuda_mb']:8,.0f} {r['eval_tokens_per_s']:11,.0f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")


def _epoch_tokens(data: str) -> int:
    """Tokens in one epoch of the training stream (the tutorial's batchify drops the rest)."""
    from lmx.config.compose import compose
    from lmx.data.cache import load_corpus

    cfg = compose([f"data.local_dir={data}"])
    n = int(load_corpus(cfg.data).splits["train"].numel())
    return n - n % cfg.data.batch_size


if __name__ == "__main__":
    main()
