"""A corpus's text to token ids on disk through `tokenizers`, in bounded memory, and the
progress meter every preparation pass shows.

The `tokenizers` route (BPE; a word-level corpus takes lmx.data.wordlevel's single pass):
read in batches of lines, train the vocabulary from them, then encode each split batch by
batch straight into its id file. Nothing holds a whole split: the reader yields a few MB of
lines at a time, the tokenizer trains from that iterator (its word counts are all it keeps),
and each batch's ids go to disk as soon as they are made, in the smallest dtype that holds the
vocabulary (uint16 below 65,536 types, else int32), as nanoGPT stores them. `tokenizers`
encodes a batch on every core.

Long work shows progress: a bar with tokens/s and the time left on a terminal, and a log line
every LOG_EVERY_S seconds otherwise.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lmx.config.schema import TokenizerConfig
from lmx.data.tokenizer import train_tokenizer
from lmx.errors import DataError

log = logging.getLogger("lmx.data")

LOG_EVERY_S = 10.0

# A source of one split's text: called afresh for each pass, it yields (lines, fraction done).
Batches = Callable[[], Iterator[tuple[list[str], float]]]


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest id dtype for a vocabulary: uint16 up to 65,536 types, else int32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


class Meter:
    """Progress of one pass: a tqdm bar on a terminal, else a log line every LOG_EVERY_S."""

    def __init__(self, what: str, unit: str = "tokens"):
        self.what, self.unit, self.start, self.logged = what, unit, time.perf_counter(), 0.0
        self.tokens = 0  # counted in `unit`
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            look = "{desc}: {percentage:3.0f}%|{bar}| {postfix} [{remaining} left]"
            self.bar = tqdm(total=100, desc=what, leave=False, bar_format=look)

    def update(self, fraction: float, tokens: int = 0) -> None:
        self.tokens += tokens
        elapsed = time.perf_counter() - self.start
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.n = round(100 * fraction, 1)
            u = self.unit
            self.bar.set_postfix_str(f"{self.tokens:,} {u}, {rate:,.0f} {u}/s", refresh=True)
        elif elapsed - self.logged >= LOG_EVERY_S:
            self.logged = elapsed
            left = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
            log.info("data: %s: %.0f%%, %s %s, %s %s/s, about %.0f s left", self.what,
                     100 * fraction, f"{self.tokens:,}", self.unit, f"{rate:,.0f}", self.unit,
                     left)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def require_tokens(split: str, count: int, batches: Batches | None = None) -> None:
    """A split that encodes to nothing cannot be batched: say so by name, and by its file where
    the batches come from one (their `source`)."""
    if count == 0:
        source = getattr(batches, "source", None)
        where = f" ({source}: blank lines or spaces only)" if source else ""
        hint = " (training without one: trainer.test=false)" if split == "test" else ""
        raise DataError(f"the {split} split is empty: it has no tokens{where}{hint}")


def lines_of(batches: Batches, what: str) -> Iterator[list[str]]:
    """The batches' lines, with progress (for the vocabulary's pass over the train split)."""
    meter = Meter(what, unit="lines")
    try:
        for lines, fraction in batches():
            meter.update(fraction, len(lines))
            yield lines
    finally:
        meter.close()


def encode_batch(tokenizer: Tokenizer, lines: list[str], dtype: np.dtype) -> np.ndarray:
    """The lines through the fast tokenizer in one call (parallel, in Rust, without the
    character offsets we never use), concatenated into one stream."""
    encodings = tokenizer.encode_batch_fast(lines)
    total = sum(len(e) for e in encodings)
    ids = itertools.chain.from_iterable(e.ids for e in encodings)
    return np.fromiter(ids, dtype=dtype, count=total)


def encode_to_file(tokenizer: Tokenizer, batches: Batches, path: Path, split: str) -> int:
    """Encode every batch into `path` (raw ids, ids_dtype of the vocabulary), appended as made.
    Returns the number of tokens written."""
    dtype = ids_dtype(tokenizer.get_vocab_size())
    meter, count = Meter(f"encoding {split}"), 0
    try:
        with path.open("wb") as f:
            for lines, fraction in batches():
                ids = encode_batch(tokenizer, lines, dtype)
                f.write(ids.tobytes())
                count += ids.size
                meter.update(fraction, ids.size)
    finally:
        meter.close()
    require_tokens(split, count, batches)
    return count


def train_and_encode(cfg: TokenizerConfig, batches: dict[str, Batches],
                     out: Path) -> tuple[Tokenizer, dict[str, int]]:  # fmt: skip
    """Train `tokenizers` on the train split, then encode every split into out/{split}.bin
    (as lmx.data.wordlevel.encode_corpus does in one pass for a word-level tokenizer). Valid
    and test are read once first, so bytes that are not UTF-8 there stop the build before
    the long passes over train."""
    for split in ("valid", "test"):
        for _ in batches[split]() if split in batches else ():
            pass
    tokenizer = train_tokenizer(cfg, lines_of(batches["train"], "vocabulary"))
    counts = {s: encode_to_file(tokenizer, batches[s], out / f"{s}.bin", s) for s in batches}
    return tokenizer, counts


def encode_in_memory(tokenizer: Tokenizer, batches: Batches) -> np.ndarray:
    """One split's ids in memory (a checkpoint's own tokenizer, uncached), as int64."""
    parts = [encode_batch(tokenizer, lines, np.dtype(np.int64)) for lines, _ in batches()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
