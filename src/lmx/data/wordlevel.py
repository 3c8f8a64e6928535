"""A word-level corpus counted and encoded in one pass, with Python's C string methods.

The `tokenizers` route reads the train split twice (train the vocabulary, then encode it) and
builds character alignments lmx never uses. Here each batch of lines is normalized with
str.lower and str.replace, split with str.split, and every word gets a provisional id in
first-seen order from a dict whose missing keys take its length. So one pass yields both the
train split's word counts and every split's provisional ids, written to disk as made. When the
vocabulary is known, one vectorized lookup per chunk turns provisional ids into final ones.

The result is the trained `tokenizers` tokenizer's, id for id (tests/test_wordlevel.py
compares them). Where Python and Rust could disagree, the batch takes tokenizers' own route:
- Rust lowercases character by character. Python lowercases a final Σ to ς (Σ is mapped to σ
  first), and knows another Unicode version; the characters whose lowercase differs are probed
  against the installed tokenizers at first use.
- str.split() also splits on the separators U+001C-U+001F; Rust's whitespace does not.
- Encoding splits special tokens (<unk>, <eos>) out of the raw text before normalizing, and
  training does not; the two differ only where a special touches other text.
The vocabulary is ranked as WordLevelTrainer ranks it: most frequent first, ties alphabetical.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from lmx.config.schema import Normalization, TokenizerConfig, TokenizerKind
from lmx.data.encode import Batches, Meter, ids_dtype, require_tokens
from lmx.data.tokenizer import (
    BASIC_ENGLISH_RULES,
    EOS,
    normalizer_of,
    special_tokens,
    word_tokenizer,
)

# lmx.data.sources.SPLITS with train last: bad bytes or no words in the small splits stop the
# build before the long pass over train, and they are remapped first (less disk at once)
SMALL_FIRST = ("valid", "test", "train")
REMAP_CHUNK = 1 << 24  # ids per chunk when provisional ids become final ones
PROBE_CHARS = 1 << 16  # code points per slice when probing tokenizers' lowercasing


def supported(cfg: TokenizerConfig) -> bool:
    """Word-level tokenizers take this route; BPE goes through `tokenizers`."""
    return cfg.kind == TokenizerKind.word


@cache
def _odd_spaces() -> str:
    """Characters str.split() splits on and tokenizers' WhitespaceSplit does not."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    split = pre_tokenizers.WhitespaceSplit().pre_tokenize_str
    return "".join(c for c in spaces if len(split(f"a{c}a")) == 1)


@cache
def _odd_lowercase() -> str:
    """Characters whose lowercase differs between str.lower() and tokenizers' Lowercase."""
    lowercase, odd = normalizers.Lowercase().normalize_str, []
    for start in range(0, sys.maxunicode + 1, PROBE_CHARS):  # in slices: little memory
        codes = range(start, min(start + PROBE_CHARS, sys.maxunicode + 1))
        chars = [chr(c) for c in codes if not 0xD800 <= c <= 0xDFFF and c != 10]
        rust = lowercase("\n".join(chars)).split("\n")
        odd += [c for c, low in zip(chars, rust, strict=True) if c.lower() != low and c != "Σ"]
    return "".join(odd)


class OnePassEncoder:
    """Provisional ids for every split, counts for the train split, then the vocabulary."""

    def __init__(self, cfg: TokenizerConfig):
        self.cfg, self.specials = cfg, special_tokens(cfg)
        self.lower = cfg.normalization == Normalization.basic_english
        # word -> provisional id. Reading a missing word ADDS it (its id: the words seen so
        # far), which is what makes a batch's lookup one C-level map; use .get to only look.
        self.ids: defaultdict[str, int] = defaultdict()
        self.ids.default_factory = self.ids.__len__
        self.counts = np.zeros(0, dtype=np.int64)  # by provisional id, train split only
        # A text holding one of these takes tokenizers' route (one `in` each: cheap).
        self._odd = _odd_spaces() + (_odd_lowercase() if self.lower else "")
        self._norm, self._split = normalizer_of(cfg), pre_tokenizers.WhitespaceSplit()
        self._specials = re.compile("(" + "|".join(re.escape(s) for s in self.specials) + ")")

    # ------------------------------------------------------------------ words
    def _normalized(self, text: str, exact: bool) -> str:
        if not self.lower:
            return text
        if exact:
            return self._norm.normalize_str(text)
        text = text.replace("Σ", "σ").lower()  # Rust lowercases a final Σ to σ too
        for old, new in BASIC_ENGLISH_RULES:
            text = text.replace(old, new)
        return text

    def _split_words(self, text: str, exact: bool) -> list[str]:
        return [w for w, _ in self._split.pre_tokenize_str(text)] if exact else text.split()

    def _words(self, text: str, exact: bool) -> list[str]:
        """The words the trainer counts in `text`: normalized, split on whitespace."""
        return self._split_words(self._normalized(text, exact), exact)

    def _encoded(self, text: str, exact: bool) -> list[str]:
        """The words encoding sees: special tokens split out of the raw text first."""
        out: list[str] = []
        for i, piece in enumerate(self._specials.split(text)):
            if i % 2:  # re.split puts the captured specials at odd places
                out.append(piece)
            elif piece:
                out += self._words(piece, exact)
        return out

    # ------------------------------------------------------------------ ids
    def _ids(self, words: list[str]) -> np.ndarray:
        return np.fromiter(map(self.ids.__getitem__, words), dtype=np.int32, count=len(words))

    def provisional_ids(self, lines: list[str], count: bool) -> np.ndarray:
        """A batch's provisional ids (int32); `count`: add its words to the vocabulary's.

        The whole batch is normalized and split at once. That is what encoding each line
        does unless a special token in the raw text does not stand apart as a word afterwards
        (tokenizers splits specials out before normalizing, and only when encoding): then
        line by line."""
        if not lines:
            return np.zeros(0, dtype=np.int32)
        eos = self.cfg.eos
        text = "\n".join(lines)
        if eos and text.count("\n") != len(lines) - 1:
            # A row holds a "\n" (Hub rows end in one). It only separates words, as a space
            # does, and no rule or special has one; but each line must stay one line here.
            text = "\n".join(line.replace("\n", " ") for line in lines)
        exact = any(c in text for c in self._odd)
        normalized = self._normalized(text, exact)
        if eos:  # normalizing keeps every "\n": one line of words each, then <eos>
            words = []
            for line in normalized.split("\n"):
                words += self._split_words(line, exact)
                words.append(EOS)
        else:
            words = self._split_words(normalized, exact)
        ids = self._ids(words)
        found = np.bincount(ids)
        if eos:
            found[self.ids[EOS]] -= len(lines)  # the <eos> after each line is not a word
        if not self._specials_apart(text, normalized, found):
            return self._by_line(lines, exact, count)
        if count:
            self._add(found)
        return ids

    def _specials_apart(self, text: str, normalized: str, found: np.ndarray) -> bool:
        """Whether every special token of the raw text is a word of its own once normalized.
        Normalizing never breaks <unk> or <eos>: they are lowercase already, and no rule's
        pattern can overlap them (single characters they lack, and "<br />"). It can make one
        (<UNK> lowercased), so the three counts agree only when each raw one is a word."""
        for s in self.specials:
            n = text.count(s)
            if n:
                p = self.ids.get(s)
                if normalized.count(s) != n or p is None or p >= found.size or found[p] != n:
                    return False
        return True

    def _by_line(self, lines: list[str], exact: bool, count: bool) -> np.ndarray:
        """Line by line, as tokenizers encodes: the words counted may differ from those
        encoded where a special touches other text."""
        encoded: list[str] = []
        counted: list[str] = []
        tail = [EOS] if self.cfg.eos else []
        for line in lines:
            encoded += self._encoded(line, exact) + tail
            counted += self._words(line, exact)
        ids = self._ids(encoded)
        if count:
            self._add(np.bincount(self._ids(counted)))
        return ids

    def _add(self, found: np.ndarray) -> None:
        if found.size > self.counts.size:
            grow = np.zeros(found.size - self.counts.size, dtype=np.int64)
            self.counts = np.concatenate([self.counts, grow])
        self.counts[: found.size] += found

    def vocabulary(self) -> list[str]:
        """The trained vocabulary, specials first, as WordLevelTrainer + word_tokenizer make
        it: the specials, then words by count (descending, ties alphabetical) at or above
        min_frequency, cut to vocab_size entries.

        The trainer lists the specials and then every counted word, a special found in the
        text included, takes the first vocab_size entries, and builds a map in which the
        special's later place wins; word_tokenizer then puts the specials first again. So a
        special found in the text fills two of the vocab_size places, as here."""
        floor = max(self.cfg.min_frequency, 1)  # a word never seen in train is not a type
        kept = np.flatnonzero(self.counts >= floor)  # only these become Python objects
        words = list(self.ids)
        seen = zip([words[i] for i in kept.tolist()], self.counts[kept].tolist(), strict=True)
        ranked = [w for w, _ in sorted(seen, key=lambda wn: (-wn[1], wn[0]))]
        taken = (self.specials + ranked)[: self.cfg.vocab_size]  # None: no cap
        return self.specials + [w for w in taken[len(self.specials) :] if w not in self.specials]

    def final_ids(self, vocab: list[str], dtype: np.dtype) -> np.ndarray:
        """provisional id -> final id; words outside the vocabulary become <unk> (id 0)."""
        table = np.zeros(len(self.ids), dtype=dtype)
        for i, w in enumerate(vocab):
            p = self.ids.get(w)  # .get: no new id for a word the text never had
            if p is not None:
                table[p] = i
        return table


def encode_corpus(cfg: TokenizerConfig, batches: dict[str, Batches],
                  out: Path) -> tuple[Tokenizer, dict[str, int]]:  # fmt: skip
    """Every split of a word-level corpus into out/{split}.bin (final ids, ids_dtype of the
    vocabulary) and the trained tokenizer, reading each split once. Valid and test go first:
    they are small, so bad bytes or no words there stop the build before the long pass over
    train. While it runs, the provisional ids (int32) take about twice the disk of the final
    ones; they are removed as each split is remapped (the caller removes `out` on an error)."""
    enc = OnePassEncoder(cfg)
    counts: dict[str, int] = {}
    for split in (s for s in SMALL_FIRST if s in batches):  # a corpus may have no test split
        meter, counts[split] = Meter(f"encoding {split}"), 0
        try:
            with (out / f"{split}.prov").open("wb") as f:
                for lines, fraction in batches[split]():
                    ids = enc.provisional_ids(lines, count=split == "train")
                    ids.tofile(f)
                    counts[split] += ids.size
                    meter.update(fraction, ids.size)
        finally:
            meter.close()
        require_tokens(split, counts[split], batches[split])
    vocab = enc.vocabulary()
    dtype = ids_dtype(len(vocab))
    table = enc.final_ids(vocab, dtype)
    meter, total = Meter("final ids"), sum(counts.values())
    try:
        for split in counts:
            prov = out / f"{split}.prov"
            with prov.open("rb") as src, (out / f"{split}.bin").open("wb") as dst:
                while (chunk := np.fromfile(src, dtype=np.int32, count=REMAP_CHUNK)).size:
                    table[chunk].tofile(dst)
                    meter.update((meter.tokens + chunk.size) / total, chunk.size)
            prov.unlink()
    finally:
        meter.close()
    return word_tokenizer(cfg, vocab), counts
