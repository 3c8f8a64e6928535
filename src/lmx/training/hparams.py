"""What a run declares to TensorBoard's HParams dashboard: the keys a sweep varies first,
then those that differ from the defaults (`python -m lmx.train` with no options), against
the metrics a run is compared by. The keys every run shares are left out, unless
trainer.hparams_all=true keeps them all (after the others).

TensorBoard orders the columns itself: the keys flagged `differs` first, then by name. So
the swept keys carry that flag (in a single run, the keys that differ from the defaults).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmx.config.rules import leaves
from lmx.runs.collect import is_admin

# Each is a scalar series the run logs; HParams shows its last value.
METRICS = {
    "val/best_ppl": "best validation ppl so far",
    "val/ppl": "the last validation ppl",
    "test/ppl": "test ppl of the best checkpoint",
    "train/tokens_per_s": "train tokens/s of the last log window",
    "model/parameters": "parameters (a tied matrix once)",
}


def flat(cfg: DictConfig | dict) -> dict[str, Any]:
    """`a.b` -> value, as HParams takes them: scalars, anything else as text."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(
        cfg, DictConfig) else cfg  # fmt: skip
    scalar = (bool, int, float, str)
    return {k: v if isinstance(v, scalar) else str(v) for k, v in leaves(tree).items()}


def default_settings() -> dict[str, Any]:
    """The flattened config of `python -m lmx.train` with no options."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside lmx.train's Hydra app
        from hydra import compose

        return flat(compose(config_name="train"))
    from lmx.config.compose import compose as compose_fresh

    return flat(compose_fresh([]))


def sweep_context() -> tuple[list[str], dict[str, str]]:
    """(the keys this job's sweep varies, the group choices): ([], {}) outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], {}
    from lmx.runs.naming import group_choices, is_multirun, swept_keys

    hydra = HydraConfig.get()
    return (swept_keys(hydra) if is_multirun(hydra) else []), group_choices(hydra.runtime.choices)


def select(settings: dict[str, Any], defaults: dict[str, Any], swept: list[str],
           choices: dict[str, str], keep_all: bool = False
           ) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """(The HParams entry, the keys to flag `differs`): swept keys (a swept group by its
    option), then the keys that differ from the defaults, then (keep_all) the rest; never the
    keys that say where a run ran."""
    values = {**{k: v for k, v in choices.items() if k in swept}, **settings}
    first = [k for k in swept if k in values and not is_admin(k)]
    changed = [k for k in sorted(settings) if defaults.get(k, object()) != settings[k]
               and not is_admin(k)]  # fmt: skip
    rest = sorted(settings) if keep_all else []
    keys = [k for k in dict.fromkeys([*first, *changed, *rest]) if not is_admin(k)]
    return {k: values[k] for k in keys}, first or changed


def start_session(tb: Any, resolved: dict[str, Any], keep_all: bool, parameters: int) -> None:
    """A fresh run's HParams entry, and its parameter count as a metric."""
    if tb.writer is None:
        return
    swept, choices = sweep_context()
    entry, differs = select(flat(resolved), default_settings(), swept, choices, keep_all)
    tb.start_session(entry, list(METRICS), differs)
    tb.scalars({"model/parameters": parameters}, 0)
