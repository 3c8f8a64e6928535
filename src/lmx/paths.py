"""Where lmx finds its configs and keeps its caches."""

import os
import tempfile
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The YAML config root: inside the package for a wheel, ./conf for a source checkout."""
    packaged = _PACKAGE_DIR / "conf"
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parents[1] / "conf"


def default_cache_dir() -> Path:
    """Token/tokenizer cache root: $LMX_CACHE_DIR, else ~/.cache/lmx."""
    env = os.environ.get("LMX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmx"


def uncreatable(folder: str | Path) -> str | None:
    """Why `folder` (made if missing) cannot hold new files, or None when it can. A folder is
    made and removed in its nearest existing ancestor: write permission alone misses /proc and
    read-only mounts, and nothing is left behind."""
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lmx-probe-", dir=existing))
    except OSError as err:
        return f"cannot create a folder in {existing} ({err.strerror or err})"
    return None
