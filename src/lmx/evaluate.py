"""`python -m lmx.evaluate ckpt=PATH [split=test] [KEY=VALUE ...]`: score a checkpoint on a split.

The model, its config and its tokenizer all come from the checkpoint, so the number printed is
the one the run recorded (same batches, same bptt, same eval limit) unless overridden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmx.cli import fail, parse_args, run
from lmx.errors import ConfigError

USAGE = """usage: python -m lmx.evaluate ckpt=PATH [split=test] [KEY=VALUE ...]
  ckpt       a checkpoint file, or a run dir (its checkpoints/best.pt)
  split      test (default), valid or train
  KEY=VALUE  overrides of the run's saved config, e.g. data.local_dir=PATH, device.type=cpu,
             trainer.limit_eval_batches=null"""


def evaluate_checkpoint(
    path: str | Path, split: str = "test", overrides: list[str] | None = None
) -> dict[str, Any]:
    from lmx.batching import batchify
    from lmx.corpus import SPLITS, encode_split
    from lmx.device import resolve_device
    from lmx.pretrained import load_trained
    from lmx.trainer import evaluate, ppl

    if split not in SPLITS:
        raise ConfigError(f"split={split}: expected one of {', '.join(SPLITS)}")
    trained = load_trained(path, overrides)  # on cpu; the saved config names the device
    cfg = trained.cfg
    device = resolve_device(cfg.device)
    trained.model.to(device)
    stream = encode_split(cfg.data, trained.tokenizer, split)
    bsz = cfg.data.batch_size if split == "train" else cfg.data.eval_batch_size
    source = batchify(stream, bsz, split, cfg.data.bptt)
    loss = evaluate(
        trained.model,
        source,
        cfg.data.bptt,
        device,
        cfg.device.precision,
        limit=cfg.trainer.limit_eval_batches,
        tokens_per_forward=cfg.trainer.eval_tokens_per_forward,
    )
    return {
        "split": split,
        "tokens": len(stream),
        "unit": trained.unit,
        "loss": loss,
        "ppl": ppl(loss),
    }


def main(argv: list[str]) -> None:
    args = parse_args(argv, USAGE)
    if "ckpt" not in args:
        fail(ConfigError(f"ckpt=PATH is required\n{USAGE}"))
    ckpt, split = args.pop("ckpt"), args.pop("split", "test")
    result = evaluate_checkpoint(ckpt, split, [f"{k}={v}" for k, v in args.items()])
    print(
        f"{result['split']}: loss {result['loss']:.6f} | ppl {result['ppl']:.4f} | "
        f"{result['tokens']:,} {result['unit']} tokens | {ckpt}"
    )


if __name__ == "__main__":
    run(main)
