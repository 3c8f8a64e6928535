"""What older lmx versions wrote into configs and checkpoints, mapped to today's names.

Checkpoints store the resolved config, `_target_` paths included. Runs written before the
package layout changed name modules that have since moved; they keep loading because every
reader of a saved config passes it through `upgrade_config` first.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmx.errors import CheckpointError

log = logging.getLogger(__name__)

MOVED_TARGETS = {
    "lmx.model.TransformerLM": "lmx.models.transformer.TransformerLM",
    "lmx.schedulers.WarmupCosineLR": "lmx.training.schedules.WarmupCosineLR",
    "lmx.sweep.SweepSummary": "lmx.runs.sweep.SweepSummary",
}


def upgrade_config(config: Any) -> Any:
    """A copy of a saved (plain) run config in today's terms: every moved `_target_` renamed,
    `optim.decay_all` where it predates weight-decay groups (those runs decayed every
    tensor, so it is true wherever there was a weight decay), and the model keys added since
    (model.head, ...) at their defaults, the behaviour the run had. So a finished sweep job
    keeps its config hash (sweep.resume) across lmx versions."""
    out = _rename_targets(config)
    optim = out.get("optim") if isinstance(out, dict) else None
    if isinstance(optim, dict) and "decay_all" not in optim:
        optim["decay_all"] = bool(optim.get("weight_decay"))
    model = out.get("model") if isinstance(out, dict) else None
    family = _family(model)
    for f in dataclasses.fields(family) if family is not None else ():
        if f.name not in model:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            model[f.name] = getattr(default, "value", default)  # an enum as its name
    return out


def _rename_targets(tree: Any) -> Any:
    if isinstance(tree, dict):
        out = {k: _rename_targets(v) for k, v in tree.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target in MOVED_TARGETS:
            out["_target_"] = MOVED_TARGETS[target]
        return out
    if isinstance(tree, list):
        return [_rename_targets(v) for v in tree]
    return tree


def typed_config(saved: dict[str, Any], origin: str = "the checkpoint") -> DictConfig:
    """A saved config on today's schema: moved targets renamed, keys that did not exist when
    it was written at their defaults (the value the run behaved with), and keys that no
    component reads (older lmx accepted `+trainer.max_steps=...` and saved it) dropped."""
    from lmx.config.schema import TrainConfig

    unread: list[str] = []
    known = _known_keys(upgrade_config(saved), TrainConfig, "", unread)
    family = _family(known.get("model"))
    if unread:
        log.warning("%s holds keys that no component reads; ignored: %s", origin,
                    ", ".join(unread))  # fmt: skip
    try:
        typed = OmegaConf.structured(TrainConfig)
        if family is not None:
            typed.model = OmegaConf.structured(family)
        return OmegaConf.merge(typed, known)
    except Exception as err:  # a value of the wrong type
        raise CheckpointError(f"the config saved in {origin} does not fit this lmx: {err}") from err


def _known_keys(tree: dict[str, Any], schema: type, prefix: str, unread: list[str]) -> dict:
    """`tree` less the keys that `schema` (a config dataclass) has no field for, recursively.
    Fields typed Any (optim, scheduler: any constructor's arguments) keep everything."""
    hints = typing.get_type_hints(schema)
    out = {}
    for key, value in tree.items():
        if key not in hints:
            unread.append(f"{prefix}{key}")
            continue
        # The model node is typed by its family's schema (the one its `_target_` names).
        node = _family(value) if f"{prefix}{key}" == "model" else hints[key]
        if dataclasses.is_dataclass(node) and isinstance(value, dict):
            value = _known_keys(value, node, f"{prefix}{key}.", unread)
        out[key] = value
    return out


def _family(model: Any) -> type | None:
    """The schema of the model family whose `_target_` a saved model config names."""
    from lmx.config.model_rules import family
    from lmx.config.schema import MODEL_FAMILIES

    return MODEL_FAMILIES.get(family(model)) if isinstance(model, dict) else None
