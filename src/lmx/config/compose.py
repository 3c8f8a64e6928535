"""Compose the run config in Python, as `python -m lmx.train OVERRIDES` would; what Hydra's
composition errors say, on one line."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from lmx.config.store import register_configs
from lmx.paths import config_dir


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed `train` config with `overrides` (key=value, group=option) applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides or [])


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """data.local_dir and data.cache_dir made absolute, in place, so that the saved config
    (config.yaml, every checkpoint) finds the data from any folder. The form the user typed
    stays in the run's .hydra/overrides.yaml, which lmx.report shows."""
    for key in ("local_dir", "cache_dir"):
        value = cfg.data.get(key)
        if value is not None and "${" not in str(value):
            cfg.data[key] = str(Path(value).expanduser().resolve())
    return cfg


def composition_error(text: str) -> str:
    """Hydra's composition error on one line: 'experiment=smoke sets model.d_model, which
    this config does not have (Key 'd_model' not in 'LSTMConfig')' for a preset's key that
    the chosen model family lacks; 'experiment=x sets model.nhead: Value ...' otherwise."""
    text = text.strip().split("\nConfig search path")[0]
    found = re.match(r"In '([^']+)': (\w+) raised while composing config:\n(.*?)\n\s*full_key: "
                     r"(\S+)", text, re.S)  # fmt: skip
    if found is None:
        return text
    source, kind, reason, key = found.groups()
    source, reason = source.replace("/", "=", 1), " ".join(reason.split())
    if kind == "ConfigKeyError":
        return f"{source} sets {key}, which this config does not have ({reason})"
    return f"{source} sets {key}: {reason}"
