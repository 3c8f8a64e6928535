"""A run's token rows: the one way every command turns a data config into batched streams.

Training, `lmx.evaluate` and the benchmarks all call `streams`, so they score the same
tokens in the same rows. The train split is cut into `data.batch_size` rows, valid and test
into `data.eval_batch_size` rows (the tutorial's batchify). Under torchrun each rank keeps its
own share of the rows. The rows are small (a few MB for WikiText-2), so they move to the
device once, in the token cache's compact dtype (uint16 or int32; int32 for uint16 on a
GPU), and a step widens only its own batch to int64: an epoch never holds the split as int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lmx.config.schema import DataConfig
from lmx.data.batching import batchify
from lmx.data.cache import encode_split, load_corpus
from lmx.data.sources import SPLITS
from lmx.data.tokenizer import UNK
from lmx.errors import DataError
from lmx.runtime.distributed import World


@dataclass
class Streams:
    rows: dict[str, torch.Tensor]  # split -> [rows, length] token ids, on the device
    tokens: dict[str, int]  # split -> tokens in the whole split (before batchify)
    tokenizer: Tokenizer
    tokenizer_path: Path | None  # the cached tokenizer.json; None for a given tokenizer
    unk_share: dict[str, float]  # split -> share of its tokens that are <unk> ({}: no <unk>)
    source_sha256: dict[str, str] | None = None  # the local files' (lmx.data.cache.Corpus)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def streams(
    cfg: DataConfig,
    splits: tuple[str, ...] = SPLITS,
    device: torch.device | str = "cpu",
    world: World | None = None,
    tokenizer: Tokenizer | None = None,
) -> Streams:
    """The rows of `splits`. Without a `tokenizer` the tokens come from the cache (built now
    if needed, rank 0 first under torchrun); with one (a checkpoint's own) the text is encoded
    with it, uncached."""
    world = world or World()
    digests = None
    if tokenizer is not None:
        ids = {s: encode_split(cfg, tokenizer, s) for s in splits}
        tokenizer_path = None
    else:
        if not world.is_main:
            world.barrier()  # rank 0 builds the token cache first; the others then read it
        corpus = load_corpus(cfg, splits)
        if world.is_main:
            world.barrier()
        ids = {s: corpus.splits[s] for s in splits}
        tokenizer, tokenizer_path = corpus.tokenizer, corpus.tokenizer_path
        digests = corpus.source_sha256
    if tokenizer.get_vocab_size() < 2:
        raise DataError(
            f"the vocabulary has {tokenizer.get_vocab_size()} type: every token is the same, and "
            "any model's perplexity is 1; lower data.tokenizer.min_frequency or raise "
            "data.tokenizer.vocab_size"
        )
    rows = {}
    for split, stream in ids.items():
        if split == "train":
            rows[split] = world.train_rows(batchify(stream, cfg.batch_size, split, cfg.bptt))
        else:
            rows[split] = world.eval_rows(batchify(stream, cfg.eval_batch_size, split, cfg.bptt))
    return Streams(
        rows={s: _to_device(r, torch.device(device)) for s, r in rows.items()},
        tokens={s: len(stream) for s, stream in ids.items()},
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        unk_share=unk_shares(tokenizer, ids),
        source_sha256=digests,
    )


UNK_WARN = 0.1  # a share of <unk> tokens above which a run warns


def unk_note(shares: dict[str, float]) -> str:
    """' | <unk> 2.6% of train, ...' ('' for a tokenizer without <unk>)."""
    if not shares:
        return ""
    return " | <unk> " + ", ".join(f"{100 * v:.1f}% of {s}" for s, v in shares.items())


def unk_shares(tokenizer: Tokenizer, ids: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each split's share of <unk> tokens: a perplexity over many is an easy one, since the
    model only has to predict "some rare word". {} for a tokenizer without <unk> (bytes)."""
    unk = tokenizer.token_to_id(UNK)
    if unk is None:
        return {}
    return {s: float((x == unk).sum()) / max(len(x), 1) for s, x in ids.items()}


def _to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The rows on the device in their compact dtype. torch's CUDA kernels for uint16 are few
    (a cast may be missing), so on a GPU uint16 rows become int32, still half of int64."""
    if device.type != "cpu" and rows.dtype == torch.uint16:
        rows = rows.to(torch.int32)
    return rows.to(device)
