"""Validation loss of consecutive SGD iterates: the steadier way to compare two settings.

At the tutorial's SGD lr 5.0 (gradient clipped to 0.5) every step moves the model far: on
WikiText-2 the validation perplexity of consecutive models of one run differs a lot
(docs/benchmarks.md gives the measured spread). A figure such as "valid ppl after 1000 steps"
then says more about where a run happened to stop than about the setting. The mean
validation loss of several consecutive models, on a fixed slice of the validation split,
keeps the step count (the same steps for every setting) and averages the swing out.
`lmx.bench` and `benchmarks/val_noise.py` use it.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from lmx.data.batching import batch_starts, get_batch
from lmx.data.streams import streams
from lmx.perplexity import evaluate
from lmx.runtime.device import autocast
from lmx.training.optim import build_optimizer
from lmx.training.step import clip_grad_norm


def train_valid_rows(cfg: DictConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's train and valid rows (lmx.data.streams), as iterate_losses takes them."""
    rows = streams(cfg.data, ("train", "valid"), device).rows
    return rows["train"], rows["valid"]


def iterate_losses(
    model: torch.nn.Module,
    cfg: DictConfig,
    train: torch.Tensor,
    valid: torch.Tensor,
    device: torch.device,
    done: int,
    count: int,
    batches: int,
    lr: float | None = None,
) -> list[float]:
    """Validation losses of `count` consecutive models: `model` (trained for `done` steps of
    the run `cfg` describes), then the model after each of `count - 1` more steps.

    The extra steps take the run's next batches (`train`, as lmx.data.streams gives it, wrapping
    around after whole epochs), its precision and gradient clip, and a fresh optimizer at `lr`
    (the run's lr where it stopped, e.g. after a scheduler's decay; default: the configured
    lr), held for the few steps. So plain SGD only: a stateful optimizer would need its saved
    state. Each model is scored on the first `batches` bptt windows of `valid`.
    """
    if not cfg.optim._target_.endswith(".SGD") or cfg.optim.get("momentum", 0):
        raise ValueError("iterate_losses continues plain SGD runs only (no optimizer state)")
    bptt, precision = cfg.data.bptt, cfg.device.precision
    optimizer = build_optimizer(cfg.optim, model)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    torch.manual_seed(cfg.trainer.seed + done)  # the extra steps' dropout masks
    starts = batch_starts(train, bptt)
    score = dict(precision=precision, limit=batches,
                 tokens_per_forward=cfg.trainer.eval_tokens_per_forward)  # fmt: skip
    losses = [evaluate(model, valid, bptt, device, **score).loss]
    for k in range(count - 1):
        model.train()
        data, targets = get_batch(train, starts[(done + k) % len(starts)], bptt)
        with autocast(device, precision):
            loss = model(data, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.trainer.grad_clip
        clip_grad_norm(model.parameters(), clip if clip is not None else math.inf)  # as trainer
        optimizer.step()
        losses.append(evaluate(model, valid, bptt, device, **score).loss)
    return losses
