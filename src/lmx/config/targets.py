"""A component's keys as its `_target_`'s constructor arguments (optim, scheduler).

The config groups hold the keys of one class each: optim=sgd holds SGD's momentum and
nesterov. A command line may name another class (`optim._target_=torch.optim.RMSprop`) or add
arguments (`+optim.alpha=0.9`), and a structured config cannot delete the keys the new class
does not take. So a key the class does not take is left out while it holds the group's
default (it came with the group), and is a problem once it was set: it would have no effect.
Only then is the class imported and its signature read, so the usual config costs nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf


def target_kwargs(node: DictConfig, prefix: str, own: tuple[str, ...] = ()) -> tuple[dict, list]:
    """(the node as plain constructor keyword arguments, the problems). `own`: lmx's keys,
    kept for the caller to take out (optim.decay_all, scheduler.interval)."""
    kwargs: dict[str, Any] = OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[assignment]
    defaults = _schema_defaults(node)
    target = kwargs.get("_target_")
    if not defaults:  # an untyped node (a saved config): which keys were set is not known
        return kwargs, []
    if target is None or (target == defaults.get("_target_") and kwargs.keys() <= defaults.keys()):
        return kwargs, []  # the group's own class with the group's own keys
    accepted = _accepted(target)
    if accepted is None:  # takes **kwargs, or cannot be read: instantiate will say
        return kwargs, []
    out, problems = {}, []
    for key, value in kwargs.items():
        if key.startswith("_") or key in own or key in accepted:
            out[key] = value
        elif key not in defaults or value != defaults[key]:
            back = f" (its default {defaults[key]!r} leaves it out)" if key in defaults else ""
            problems.append(f"{prefix}.{key}={value!r}: {target} takes no argument {key!r}{back}")
    return out, problems


def _schema_defaults(node: DictConfig) -> dict[str, Any]:
    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return {}
    defaults = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = getattr(f.default, "value", f.default)  # an enum as its name
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _accepted(target: str) -> set[str] | None:
    """The keyword arguments `target`'s constructor takes; None: any, or not known here."""
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        params = inspect.signature(obj).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}
