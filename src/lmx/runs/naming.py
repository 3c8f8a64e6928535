"""A run's name on disk and in TensorBoard's run selector.

A sweep job's folder is `NUM_<the values swept>` (`0_nhead=2,nlayers=1`): the keys a sweep
varies, read from `hydra.sweeper.params` and, for command-line sweeps, from the sweep's
multirun.yaml, where the basic sweeper keeps the overrides as typed (`model.nhead=1,2`). A
single run keeps its date/time folder. `name=...` adds the user's own name to either. conf/
train.yaml puts `${lmx_run_name:}` after the folder; the resolver is registered with the
configs (lmx.config.store).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

RESOLVER = "lmx_run_name"
MAX_LEN = 120  # of the name; longer ones are cut (the config has the whole story)


def safe(text: str) -> str:
    """Fit for a folder name: letters, digits and . , = + - _ kept, any other run of
    characters one '_'."""
    return re.sub(r"[^A-Za-z0-9.,=+_-]+", "_", text).strip("_")[:MAX_LEN]


def swept_keys(hydra: Any) -> list[str]:
    """The keys a multirun varies: its sweeper's params, and the sweep overrides typed on
    the command line (as the sweep's multirun.yaml records them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = list(OmegaConf.select(hydra, "sweeper.params") or {})
    saved = Path(str(hydra.sweep.dir)) / "multirun.yaml"
    if saved.is_file():
        typed = OmegaConf.load(saved).hydra.overrides.task
        for o in OverridesParser.create().parse_overrides(list(typed)):
            if o.is_sweep_override():
                keys.append(o.get_key_element())
    return list(dict.fromkeys(k.lstrip("+~") for k in keys))


def job_label(overrides: list[str], keys: list[str]) -> str:
    """'nhead=2,nlayers=1': this job's values of the swept keys, each by its last name where
    that is unique among them."""
    values = dict(o.lstrip("+~").partition("=")[::2] for o in overrides)
    picked = [k for k in keys if k in values]
    short = [k.rsplit(".", 1)[-1] for k in picked]
    names = short if len(set(short)) == len(short) else picked
    return ",".join(f"{n}={values[k]}" for n, k in zip(names, picked, strict=True))


def run_name(*, _root_: Any) -> str:
    """The resolver: '' or '_' + the name (the user's `name`, then a sweep job's values)."""
    hydra = _root_.hydra
    parts = [str(_root_.get("name") or "")]
    if str(hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN"):
        parts.append(job_label(list(hydra.overrides.task), swept_keys(hydra)))
    name = safe("_".join(p for p in parts if p))
    return f"_{name}" if name else ""


def register() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_name)
