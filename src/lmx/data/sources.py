"""Where a corpus's text comes from: a local folder of split files, or the Hugging Face Hub.

Every source gives the same thing: each split's lines, as `datasets` reads them. Problems name
the file (a missing or empty split, bytes that are not UTF-8 with line and column) or say how
to work offline.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lmx.config.schema import DataConfig
from lmx.errors import DataError

SPLITS = ("train", "valid", "test")
_HUB_SPLIT = {"train": "train", "valid": "validation", "test": "test"}
# pytorch/examples names first, then the names inside the original wikitext-2 archive.
_LOCAL_NAMES = {s: (f"{s}.txt", f"wiki.{s}.tokens") for s in SPLITS}


def read_texts(cfg: DataConfig, cache_root: Path) -> dict[str, list[str]]:
    if cfg.local_dir is not None:
        return _read_local(local_files(cfg.local_dir), cache_root)
    return _read_hub(cfg, cache_root)


def local_files(local_dir: str) -> dict[str, Path]:
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


def files_fingerprint(files: dict[str, Path]) -> dict[str, str]:
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
    whose per-row access is slow enough to cost seconds on WikiText-2."""
    return split.data.column("text").to_pylist()


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
