"""WikiText-2 as three token-id streams, through `datasets` and `tokenizers`, cached on disk.

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
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from lmx.config import DataConfig
from lmx.errors import DataError
from lmx.paths import default_cache_dir
from lmx.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_HUB_SPLIT = {"train": "train", "valid": "validation", "test": "test"}
# pytorch/examples names first, then the names inside the original wikitext-2 archive.
_LOCAL_NAMES = {s: (f"{s}.txt", f"wiki.{s}.tokens") for s in SPLITS}
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
    source = _local_files(cfg.local_dir) if cfg.local_dir is not None else None
    fingerprint = {
        "format": _CACHE_FORMAT,
        "source": _files_fingerprint(source) if source else f"hub:{cfg.hub_path}:{cfg.hub_config}",
        "tokenizer": OmegaConf.to_container(OmegaConf.structured(cfg.tokenizer), enum_to_str=True),
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    root = _cache_root(cfg)
    entry = root / f"{cfg.name}-{key}"

    loaded = _load_entry(entry, fingerprint) if (entry / "meta.json").is_file() else None
    if loaded is None:
        log.info("data: reading and tokenizing (first run with these settings)")
        start = time.perf_counter()
        texts = _read_texts(cfg, root)
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
    texts = _read_texts(cfg, _cache_root(cfg))
    return torch.from_numpy(_encode_split(tokenizer, texts[split]))


def _cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


# ---------------------------------------------------------------------------- sources
def _read_texts(cfg: DataConfig, cache_root: Path) -> dict[str, list[str]]:
    if cfg.local_dir is not None:
        return _read_local(_local_files(cfg.local_dir), cache_root)
    return _read_hub(cfg, cache_root)


def _local_files(local_dir: str) -> dict[str, Path]:
    folder = Path(local_dir).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"data.local_dir={local_dir}: no such folder ({folder})")
    files = {}
    for split, names in _LOCAL_NAMES.items():
        found = [folder / n for n in names if (folder / n).is_file()]
        if not found:
            looked = " or ".join(str(folder / n) for n in names)
            raise DataError(f"the {split} split is missing: looked for {looked}")
        if found[0].stat().st_size == 0:  # datasets' text loader cannot load it at all
            raise DataError(f"the {split} split is empty: {found[0]} has no text")
        files[split] = found[0]
    return files


def _files_fingerprint(files: dict[str, Path]) -> dict[str, str]:
    return {s: hashlib.sha256(p.read_bytes()).hexdigest() for s, p in files.items()}


def _check_readable_utf8(path: Path) -> None:
    """datasets reports bad bytes without naming the file or line; say both."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}, column {column}: byte 0x{data[err.start]:02x} is not valid "
            "UTF-8 (the WikiText files are UTF-8 text)"
        ) from None


def _read_local(files: dict[str, Path], cache_root: Path) -> dict[str, list[str]]:
    import datasets  # heavy import, only when there is work to do

    for path in files.values():
        _check_readable_utf8(path)

    datasets.disable_progress_bars()  # a few seconds of work; one log line says it

    try:
        ds = datasets.load_dataset(
            "text",
            data_files={s: str(p) for s, p in files.items()},
            cache_dir=str(cache_root / "hf-datasets"),
        )
    except Exception as err:  # datasets wraps decode errors in several exception types
        raise DataError(f"could not read the text files in {files['train'].parent}: {err}") from err
    return {s: _lines(ds[s]) for s in SPLITS}


def _lines(split) -> list[str]:
    """A split's text as a list, straight from its arrow column: ds["text"] is a lazy column
    whose per-row access costs ~100 us a line (seconds for WikiText-2)."""
    return split.data.column("text").to_pylist()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, because datasets retries an unreachable hub for ~25 s."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return True  # the user asked for the local Hugging Face cache; let datasets use it
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _read_hub(cfg: DataConfig, cache_root: Path) -> dict[str, list[str]]:
    hint = (
        "Use a local copy instead: data.local_dir=PATH, a folder with train.txt, valid.txt and "
        "test.txt (for example data.local_dir=../shared/data/wikitext-2). If the dataset is "
        "already in the Hugging Face cache, set HF_HUB_OFFLINE=1."
    )
    name = f"{cfg.hub_path} ({cfg.hub_config})"
    if not _hub_reachable():
        raise DataError(f"cannot download {name}: the Hugging Face Hub is not reachable. {hint}")
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(cfg.hub_path, cfg.hub_config)
    except Exception as err:
        raise DataError(f"cannot load {name} from the Hugging Face Hub: {err}. {hint}") from err
    return {s: _lines(ds[_HUB_SPLIT[s]]) for s in SPLITS}


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
