"""Evaluation speed of a config: tokens/s of one pass over the validation split.

    python benchmarks/eval_speed.py --data ../shared/data/wikitext-2 [--repeats 3] [OVERRIDE ...]

Builds the config's model (seed 0, untrained: the work per token does not depend on the
weights), then times lmx's evaluation over the whole validation split `--repeats` times
after one warm-up window and prints the median. It runs against lmx as it was before the
package layout change too (PYTHONPATH=OLD_CHECKOUT/src), so one machine can compare the two:

    PYTHONPATH=/tmp/old/src python benchmarks/eval_speed.py --data ... --label before
    python benchmarks/eval_speed.py --data ... --label after
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra.utils import instantiate


def _lmx():
    """(compose, evaluate, streams) of the lmx on the path, before or after the layout change."""
    try:
        from lmx.config.compose import compose
        from lmx.data.streams import streams
        from lmx.perplexity import evaluate

        def rows(cfg):
            data = streams(cfg.data, ("valid",))
            return data.rows["valid"], data.vocab_size

        return compose, lambda *a, **k: evaluate(*a, **k).loss, rows
    except ImportError:  # the layout before lmx's subpackages
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        from lmx.batching import batchify
        from lmx.config import register_configs
        from lmx.corpus import load_corpus
        from lmx.paths import config_dir
        from lmx.trainer import evaluate

        def compose(overrides):
            register_configs()
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                return hydra_compose(config_name="train", overrides=overrides)

        def rows(cfg):
            corpus = load_corpus(cfg.data)
            valid = batchify(
                corpus.splits["valid"], cfg.data.eval_batch_size, "valid", cfg.data.bptt
            )
            return valid, corpus.vocab_size

        return compose, evaluate, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    compose, evaluate, rows = _lmx()
    cfg = compose([f"data.local_dir={args.data}", *args.overrides])
    valid, vocab = rows(cfg)
    torch.manual_seed(0)
    model = instantiate(cfg.model, ntoken=vocab)
    device = torch.device("cpu")
    kwargs = dict(
        precision=cfg.device.precision, tokens_per_forward=cfg.trainer.eval_tokens_per_forward
    )
    evaluate(model, valid, cfg.data.bptt, device, limit=2, **kwargs)  # warm-up
    tokens = valid.size(0) * (valid.size(1) - 1)
    rates, loss = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        loss = evaluate(model, valid, cfg.data.bptt, device, **kwargs)
        rates.append(tokens / (time.perf_counter() - start))
    print(
        f"{args.label or 'eval'}: {statistics.median(rates):,.0f} tokens/s (median of "
        f"{args.repeats}: {', '.join(f'{r:,.0f}' for r in rates)}) | {tokens:,} tokens | "
        f"loss {loss:.6f} | threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
