"""Compose the run config in Python, as `python -m lmx.train OVERRIDES` would."""

from __future__ import annotations

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
