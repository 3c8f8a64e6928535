"""`lmx eval ckpt=PATH [split=test] [KEY=VALUE ...]` (or `python -m lmx.evaluate`): score a
checkpoint on a split.

The model, its config and its tokenizer all come from the checkpoint, so the number printed is
the one the run recorded (same batches, same bptt, same eval limit) unless overridden.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lmx.cli import parse_args, run, split_options
from lmx.errors import ConfigError
from lmx.stats import shown

OPTIONS = {
    "ckpt": "a checkpoint file, or a run dir (its checkpoints/best.pt)",
    "split": "test (default), valid or train",
}
USAGE = (
    "usage: lmx eval ckpt=PATH [split=test] [KEY=VALUE ...]\n"
    + "".join(f"  {k:<11}{v}\n" for k, v in OPTIONS.items())
    + (
        "  KEY=VALUE  dotted overrides of the run's saved config, e.g. data.local_dir=PATH,\n"
        "             device.type=cpu, trainer.limit_eval_batches=null, eval.stride=64"
    )
)


def evaluate_checkpoint(
    path: str | Path, split: str = "test", overrides: list[str] | None = None
) -> dict[str, Any]:
    from lmx.data.sources import SPLITS
    from lmx.data.streams import streams
    from lmx.models.pretrained import load_trained
    from lmx.perplexity import evaluate
    from lmx.runtime.device import apply_settings, resolve_device

    if split not in SPLITS:
        raise ConfigError(f"split={split}: expected one of {', '.join(SPLITS)}")
    for o in overrides or []:
        if o.lstrip("+~").split("=")[0] == "device.compile":
            raise ConfigError(f"{o}: lmx eval scores uncompiled; this setting would have no effect")
    trained = load_trained(path, overrides)  # on cpu; the saved config names the device
    cfg = trained.cfg
    device = resolve_device(cfg.device, training=False)
    apply_settings(device, cfg.device)
    trained.model.to(device)
    data = streams(cfg.data, (split,), device, tokenizer=trained.tokenizer)
    changed = _changed_since_training(trained.checkpoint.data_sha256, cfg.data, split)
    score = evaluate(
        trained.model,
        data.rows[split],
        cfg.data.bptt,
        device,
        cfg.device.precision,
        limit=cfg.trainer.limit_eval_batches,
        tokens_per_forward=cfg.trainer.eval_tokens_per_forward,
        context=cfg.eval.context,
        stride=cfg.eval.stride,
    )
    return {
        "split": split,
        "tokens": score.tokens,  # scored
        "tokens_total": score.total,  # a pass over the whole split
        "partial": score.partial,
        "mode": score.mode,
        "limit_eval_batches": cfg.trainer.limit_eval_batches,
        "unit": trained.unit,
        "loss": score.loss,
        "ppl": score.ppl,
        "changed_file": changed,  # the split's file, where its text changed since training
        "unk_share": data.unk_share.get(split),  # None: a tokenizer without <unk>
        "precision": cfg.device.precision.value,  # the run's, or an override's
    }


def _changed_since_training(trained_on: dict[str, str] | None, data, split: str) -> str | None:
    """The split's local file where its sha256 is not the one the run recorded; None where it
    is, or where nothing was recorded (the Hub, a run older than the record)."""
    from lmx.data.cache import stamped_sha256
    from lmx.data.sources import local_files

    if not trained_on or trained_on.get(split) is None or data.local_dir is None:
        return None
    path = local_files(data.local_dir, (split,))[split]
    return None if stamped_sha256(data, {split: path})[split] == trained_on[split] else str(path)


def describe(result: dict[str, Any]) -> str:
    """'N word-level tokens', or for a partial pass how much of the split and why."""
    if not result["partial"]:
        return f"{result['tokens']:,} {result['unit']} tokens, {result['mode']}"
    return (
        f"{result['tokens']:,} of {result['tokens_total']:,} {result['unit']} tokens, "
        f"{result['mode']} (partial: "
        f"trainer.limit_eval_batches={result['limit_eval_batches']}; "
        "trainer.limit_eval_batches=null scores the whole split)"
    )


def main(argv: list[str]) -> None:
    options, overrides = split_options(parse_args(argv, USAGE), OPTIONS, "eval", USAGE)
    if "ckpt" not in options:
        raise ConfigError(f"ckpt=PATH is required\n{USAGE}")
    ckpt, split = options["ckpt"], options.get("split", "test")
    result = evaluate_checkpoint(ckpt, split, overrides)
    if result["changed_file"]:
        print(f"lmx eval: {result['changed_file']} is not the text the run was scored on (its "
              "content changed since training): the figure is for the file as it is now",
              file=sys.stderr)  # fmt: skip
    from lmx.data.streams import UNK_WARN

    if (result["unk_share"] or 0.0) > UNK_WARN:
        print(f"lmx eval: {100 * result['unk_share']:.1f}% of the {split} split's tokens are "
              "<unk> under the run's vocabulary: its perplexity is that of a much easier task "
              "(one guess covers every word the vocabulary lacks)", file=sys.stderr)  # fmt: skip
    precision = f" | {result['precision']}" if result["precision"] != "fp32" else ""
    print(
        f"{result['split']}: loss {result['loss']:.6f} | ppl {shown(result['ppl'], '.4f')} | "
        f"{describe(result)}{precision} | {ckpt}"
    )


if __name__ == "__main__":
    run(main)
