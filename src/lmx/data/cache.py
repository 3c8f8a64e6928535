"""A corpus as three token-id streams, prepared in bounded memory and cached on disk.

The cache entry is keyed by everything that produced it (the source's content or hub name, the
tokenizer settings, the cache format), so a second run with the same settings maps three
small .bin files of compact ids and a tokenizer.json instead of reading and tokenizing the
text again. Local files are read directly (lmx.data.sources); the Hub goes through `datasets`.
"""

from __future__ import annotations

import hashlib
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
from lmx.data import wordlevel
from lmx.data.encode import encode_in_memory, ids_dtype, train_and_encode
from lmx.data.sources import (
    CORE_SPLITS,
    SPLITS,
    files_fingerprint,
    local_files,
    missing_split,
    starts_with_bom,
    text_batches,
)
from lmx.errors import DataError
from lmx.paths import default_cache_dir

log = logging.getLogger(__name__)

_CACHE_FORMAT = 2  # bump when the cached files change meaning (2: raw ids, uint16 or int32)


@dataclass
class Corpus:
    tokenizer: Tokenizer
    tokenizer_path: Path  # tokenizer.json in the cache entry
    # split -> 1-D stream of token ids in the cache's compact dtype (uint16 or int32), mapped
    # from disk; batching.get_batch and the evaluation widen each batch to int64. Every split
    # the source has: train and valid always, test where there is one.
    splits: dict[str, torch.Tensor]
    # split -> sha256 of its local file; None for a corpus from the Hub
    source_sha256: dict[str, str] | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def load_corpus(cfg: DataConfig, need: tuple[str, ...] = CORE_SPLITS) -> Corpus:
    """Token streams for train, valid and (where the source has one) test, from the cache or
    built and cached now; a DataError where a split of `need` is missing, before any work."""
    need = tuple(dict.fromkeys(CORE_SPLITS + tuple(need)))
    root = _cache_root(cfg)
    files = local_files(cfg.local_dir, need, tell=True) if cfg.local_dir is not None else {}
    digests = stamped_sha256(cfg, files) if files else None  # None: a corpus from the Hub
    # lmx has dropped a leading byte-order mark since this key: an entry an older lmx built
    # from such a file holds it as a token, and must not be reused
    marked = [split for split, path in files.items() if starts_with_bom(path)]
    fingerprint = {
        "format": _CACHE_FORMAT,
        "source": digests if digests is not None else f"hub:{cfg.hub_path}:{cfg.hub_config}",
        **({"bom_dropped": marked} if marked else {}),
        "tokenizer": OmegaConf.to_container(OmegaConf.structured(cfg.tokenizer), enum_to_str=True),
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    entry = root / f"{cfg.name}-{key}"

    loaded = _load_entry(entry, fingerprint) if (entry / "meta.json").is_file() else None
    if loaded is None:
        log.info("data: reading and tokenizing (first run with these settings)")
        start = time.perf_counter()
        _build_entry(text_batches(cfg, root, need), cfg, fingerprint, entry)
        log.info("data: tokenized in %.1f s, cached at %s", time.perf_counter() - start, entry)
        loaded = _load_entry(entry, fingerprint, rebuild_on_error=False)
    else:
        log.info("data: using cached tokens at %s", entry)
    tokenizer, splits = loaded
    for split in need:  # a Hub dataset's cached entry without the split
        if split not in splits:
            raise missing_split(split, f"{cfg.hub_path} ({cfg.hub_config}) has none")
    return Corpus(tokenizer, entry / "tokenizer.json", splits, digests)


def stamped_sha256(cfg: DataConfig, files: dict[str, Path]) -> dict[str, str]:
    """The files' sha256, through the stamps kept in the config's cache folder."""
    return files_fingerprint(files, _cache_root(cfg) / "file-hashes.json")


def _load_entry(entry: Path, fingerprint: dict, rebuild_on_error: bool = True):
    """(tokenizer, compact streams) of a cache entry, checked against meta.json. A damaged
    entry, or one that another lmx version wrote, is removed (None: rebuild it); a fresh one
    must load."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("fingerprint") != fingerprint:
            raise ValueError("it was written with other settings or by another lmx version")
        tokenizer = Tokenizer.from_file(str(entry / "tokenizer.json"))
        vocab = tokenizer.get_vocab_size()
        dtype = ids_dtype(vocab)
        splits = {}
        for s in (s for s in SPLITS if s in meta["tokens"]):
            path = entry / f"{s}.bin"
            if path.stat().st_size != meta["tokens"][s] * dtype.itemsize:
                raise ValueError(f"{s}.bin does not hold the {meta['tokens'][s]} {dtype} ids "
                                 "meta.json says")  # fmt: skip
            # Memory-mapped, copy-on-write: pages are read on first touch, nothing is copied.
            ids = np.memmap(path, dtype=dtype, mode="c", shape=(meta["tokens"][s],))
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
                raise ValueError(f"{s}.bin has ids outside the vocabulary of {vocab}")
            splits[s] = torch.from_numpy(ids)
        return tokenizer, splits
    except Exception as err:  # any damage: unreadable, truncated, wrong shape or ids
        if not rebuild_on_error:
            raise DataError(f"the token cache at {entry} cannot be read back: {err}") from err
        log.warning("data: the token cache at %s is unusable (%s); rebuilding it", entry, err)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def encode_split(cfg: DataConfig, tokenizer: Tokenizer, split: str) -> torch.Tensor:
    """One split's text encoded with a given tokenizer (a checkpoint's own), uncached."""
    batches = text_batches(cfg, _cache_root(cfg), (split,))[split]
    return torch.from_numpy(encode_in_memory(tokenizer, batches))


def _cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


# ---------------------------------------------------------------------------- build
def _build_entry(batches: dict, cfg: DataConfig, fingerprint: dict, entry: Path) -> None:
    """Every split encoded into `entry` with the vocabulary of the train split, in bounded
    memory: a word-level corpus in one pass over each split (lmx.data.wordlevel), a BPE one by
    training `tokenizers` and then encoding (lmx.data.encode)."""
    _remove_orphans(entry)
    tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if wordlevel.supported(cfg.tokenizer):
            tokenizer, counts = wordlevel.encode_corpus(cfg.tokenizer, batches, tmp)
        else:
            tokenizer, counts = train_and_encode(cfg.tokenizer, batches, tmp)
        tokenizer.save(str(tmp / "tokenizer.json"))
        vocab = tokenizer.get_vocab_size()
        meta = {"fingerprint": fingerprint, "vocab_size": vocab,
                "dtype": ids_dtype(vocab).name, "tokens": counts}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, entry)  # atomic: a reader sees a complete entry or none
    except OSError:  # another run finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_orphans(entry: Path) -> None:
    """Half-built copies of `entry` whose builder died (SIGKILL, out of memory): their pid,
    in the folder's name, is no longer a process. A live builder's copy is left alone."""
    for tmp in entry.parent.glob(f".{entry.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):  # not our name, or another user's live process
            pass
