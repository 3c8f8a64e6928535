"""lmx's own training step in a timed loop, on one batch of random token ids with the
WikiText-2 vocabulary: the harness benchmarks/keep_heap.py and benchmarks/step_parts.py share.

The step is training.step.train_step as the trainer calls it without a per-step check (the
config's autocast, optimizer and trainer.grad_clip). Random ids repeat less than text does,
which makes a sparse embedding gradient somewhat dearer than in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from hydra.utils import instantiate

from lmx.config.compose import compose
from lmx.runtime.device import apply_settings
from lmx.runtime.distributed import World
from lmx.training.optim import build_optimizer
from lmx.training.step import make_scaler, train_step

WT2_TYPES = 28782


def step_loop(overrides: list[str], ntoken: int = WT2_TYPES) -> Callable[[int], float]:
    """The config of `overrides`, its device settings applied (threads, keep_heap) before
    anything is allocated, its model and optimizer built from seed 0; returns run(n): the
    seconds n steps take."""
    cfg = compose(overrides)
    device = torch.device("cpu")
    apply_settings(device, cfg.device)
    torch.manual_seed(0)
    model = instantiate(cfg.model, ntoken=ntoken).train()
    params = list(model.parameters())
    optimizer = build_optimizer(cfg.optim, model)
    scaler = make_scaler(device, cfg.device.precision)
    x, y = torch.randint(0, ntoken, (2, cfg.data.batch_size, cfg.data.bptt))

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            train_step(model, params, optimizer, scaler, x, y, cfg.device.precision,
                       cfg.trainer.grad_clip, World(), False, check=False)  # fmt: skip
        return time.perf_counter() - start

    return run
