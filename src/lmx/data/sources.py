"""Where a corpus's text comes from: a local folder of split files, or the Hugging Face Hub.

Every source gives the same thing: each split's lines, as `datasets` reads them, in batches
(a few MB at a time), so that no split is ever held whole. Problems name
the file (a missing or empty split, bytes that are not UTF-8 with line and column) or say how
to work offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from lmx.config.schema import DataConfig
from lmx.data.encode import Batches
from lmx.errors import DataError
from lmx.files import WriteError, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# A corpus needs train (the vocabulary) and valid (every run validates); test is read where
# the folder or dataset has one, and needed only by who scores it (trainer.test, lmx eval).
CORE_SPLITS = ("train", "valid")
_HUB_SPLIT = {"train": "train", "valid": "validation", "test": "test"}
# pytorch/examples names first, then the names inside the original wikitext-2 archive.
_LOCAL_NAMES = {s: (f"{s}.txt", f"wiki.{s}.tokens") for s in SPLITS}


# Bytes read at a time from a local file (then to the end of that line): a batch of lines.
READ_BYTES = 1 << 22


def text_batches(
    cfg: DataConfig, cache_root: Path, need: tuple[str, ...] = CORE_SPLITS
) -> dict[str, Batches]:
    """Each split's text as batches of lines (encode.Batches: callable once per pass): every
    split the source has, and a DataError where one of `need` is missing."""
    if cfg.local_dir is not None:
        return {s: _local_batches(p) for s, p in local_files(cfg.local_dir, need).items()}
    return _hub_batches(cfg, cache_root, need)


def missing_split(split: str, looked: str) -> DataError:
    hint = (" (training without one: trainer.test=false; lmx eval scores another split with "
            "split=valid)" if split == "test" else "")  # fmt: skip
    return DataError(f"the {split} split is missing: {looked}{hint}")


def local_files(
    local_dir: str, need: tuple[str, ...] = CORE_SPLITS, tell: bool = False
) -> dict[str, Path]:
    """The folder's split files: each of SPLITS it has; a DataError where one of `need` is
    missing, empty or not a file. `tell` (once a run: lmx.data.cache.load_corpus): warn where
    a split has both its names in the folder, naming the one read."""
    folder = Path(local_dir).expanduser().resolve()
    if folder.is_file():
        raise DataError(f"data.local_dir={local_dir} is a file; give the folder that holds "
                        f"train.txt, valid.txt and test.txt ({folder.parent}?)")  # fmt: skip
    if not folder.is_dir():
        raise DataError(f"data.local_dir={local_dir}: no such folder ({folder})")
    files = {}
    for split, names in _LOCAL_NAMES.items():
        found = [folder / n for n in names if (folder / n).is_file()]
        if not found:
            odd = [folder / n for n in names if (folder / n).exists()]
            if odd:
                raise DataError(f"the {split} split {odd[0]} is not a file")
            if split not in need:
                continue
            looked = " or ".join(str(folder / n) for n in names)
            raise missing_split(split, f"looked for {looked}")
        if split not in need and _blank(found[0]):  # e.g. a placeholder: no split
            continue
        if found[0].stat().st_size == 0:  # no text: there is nothing to tokenize or score
            raise DataError(f"the {split} split is empty: {found[0]} has no text")
        files[split] = found[0]
        if tell and len(found) > 1 and int(os.environ.get("RANK", "0")) == 0:
            log.warning("data: %s holds both %s and %s; the %s split is read from %s",
                        folder, found[0].name, found[1].name, split, found[0].name)  # fmt: skip
    return files


def _blank(path: Path) -> bool:
    """Whether the file holds whitespace only (or nothing): read up to its first other byte,
    so a real split costs one small read."""
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 16):
                if block.strip():
                    return False
    except OSError:
        return False  # unreadable: reading it for real says so, with its name
    return True


def files_fingerprint(files: dict[str, Path], known: Path | None = None) -> dict[str, str]:
    """Each file's sha256, read a block at a time (a large corpus is never in memory).

    With `known` (a JSON file in the cache folder) a file whose size, modification time,
    inode and change time are those of its last hashing reuses that hash, so a large corpus is
    not read at every start (a rewrite that restores the old modification time, as `touch -d`
    can, still moves the change time). As git's index does, a stamp is trusted only if the
    file was last changed well before it was hashed (RACY_NS): a same-size rewrite within one
    timestamp tick of the hashing cannot pass for the old content.
    """
    seen = _read_known(known)
    digests, changed = {}, False
    for split, path in files.items():
        try:
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
            entry = seen.get(str(path), {})
            last_change = max(st.st_mtime_ns, st.st_ctime_ns)
            if entry.get("stamp") == stamp and last_change < entry["hashed_ns"] - RACY_NS:
                digests[split] = entry["sha256"]
                continue
            hashed_ns = time.time_ns()
            digests[split] = _sha256(path)
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror or err}") from err
        seen[str(path)] = {"stamp": stamp, "hashed_ns": hashed_ns, "sha256": digests[split]}
        changed = True
    if known is not None and changed:
        try:
            known.parent.mkdir(parents=True, exist_ok=True)
            write_json(known, seen)
        except (OSError, WriteError):  # a cache of hashes: without it the next start rehashes
            pass
    return digests


RACY_NS = 2_000_000_000  # a file modified this close to its hashing is hashed again


def _read_known(known: Path | None) -> dict:
    try:
        seen = json.loads(known.read_text()) if known is not None else {}
        return seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        return {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _local_batches(path: Path) -> Batches:
    """A local file's lines, READ_BYTES at a time, split as `datasets`' text loader splits
    them, so that the token counts of the WikiText files stay those lmx has always had. Bytes
    that are not UTF-8 raise a DataError naming the file, line and column. A byte-order mark
    at the start of the file (Windows Notepad writes one) is not text: it is dropped."""
    size = path.stat().st_size

    def batches() -> Iterator[tuple[list[str], float]]:
        try:
            f = path.open("rb")
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror or err}") from err
        with f:
            lines_before = 0
            while chunk := f.read(READ_BYTES):
                chunk += f.readline()  # to the end of the line: no line or character split
                try:
                    text = chunk.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _not_utf8(path, chunk, err, lines_before) from None
                if lines_before == 0 and f.tell() == len(chunk):
                    text = text.removeprefix("\ufeff")
                lines_before += _breaks(chunk)
                yield _split_lines(text), f.tell() / size

    batches.source = path  # type: ignore[attr-defined]  # for errors that name the file
    return batches


def starts_with_bom(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(3) == b"\xef\xbb\xbf"
    except OSError:
        return False  # unreadable: reading it says so, with its name


def _breaks(data: bytes) -> int:
    """Line breaks in `data` as universal newlines count them: "\n", "\r\n" and "\r"."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _split_lines(text: str) -> list[str]:
    """Lines as `datasets`' text loader makes them: universal newlines ("\r\n" and "\r" become
    "\n"), then split on "\n" alone (not on the other breaks str.splitlines knows)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()  # the break after the last line ends it; it starts no empty line
    return lines


def _not_utf8(path: Path, chunk: bytes, err: UnicodeDecodeError, lines_before: int) -> DataError:
    before = chunk[: err.start]
    line = lines_before + _breaks(before) + 1
    start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
    column = len(before[start:].decode("utf-8", errors="replace")) + 1  # in characters
    return DataError(
        f"{path}, line {line}, column {column}: byte 0x{chunk[err.start]:02x} is not valid "
        "UTF-8 (lmx reads text files as UTF-8)"
    )


def _arrow_batches(split, rows: int = 50_000) -> Batches:
    """A `datasets` split's text column, `rows` lines at a time, straight from its arrow table
    (per-row access to ds["text"] is slow enough to cost seconds on WikiText-2)."""
    column = split.data.column("text")

    def batches() -> Iterator[tuple[list[str], float]]:
        n = len(column)
        for start in range(0, n, rows):
            yield column.slice(start, rows).to_pylist(), min(start + rows, n) / n

    return batches


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, because datasets retries an unreachable hub for a long time."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return True  # the user asked for the local Hugging Face cache; let datasets use it
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_batches(cfg: DataConfig, cache_root: Path, need: tuple[str, ...]) -> dict[str, Batches]:
    example = (
        " (for example data.local_dir=../shared/data/wikitext-2)" if cfg.name == "wikitext2" else ""
    )
    hint = (
        "Use a local copy instead: data.local_dir=PATH, a folder with train.txt, valid.txt and "
        f"test.txt, or wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens{example}. If "
        "the dataset is already in the Hugging Face cache, set HF_HUB_OFFLINE=1."
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
    for s in need:
        if _HUB_SPLIT[s] not in ds:
            raise missing_split(s, f"{name} has only {', '.join(ds)}")
    return {s: _arrow_batches(ds[_HUB_SPLIT[s]]) for s in SPLITS if _HUB_SPLIT[s] in ds}
