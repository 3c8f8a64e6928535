"""What older lmx versions wrote into configs and checkpoints, mapped to today's names.

Checkpoints store the resolved config, `_target_` paths included. Runs written before the
package layout changed name modules that have since moved; they keep loading because every
reader of a saved config passes it through `upgrade_config` first.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmx.errors import CheckpointError

MOVED_TARGETS = {
    "lmx.model.TransformerLM": "lmx.models.transformer.TransformerLM",
    "lmx.schedulers.WarmupCosineLR": "lmx.training.schedules.WarmupCosineLR",
    "lmx.sweep.SweepSummary": "lmx.runs.sweep.SweepSummary",
}


def upgrade_config(tree: Any) -> Any:
    """A copy of a saved (plain) config with every moved `_target_` renamed."""
    if isinstance(tree, dict):
        out = {k: upgrade_config(v) for k, v in tree.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target in MOVED_TARGETS:
            out["_target_"] = MOVED_TARGETS[target]
        return out
    if isinstance(tree, list):
        return [upgrade_config(v) for v in tree]
    return tree


def typed_config(saved: dict[str, Any], origin: str = "the checkpoint") -> DictConfig:
    """A saved config on today's schema: moved targets renamed, and keys that did not exist
    when it was written at their defaults (the value the run behaved with)."""
    from lmx.config.schema import TrainConfig

    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConfig), upgrade_config(saved))
    except Exception as err:  # a key this lmx does not know, or a value of the wrong type
        raise CheckpointError(f"the config saved in {origin} does not fit this lmx: {err}") from err
