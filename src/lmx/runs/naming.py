"""A run's name on disk and in TensorBoard's run selector.

A sweep job's folder is `NUM_<the values swept>` (`0_nhead=2,nlayers=1`): the keys a sweep
varies, from `hydra.sweeper.params` (less those the command line fixes to one value) and
from the sweep overrides as typed (`model.nhead=1,2`), which lmx.runs.sweep records in the
sweep dir when the sweep starts (SWEPT_FILE; every sweeper calls that callback). A single
run keeps its date/time folder. `name=...` adds the user's own name to either.
conf/train.yaml puts `${lmx_run_name:}` after the folder; importing lmx registers the
resolver, also in a launcher's worker process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

RESOLVER = "lmx_run_name"
MAX_LEN = 120  # of the name; longer ones are cut (the config has the whole story)
SWEPT_FILE = ".lmx_swept.json"  # in the sweep dir: the keys the sweep varies


def safe(text: str) -> str:
    """Fit for a folder name: letters, digits and . , = + - _ kept, any other run of
    characters one '_'."""
    return re.sub(r"[^A-Za-z0-9.,=+_-]+", "_", text).strip("_")[:MAX_LEN]


def is_multirun(hydra: Any) -> bool:
    return str(hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")


def group_choices(choices: Any) -> dict[str, str]:
    """The group options a run was composed from ({"model": "lstm", ...}), less Hydra's own
    (hydra/launcher, ...) and nested groups (data/tokenizer)."""
    return {str(k): "null" if v is None else str(v) for k, v in (choices or {}).items()
            if "/" not in str(k)}  # fmt: skip


def typed_sweep_keys(overrides: list[str]) -> list[str]:
    """The keys of the sweep overrides among command-line overrides (`model.nhead=1,2`)."""
    return [key for key, sweep in _override_keys(overrides) if sweep]


def _override_keys(overrides: list[str]) -> list[tuple[str, bool]]:
    """(key, whether it is a sweep override) of each command-line override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [(o.get_key_element().lstrip("+~"), o.is_sweep_override()) for o in parsed]


def planned_sweep_keys(params: Any, overrides: list[str]) -> list[str]:
    """The keys a multirun varies: its sweeper's params (a preset's grid, a search space),
    less those the command line fixed to one value, then the sweep overrides typed."""
    fixed = {key for key, sweep in _override_keys(overrides) if not sweep}
    keys = [str(k) for k in params or {} if str(k) not in fixed]
    return list(dict.fromkeys(keys + typed_sweep_keys(overrides)))


def swept_keys(hydra: Any) -> list[str]:
    """The keys a multirun varies, as recorded in its sweep dir when it started (found from
    the launch dir, also when hydra.job.chdir=true put a job elsewhere); the sweeper's params
    where there is no record."""
    recorded = Path(str(OmegaConf.select(hydra, "runtime.cwd") or "")) / str(hydra.sweep.dir)
    if (recorded / SWEPT_FILE).is_file():
        return json.loads((recorded / SWEPT_FILE).read_text())
    return [str(k) for k in OmegaConf.select(hydra, "sweeper.params") or {}]


def short_names(keys: list[str]) -> list[str]:
    """Each key by its last name where those are unique: model.nhead -> nhead."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return short if len(set(short)) == len(short) else list(keys)


def override_values(overrides: list[str]) -> dict[str, str]:
    """`key=value` overrides as {key: value}, the +/~ prefixes dropped."""
    return dict(str(o).lstrip("+~").partition("=")[::2] for o in overrides)


def job_label(overrides: list[str], keys: list[str]) -> str:
    """'nhead=2,nlayers=1': this job's values of the swept keys, by short names."""
    values = override_values(overrides)
    picked = [k for k in keys if k in values]
    pairs = zip(short_names(picked), picked, strict=True)
    return ",".join(f"{n}={_short(values[k])}" for n, k in pairs)


def _short(value: str) -> str:
    """A float with many digits (a search's 2.588170214937917) to 4 significant ones: the
    folder's number keeps jobs apart, and the config has the exact value."""
    if re.fullmatch(r"[-+]?\d*\.\d{5,}([eE][-+]?\d+)?", value):
        return f"{float(value):.4g}"
    return value


def run_name(*, _root_: Any) -> str:
    """The resolver: '' or '_' + the name (the user's `name`, then a sweep job's values)."""
    hydra = _root_.hydra
    parts = [str(_root_.get("name") or "")]
    if is_multirun(hydra):
        parts.append(job_label(list(hydra.overrides.task), swept_keys(hydra)))
    name = safe("_".join(p for p in parts if p))
    return f"_{name}" if name else ""


def register() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_name)
