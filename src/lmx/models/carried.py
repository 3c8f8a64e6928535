"""State that a model carries from one bptt window to the next (a recurrent family's hidden
state), and the helpers the loop, evaluation and checkpoints use on it.

A model that carries state sets `carries_state = True` and keeps it in `model.state`: None
(start from zeros) or a tensor, or a tuple of tensors, whose dim 1 is the batch row, as
torch's RNNs take it. Its forward reads the state and leaves the new one there, detached
(pytorch/examples' repackage_hidden): gradients stop at the window's start. Every other model
has no `state`, and each helper here is then a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def carries_state(model: torch.nn.Module) -> bool:
    return bool(getattr(_inner(model), "carries_state", False))


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP wraps the model


def get_state(model: torch.nn.Module) -> Any:
    """The carried state, copied to the CPU (a checkpoint's copy: it must not change with
    the run, and every rank's is gathered on rank 0)."""
    state = getattr(_inner(model), "state", None) if carries_state(model) else None
    return _map(state, lambda t: t.detach().to("cpu", copy=True))


def set_state(model: torch.nn.Module, state: Any) -> None:
    if carries_state(model):
        device = next(_inner(model).parameters()).device
        _inner(model).state = _map(state, lambda t: t.to(device))


def peek_state(model: torch.nn.Module) -> Any:
    """The carried state as it is (no copy: a forward replaces it, never changes it in place),
    to put back with set_state when a step is thrown away."""
    return getattr(_inner(model), "state", None) if carries_state(model) else None


def reset_state(model: torch.nn.Module) -> None:
    """The next window starts from zeros (an epoch's start, as pytorch/examples' init_hidden)."""
    set_state(model, None)


@contextmanager
def fresh_state(model: torch.nn.Module) -> Iterator[None]:
    """Inside: the model starts from zeros (an evaluation pass); after: the state it had
    before is back, so that validation in mid-epoch leaves training's state as it was."""
    saved = getattr(_inner(model), "state", None)
    reset_state(model)
    try:
        yield
    finally:
        if carries_state(model):
            _inner(model).state = saved


def _map(state: Any, fn) -> Any:
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    return tuple(fn(t) for t in state)
