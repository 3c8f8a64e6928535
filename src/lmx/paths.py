"""Where lmx finds its configs and keeps its caches."""

import os
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
