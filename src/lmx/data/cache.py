"""A corpus as three token-id streams, through `datasets` and `tokenizers`, cached on disk.

The cache entry is keyed by everything that produced it (the source's content or hub name, the
tokenizer settings, the cache format), so a second run with the same settings loads two small
.npy files and a tokenizer.json instead of reading and tokenizing the text again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from lmx.config.schema import DataConfig
from lmx.data.sources import SPLITS, files_fingerprint, local_files, read_texts
from lmx.data.tokenizer import train_tokenizer
from lmx.errors import DataError
from lmx.paths import default_cache_dir

log = logging.getLogger(__name__)

_CACHE_FORMAT = 1  # bump when the cached files change meaning


@dataclass
class Corpus:
    tokenizer: Tokenizer
    tokenizer_path: Path  # tokenizer.json in the cache entry
    splits: dict[str, torch.Tensor]  # split -> 1-D int64 stream of token ids

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def load_corpus(cfg: DataConfig) -> Corpus:
    """Token streams for train/valid/test, from the cache or built and cached now."""
    source = local_files(cfg.local_dir) if cfg.local_dir is not None else None
    fingerprint = {
        "format": _CACHE_FORMAT,
        "source": files_fingerprint(source) if source else f"hub:{cfg.hub_path}:{cfg.hub_config}",
        "tokenizer": OmegaConf.to_container(OmegaConf.structured(cfg.tokenizer), enum_to_str=True),
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    root = _cache_root(cfg)
    entry = root / f"{cfg.name}-{key}"

    loaded = _load_entry(entry, fingerprint) if (entry / "meta.json").is_file() else None
    if loaded is None:
        log.info("data: reading and tokenizing (first run with these settings)")
        start = time.perf_counter()
        texts = read_texts(cfg, root)
        _build_entry(texts, cfg, fingerprint, entry)
        log.info("data: tokenized in %.1f s, cached at %s", time.perf_counter() - start, entry)
        loaded = _load_entry(entry, fingerprint, rebuild_on_error=False)
    else:
        log.info("data: using cached tokens at %s", entry)
    tokenizer, splits = loaded
    return Corpus(tokenizer, entry / "tokenizer.json", splits)


def _load_entry(entry: Path, fingerprint: dict, rebuild_on_error: bool = True):
    """(tokenizer, streams) of a cache entry, checked against meta.json. A damaged entry, or
    one that another lmx version wrote, is removed (None: rebuild it); a fresh one must load."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("fingerprint") != fingerprint:
            raise ValueError("it was written with other settings or by another lmx version")
        # Memory-mapped, copy-on-write: pages are read on first touch, nothing is copied.
        splits = {s: torch.from_numpy(np.load(entry / f"{s}.npy", mmap_mode="c")) for s in SPLITS}
        tokenizer = Tokenizer.from_file(str(entry / "tokenizer.json"))
        vocab = tokenizer.get_vocab_size()
        for s, stream in splits.items():
            if stream.dtype != torch.int64 or stream.dim() != 1:
                raise ValueError(f"{s}.npy is not a 1-D int64 array")
            if len(stream) != meta["tokens"][s]:
                raise ValueError(
                    f"{s}.npy has {len(stream)} tokens, meta.json says {meta['tokens'][s]}"
                )
            if len(stream) and (int(stream.min()) < 0 or int(stream.max()) >= vocab):
                raise ValueError(f"{s}.npy has ids outside the vocabulary of {vocab}")
        return tokenizer, splits
    except Exception as err:  # any damage: unreadable, truncated, wrong shape or ids
        if not rebuild_on_error:
            raise DataError(f"the token cache at {entry} cannot be read back: {err}") from err
        log.warning("data: the token cache at %s is unusable (%s); rebuilding it", entry, err)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def encode_split(cfg: DataConfig, tokenizer: Tokenizer, split: str) -> torch.Tensor:
    """One split's text encoded with a given tokenizer (a checkpoint's own), uncached."""
    texts = read_texts(cfg, _cache_root(cfg))
    return torch.from_numpy(_encode_split(tokenizer, texts[split]))


def _cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


# ---------------------------------------------------------------------------- build
def _encode_split(tokenizer: Tokenizer, lines: list[str]) -> np.ndarray:
    """All lines through the fast tokenizer in one batch (parallel, in Rust, without the
    character offsets we never use), concatenated into one int64 stream."""
    encodings = tokenizer.encode_batch_fast(lines)
    total = sum(len(e) for e in encodings)
    ids = itertools.chain.from_iterable(e.ids for e in encodings)
    return np.fromiter(ids, dtype=np.int64, count=total)


def _build_entry(
    texts: dict[str, list[str]], cfg: DataConfig, fingerprint: dict, entry: Path
) -> None:
    tokenizer = train_tokenizer(cfg.tokenizer, texts["train"])
    tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {}
    for split in SPLITS:
        stream = _encode_split(tokenizer, texts[split])
        if stream.size == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"the {split} split is empty: it has no tokens")
        np.save(tmp / f"{split}.npy", stream)
        counts[split] = int(stream.size)
    tokenizer.save(str(tmp / "tokenizer.json"))
    meta = {"fingerprint": fingerprint, "vocab_size": tokenizer.get_vocab_size(), "tokens": counts}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, entry)  # atomic: a reader sees a complete entry or none
    except OSError:  # another run finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
