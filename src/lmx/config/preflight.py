"""Check a `python -m lmx.train` command line before Hydra runs it; report every problem at once.

Hydra stops at the first bad override with "Key 'nhed' not in 'TransformerConfig'" and a
traceback hint. Here the config is composed once from the group choices (optim=adamw,
experiment=smoke, ...), and then every key=value override is tried on it, every value of a
sweep included. The result is one message listing each unknown key (with a "did you mean"),
each wrongly typed value, each out-of-range value, and an output dir that cannot be created.
"""

from __future__ import annotations

import difflib
import itertools
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmx.config.compose import compose, composition_error
from lmx.config.model_rules import family
from lmx.config.rules import FP16_ON_CPU, all_keys, config_problems, did_you_mean
from lmx.config.store import GROUP_SCHEMAS
from lmx.errors import ConfigError
from lmx.paths import config_dir, uncreatable

# Hydra flags that end the command before any config work, or change which config is used.
_SKIP = {"-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion"}
_OTHER_CONFIG = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"}
_TAKES_VALUE = {"-c", "--cfg", "-p", "--package", "--experimental-rerun", "-i", "--info"}
_CFG_CHOICES = {"job", "hydra", "all"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# Words users type for an option under another name; spelling alone would suggest another
# option (gpu -> cpu).
_SAME_AS = {"gpu": "cuda"}


def overrides_of(argv: list[str]) -> list[str] | None:
    """The key=value arguments of a Hydra command line; None: nothing for us to check."""
    out, skip_next = [], False
    for i, arg in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        head = arg.split("=", 1)[0]
        if head in _SKIP or head in _OTHER_CONFIG:
            return None
        if head in _TAKES_VALUE:
            following = argv[i + 1] if i + 1 < len(argv) else ""
            choices = _INFO_CHOICES if head in ("-i", "--info") else _CFG_CHOICES
            skip_next = "=" not in arg and (following in choices or head in ("-p", "--package"))
            continue
        if not arg.startswith("-"):
            out.append(arg)
    return out


def _is_group(key: str) -> bool:
    return "/" in key or (config_dir() / key.replace(".", "/")).is_dir()


def _group_options(group: str) -> list[str]:
    folder = config_dir() / group.replace(".", "/")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _check_choice(group: str, choice, problems: list[str]) -> bool:
    if choice is None:
        return True  # group=null: no option from that group
    options = _group_options(group)
    if str(choice) in options:
        return True
    close = [_SAME_AS[str(choice)]] if _SAME_AS.get(str(choice)) in options else []
    close = close or difflib.get_close_matches(str(choice), options, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    problems.append(f"{group}={choice}: no such option{hint} (options: {', '.join(options)})")
    return False


def _values(override, parser) -> list | None:
    """Each value an override takes (a sweep's every element); None: not enumerable."""
    if not override.is_sweep_override():
        return [override.value()]
    try:
        strings = list(override.sweep_string_iterator())
    except Exception:  # interval(...) and other sweeper-side distributions
        return None
    key = override.key_or_group
    return [parser.parse_override(f"{key}={s}").value() for s in strings]


def _check_output_dir(key: str, value: str, problems: list[str]) -> None:
    if not value.strip():
        problems.append(f"{key} is empty: give the folder for the run's files")
        return
    if "${" in value:
        return  # interpolated (the default outputs/${now:...}); checked through its parent
    why = uncreatable(value)
    if why is not None:
        so = ", so the run dir cannot be created" if why.endswith("is a file") else ""
        problems.append(f"{key}={value}: {why}{so}")


def check_command_line(argv: list[str]) -> None:
    """Raise one ConfigError listing every problem in the overrides of `argv`."""
    overrides = overrides_of(argv)
    if overrides is None:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(f"cannot parse the command line: {err}") from None

    problems: list[str] = []
    hydra_keys = [o for o in parsed if o.key_or_group.startswith("hydra")]
    groups = [o for o in parsed if o not in hydra_keys and _is_group(o.key_or_group)]
    values = [o for o in parsed if o not in hydra_keys and o not in groups]

    for o in hydra_keys:
        if o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") and not o.is_sweep_override():
            _check_output_dir(o.key_or_group, str(o.value() or ""), problems)
    typed = {o.key_or_group: o for o in values}
    if "data.local_dir" in typed and typed["data.local_dir"].value() is not None:
        for key in ("data.hub_path", "data.hub_config"):  # the Hub's names of a dataset
            if key in typed:
                problems.append(f"{typed[key].input_line}: has no effect with data.local_dir "
                                "(the local files are read, not the Hub)")  # fmt: skip
    if not any(o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") for o in hydra_keys):
        _check_output_dir("the output dir", str(Path.cwd()), problems)

    # Every combination of the group choices a sweep will meet (model=transformer,lstm ...):
    # an override that fits one family may not exist in another.
    choice_lists = []
    for o in groups:
        choices = _values(o, parser)
        prefix = o.input_line.split("=", 1)[0]
        if choices is None:
            choice_lists.append([o.input_line])
            continue
        valid = [c for c in choices if _check_choice(o.key_or_group, c, problems)]
        if valid:
            choice_lists.append([f"{prefix}={_show(c)}" for c in valid])
    combos = list(itertools.islice(itertools.product(*choice_lists), _MAX_COMBINATIONS))
    total = math.prod(len(choices) for choices in choice_lists)
    if total > len(combos):
        print(f"lmx: this sweep meets {total} combinations of group choices; the check before "
              f"it starts covers the first {len(combos)}", file=sys.stderr)  # fmt: skip
    seen = set(problems)
    for combo in combos:
        for p in _problems_under(list(combo), values, parser, problems):
            if p not in seen:
                seen.add(p)
                problems.append(p)
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


# A sweep over several groups meets the product of their choices; past this many
# combinations only the first ones are checked before the sweep starts.
_MAX_COMBINATIONS = 64


def _problems_under(choices: list[str], values, parser, found: list[str]) -> list[str]:
    """The problems of the key=value overrides on the config composed from `choices`
    (group=option), each sweep over a key tried value by value. `found`: problems so far,
    printed with these if composing fails."""
    from hydra.errors import HydraException

    try:
        base = compose(choices)
    except HydraException as err:
        reason = composition_error(str(err))
        raise ConfigError(
            "invalid config:\n" + "\n".join(f"  - {p}" for p in [*found, reason])
        ) from None

    # Every key=value on the composed config: the key must exist, the value must fit its type.
    problems: list[str] = []
    first = base.copy()
    alternatives: list[list[tuple[str, object]]] = []
    for o in values:
        key = o.key_or_group
        exists = _exists(base, key)
        if o.is_delete():
            if not exists:
                hint = did_you_mean(key, all_keys(base))
                problems.append(f"~{key}: there is no {key} to delete{hint}")
            continue
        if o.is_add() and exists and not o.is_force_add():
            problems.append(f"+{key}: {key} is already in the config; set it with {key}=...")
            continue
        if o.is_add() or o.is_force_add():  # config_problems below says whether anything reads it
            options = _values(o, parser)
            if options:
                OmegaConf.update(first, key, options[0], merge=True, force_add=True)
            continue
        if not exists:
            problems.append(_no_such_key(key, base))
            continue
        options = _values(o, parser)
        if options is None:
            continue
        fits = []
        for value in options:
            trial = base.copy()
            try:
                OmegaConf.update(trial, key, value, merge=True)
                fits.append((key, value))
            except OmegaConfBaseException as err:
                reason = str(err).splitlines()[0]
                problems.append(f"{key}={_show(value)}: {reason}")
        if fits:
            OmegaConf.update(first, *fits[0], merge=True)
            alternatives.append(fits[1:])

    # Ranges and cross-field rules, for the first job and for each other value of a sweep
    # (the values that failed above are left out, so their problems are not reported twice).
    for key, value in [(None, None), *itertools.chain(*alternatives)]:
        trial = first
        if key is not None:
            trial = first.copy()
            OmegaConf.update(trial, key, value, merge=True)
        try:
            problems += config_problems(trial)
        except OmegaConfBaseException as err:  # e.g. a missing mandatory value
            problems.append(str(err).splitlines()[0])
    return problems


_ABSENT = object()


def _exists(cfg, key: str) -> bool:
    """Whether `key` names a node of cfg, a list element (optim.betas.0) included. select()
    calls a ??? value absent, so only then are the config's keys walked (all_keys)."""
    return OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT or key in all_keys(cfg)


def dotlist_problems(cfg, overrides: list[str]) -> list[str]:
    """Merge key=value overrides into a loaded config (a checkpoint's: evaluate, generate)
    and return the problem of each one that does not fit, as the train command line reports
    them: an unknown key with a "did you mean", a value of the wrong type, out of range."""
    problems: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            problems.append(f"{item}: expected key=value")
        elif key.startswith(("+", "~")):
            problems.append(f"{key}: adding or deleting keys of a saved config is not supported")
        elif not _exists(cfg, key):
            problems.append(_no_such_key(key, cfg))
        else:
            try:
                cfg.merge_with_dotlist([item])
            except OmegaConfBaseException as err:
                problems.append(f"{key}={_show(value)}: {str(err).splitlines()[0]}")
    if overrides and not problems:  # then the values' ranges and cross-field rules, as train's
        keys = [item.partition("=")[0] for item in overrides]
        # only those the overrides touch: a saved config stays loadable under newer rules;
        # fp16 on a CPU is refused for training only (it has no gradient scaler there)
        problems = [p for p in config_problems(cfg) if p != FP16_ON_CPU
                    and any(f"{k}=" in p or p.startswith(f"{k}:") for k in keys)]  # fmt: skip
    return problems


def _no_such_key(key: str, cfg) -> str:
    """e.g. 'model.nhid: model=gpt has no such key; it is a key of model=lstm (its keys: ...)',
    'optim.betas: this optim has no such key; it is a key of optim=adamw', or '...; did you
    mean model.d_hid?' for a key no option of its group has."""
    group, _, leaf = key.partition(".")
    name = family(cfg.model) if group == "model" and "model" in cfg else None
    options = GROUP_SCHEMAS.get(group, {}) if group != "model" or name is not None else {}
    owners = [
        o for o, schema in options.items() if leaf.split(".")[0] in schema.__dataclass_fields__
    ]
    # another option's key is the news, not a look-alike of this one's
    hint = f"; it is a key of {group}={f', {group}='.join(owners)}" if owners else ""
    if name is not None:
        keys = ", ".join(k for k in cfg.model if k != "_target_")
        hint = hint or did_you_mean(key, all_keys(cfg))
        return f"{key}: model={name} has no such key{hint} (its keys: {keys})"
    if owners:
        return f"{key}: this {group} has no such key{hint}"
    return f"{key}: no such config key{did_you_mean(key, all_keys(cfg))}"


def _show(value) -> str:
    return "null" if value is None else str(value)
