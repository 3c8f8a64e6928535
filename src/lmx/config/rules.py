"""The rules that types cannot express: ranges, cross-field rules, paths that must exist, and
keys that no component reads. Each problem is one line naming the key and the value."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmx.config.model_rules import Check, max_len, model_problems
from lmx.config.schema import DeviceType, Interval, Precision, TokenizerKind
from lmx.config.targets import target_kwargs
from lmx.errors import ConfigError
from lmx.training.budget import parse_duration

# Nodes whose `_target_` takes keyword arguments beyond the schema: extra keys are theirs.
_OPEN_NODES = ("optim", "scheduler")


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem that config_problems finds."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


def config_problems(cfg: DictConfig) -> list[str]:
    problems: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    problems += unread_keys(cfg)
    model_problems(cfg, check)
    _data(cfg, check)
    _optim(cfg, check)
    _scheduler(cfg, check)
    _targets(cfg, check)
    _device(cfg, check)
    _trainer(cfg, check)
    _eval(cfg, check)
    return problems


# ---------------------------------------------------------------------------- unread keys
def all_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of a config, inner nodes included."""
    keys: list[str] = []

    def walk(node, prefix: str) -> None:
        for key in node.keys() if isinstance(node, DictConfig) else ():
            full = f"{prefix}{key}"
            keys.append(full)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing():
                walk(child, f"{full}.")

    walk(cfg, "")
    return keys


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A plain config tree's leaves by dotted key: {"a": {"b": 1}} -> {"a.b": 1}."""
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}."))
    return out


def did_you_mean(key: str, known: list[str]) -> str:
    """'; did you mean X?' for the closest of `known`, or ''."""
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not match:  # a right leaf under the wrong (or no) parent: lr -> optim.lr
        leaves = {k.rsplit(".", 1)[-1]: k for k in known}
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.75)
        match = [leaves[leaf[0]]] if leaf else []
    return f"; did you mean {match[0]}?" if match else ""


def unread_keys(cfg: DictConfig) -> list[str]:
    """Keys added (`+key=...`) under a typed node that has no such field: no component would
    read them, so the run would silently ignore them."""
    problems: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        schema = OmegaConf.get_type(node)
        fields = (
            {f.name for f in dataclasses.fields(schema)}
            if dataclasses.is_dataclass(schema)
            else None
        )
        for key in node.keys():
            full = f"{prefix}{key}"
            if full.split(".", 1)[0] in _OPEN_NODES:
                continue
            if fields is not None and key not in fields:
                close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.6)
                hint = f"; did you mean {prefix}{close[0]}?" if close else ""
                problems.append(
                    f"{full}: no component reads this key, so it would have no effect{hint}"
                )
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing():
                walk(child, f"{full}.")

    walk(cfg, "")
    return problems


# ---------------------------------------------------------------------------- components
def _data(cfg: DictConfig, check: Check) -> None:
    d = cfg.data
    for key in ("batch_size", "eval_batch_size", "bptt"):
        check(d[key] >= 1, f"data.{key}={d[key]} must be >= 1")
    longest = max_len(cfg.model)
    check(longest is None or d.bptt <= longest, f"data.bptt={d.bptt} exceeds model.max_len="
          f"{longest}")  # fmt: skip
    if d.local_dir is not None:
        local = Path(d.local_dir).expanduser()
        if local.is_file():
            check(False, f"data.local_dir={d.local_dir} is a file; give the folder that holds "
                  f"train.txt, valid.txt and test.txt ({local.resolve().parent}?)")  # fmt: skip
        else:
            check(local.is_dir(), f"data.local_dir={d.local_dir}: no such folder "
                  f"({local.resolve()})")  # fmt: skip
    else:
        check(d.hub_path is not None, f"data={d.name} reads local files: set data.local_dir="
              "PATH, a folder with train.txt, valid.txt and test.txt")  # fmt: skip
    tok = d.tokenizer
    if tok.kind == TokenizerKind.bpe:
        check(
            tok.vocab_size is not None and tok.vocab_size > 0,
            "data.tokenizer.vocab_size must be set to a positive number for BPE",
        )
    elif tok.vocab_size is not None:
        check(tok.vocab_size > 0, f"data.tokenizer.vocab_size={tok.vocab_size} must be > 0")
    check(tok.min_frequency >= 0,
          f"data.tokenizer.min_frequency={tok.min_frequency} must be >= 0")  # fmt: skip


def _optim(cfg: DictConfig, check: Check) -> None:
    lr = cfg.optim.get("lr")
    if isinstance(lr, (int, float)):
        check(lr > 0, f"optim.lr={lr} must be > 0")
    check(
        cfg.optim.get("_target_") != "torch.optim.SparseAdam",
        "optim._target_=torch.optim.SparseAdam takes sparse gradients only, and every "
        "layer but the embedding has dense ones; use SGD or Adagrad with "
        "model.sparse_embedding=true, or a dense optimizer such as optim=adamw",
    )


def _targets(cfg: DictConfig, check: Check) -> None:
    """Keys that another `_target_` than the group's does not take (lmx.config.targets)."""
    for prefix, own in (("optim", "decay_all"), ("scheduler", "interval")):
        if prefix in cfg:
            for problem in target_kwargs(cfg[prefix], prefix, (own,))[1]:
                check(False, problem)


def _scheduler(cfg: DictConfig, check: Check) -> None:
    target, interval = cfg.scheduler.get("_target_"), cfg.scheduler.get("interval")
    on_loss = target == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    check(
        not on_loss or interval == Interval.validation,
        f"scheduler.interval={_name(interval)}: ReduceLROnPlateau steps on the validation "
        "loss, so it needs scheduler.interval=validation",
    )
    check(
        on_loss or interval != Interval.validation,
        f"scheduler.interval=validation passes the validation loss to step(), which only "
        f"ReduceLROnPlateau (scheduler=plateau) takes; {target} needs epoch or step",
    )


def _name(value: Any) -> str:
    return getattr(value, "value", str(value))


def _device(cfg: DictConfig, check: Check) -> None:
    threads = cfg.device.threads
    check(threads is None or threads >= 1, f"device.threads={threads} must be >= 1 or null")
    check(
        not (cfg.device.type == DeviceType.cpu and cfg.device.precision == Precision.fp16),
        FP16_ON_CPU,
    )


def _eval(cfg: DictConfig, check: Check) -> None:
    e = cfg.get("eval")
    if e is None:
        return
    context = e.context if e.context is not None else cfg.data.bptt
    check(e.context is None or context >= 1, f"eval.context={e.context} must be >= 1")
    if context < 1:  # data.bptt, which is said on its own
        return
    longest = max_len(cfg.model)
    check(longest is None or context <= longest, f"eval.context={context} exceeds "
          f"model.max_len={longest}")  # fmt: skip
    if e.stride is not None:
        check(1 <= e.stride <= context, f"eval.stride={e.stride} must be in [1, eval.context="
              f"{context}]")  # fmt: skip


FP16_ON_CPU = (
    "device.precision=fp16 needs a CUDA device (it trains with a gradient scaler there); on "
    "a CPU use device.precision=bf16, which has fp32's range and needs no scaler"
)


def _trainer(cfg: DictConfig, check: Check) -> None:
    t = cfg.trainer
    check(t.epochs >= 0, f"trainer.epochs={t.epochs} must be >= 0")
    for key in ("max_steps", "max_time"):  # trainer.epochs=0: the initial model is evaluated
        check(t.epochs > 0 or t[key] is None,
              f"trainer.{key}={t[key]} has no effect with trainer.epochs=0 (a run that trains "
              "nothing and scores the initial model)")  # fmt: skip
    check(0 <= t.seed < 2**32, f"trainer.seed={t.seed} must be in [0, 2**32 - 1]")
    check(t.log_interval >= 1, f"trainer.log_interval={t.log_interval} must be >= 1")
    check(
        t.throughput_warmup_steps >= 0,
        f"trainer.throughput_warmup_steps={t.throughput_warmup_steps} must be >= 0",
    )
    check(
        t.eval_tokens_per_forward >= 1,
        f"trainer.eval_tokens_per_forward={t.eval_tokens_per_forward} must be >= 1",
    )
    check(t.grad_clip is None or t.grad_clip > 0, f"trainer.grad_clip={t.grad_clip} must be > 0")
    if t.max_time is not None:
        try:
            parse_duration(t.max_time)
        except ValueError as err:
            check(False, f"trainer.max_time={t.max_time}: {err}")
    check(t.accumulate >= 1, f"trainer.accumulate={t.accumulate} must be >= 1")
    check(
        t.accumulate <= cfg.data.batch_size or cfg.data.batch_size < 1,  # said on its own
        f"trainer.accumulate={t.accumulate} needs at least as many batch rows "
        f"(data.batch_size={cfg.data.batch_size}): each micro-batch takes whole rows",
    )
    check(
        t.ema.decay is None or 0.0 < t.ema.decay < 1.0,
        f"trainer.ema.decay={t.ema.decay} must be in (0, 1) or null",
    )
    check(t.ema.start_step >= 0, f"trainer.ema.start_step={t.ema.start_step} must be >= 0")
    check(
        t.ema.decay is not None or t.ema.start_step == 0,
        f"trainer.ema.start_step={t.ema.start_step} has no effect without trainer.ema.decay",
    )
    stop = t.early_stop
    check(
        stop.patience is None or stop.patience >= 1,
        f"trainer.early_stop.patience={stop.patience} must be >= 1 or null",
    )
    check(stop.min_delta >= 0, f"trainer.early_stop.min_delta={stop.min_delta} must be >= 0")
    check(
        stop.patience is not None or stop.min_delta == 0,
        f"trainer.early_stop.min_delta={stop.min_delta} has no effect without "
        "trainer.early_stop.patience",
    )
    check(t.samples >= 0, f"trainer.samples={t.samples} must be >= 0")
    check(
        t.tensorboard or t.samples == 0,
        f"trainer.samples={t.samples} writes to TensorBoard's Text tab: it needs "
        "trainer.tensorboard=true",
    )
    keys = ("max_steps", "val_every_steps", "limit_train_batches", "limit_eval_batches",
            "checkpoint_every_steps")  # fmt: skip
    for key in keys:
        check(t[key] is None or t[key] >= 1, f"trainer.{key}={t[key]} must be >= 1 or null")
