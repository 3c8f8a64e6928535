"""A trained model back from a checkpoint: its weights, its own config and its tokenizer."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from lmx.config.legacy import typed_config
from lmx.config.preflight import dotlist_problems
from lmx.config.schema import TokenizerKind
from lmx.errors import CheckpointError, ConfigError
from lmx.training.checkpoint import Checkpoint, load_checkpoint


@dataclass
class Trained:
    model: torch.nn.Module
    tokenizer: Tokenizer
    cfg: DictConfig  # the run's config, typed, with any overrides applied
    checkpoint: Checkpoint

    @property
    def unit(self) -> str:
        kind = self.cfg.data.tokenizer.kind
        return "subword (BPE)" if kind == TokenizerKind.bpe else "word-level"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run dir (its checkpoints/best.pt), or that checkpoints folder."""
    path = Path(path).expanduser()
    if path.is_dir() and path.name == "checkpoints" and not (path / "checkpoints").is_dir():
        path = path.parent  # the run dir's checkpoints folder, given for the run
    if path.is_dir() and not (path / "checkpoints").is_dir():
        runs = sorted(p.parent.parent for p in path.glob("*/checkpoints/best.pt"))
        if runs:  # a sweep dir: its jobs are the runs
            raise CheckpointError(f"{path} holds {len(runs)} runs, not one: pick one, e.g. "
                                  f"ckpt={runs[0]}")  # fmt: skip
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
        last = path.with_name("last.pt")
        if not path.is_file() and last.is_file():  # stopped before its first validation
            raise CheckpointError(f"no checkpoint at {path}: the run has no best model yet; "
                                  f"its latest weights are ckpt={last}")  # fmt: skip
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def load_trained(
    path: str | Path, overrides: list[str] | None = None, device: str | torch.device = "cpu"
) -> Trained:
    """Rebuild the model from the checkpoint's saved config and load its weights.

    `overrides` are dotlist entries (e.g. "data.local_dir=...") applied to the saved config.
    """
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location=device)
    cfg = typed_config(ckpt.config, str(path))
    saved = copy.deepcopy(cfg)  # the merge below puts the overrides into cfg
    problems = dotlist_problems(cfg, overrides or [])
    keys = {o: o.lstrip("+~").split("=", 1)[0] for o in overrides or []}
    problems += [
        f"{o}: the model and its tokenizer are the checkpoint's, as trained; an override cannot "
        f"change them (of model.*, it can set {', '.join(MODEL_FREE)})"
        for o, key in keys.items()
        if _fixed_by_checkpoint(key)
        and not any(p.startswith((f"{key}:", f"{key}=")) for p in problems)  # said already
        and OmegaConf.select(cfg, key) != OmegaConf.select(saved, key)  # the saved value: no change
    ]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid override of {path}'s saved config:\n{lines}")
    model = instantiate(cfg.model, ntoken=ckpt.vocab_size)
    model.load_state_dict(ckpt.eval_weights())  # the weight average, if the run kept one
    model.to(device).eval()
    return Trained(model, _tokenizer(ckpt, path), cfg, ckpt)


# The model settings that change how the trained weights are used, not what they are.
MODEL_FREE = ("model.fused_loss",)


def _fixed_by_checkpoint(key: str) -> bool:
    """Whether an override of `key` could not take effect: the model's shape and the
    tokenizer are the checkpoint's (its weights and tokenizer.json)."""
    if key.startswith("data.tokenizer.") or key == "data.tokenizer":
        return True
    return (key == "model" or key.startswith("model.")) and key not in MODEL_FREE


def _tokenizer(ckpt: Checkpoint, path: Path) -> Tokenizer:
    if ckpt.tokenizer is not None:
        return Tokenizer.from_str(ckpt.tokenizer)
    beside = path.parent.parent / "tokenizer.json"  # <run dir>/checkpoints/x.pt -> <run dir>
    if beside.is_file():
        return Tokenizer.from_file(str(beside))
    raise CheckpointError(f"{path} carries no tokenizer and there is no {beside}")
