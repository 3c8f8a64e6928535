"""An exponential moving average of the weights (trainer.ema.decay): after every optimizer step
from `start_step` on, avg <- decay * avg + (1 - decay) * weights.

At the tutorial's lr 5.0 consecutive models differ a lot in validation ppl; their average is
the direct fix. The average is what the loop validates, keeps as best and tests; the model's
own (raw) weights go on training and are what a resume continues from. Checkpoints hold both:
`model` the raw weights, `ema` the average, and a reader that scores a checkpoint uses the
average (Checkpoint.eval_weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float | None, start_step: int = 0):
        self.model, self.decay, self.start_step = model, decay, start_step
        # Every name of every parameter, tied ones included (their copies stay equal), so
        # that the average loads over a state_dict whatever order it is loaded in.
        self.names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
        self.weights: dict[str, torch.Tensor] | None = None
        if decay is not None:
            self.weights = {n: p.detach().clone() for n, p in self._params()}

    @property
    def on(self) -> bool:
        return self.weights is not None

    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.model.named_parameters(remove_duplicate=False))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step`: up to start_step the average is the weights."""
        if not self.on:
            return
        avg = [self.weights[n] for n in self.names]
        params = [p.detach() for _, p in self._params()]
        if step <= self.start_step:
            torch._foreach_copy_(avg, params)
        else:
            torch._foreach_lerp_(avg, params, 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the average (if there is one); after it, its own
        weights again, unchanged."""
        if not self.on:
            yield
            return
        params = dict(self._params())
        raw = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.weights[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(raw[n])

    def state_dict(self) -> dict[str, Any] | None:
        if not self.on:
            return None
        return {"weights": self.weights, "decay": self.decay, "start_step": self.start_step}

    def load_state_dict(self, state: dict[str, Any] | None) -> bool:
        """The saved average; where the checkpoint has none (EMA switched on when resuming)
        the average restarts from the model's weights, as they are now, and this says False."""
        if not self.on:
            return False
        params = dict(self._params())
        with torch.no_grad():
            for n in self.names:
                self.weights[n].copy_(state["weights"][n] if state else params[n])
        return bool(state)
