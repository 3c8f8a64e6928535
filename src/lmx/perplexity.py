"""Perplexity of a model over a batchified split: the figure every lmx command reports.

Perplexity is exp(mean token cross-entropy), as in the tutorial. Each bptt window is scored
on its own; several windows are stacked into one forward of up to `tokens_per_forward`
tokens, which gives the same numbers (up to float rounding) with larger, faster matmuls.
A `Score` carries how many tokens were scored out of how many a full pass scores, so a
partial evaluation (`trainer.limit_eval_batches`) is labelled wherever it is shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmx.config.schema import Precision
from lmx.data.batching import batch_starts, get_batch, num_steps
from lmx.runtime.device import autocast


def ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


@dataclass(frozen=True)
class Score:
    loss: float  # mean token cross-entropy over the tokens scored
    tokens: int  # tokens scored
    total: int  # tokens a pass over the whole split scores

    @property
    def ppl(self) -> float:
        return ppl(self.loss)

    @property
    def partial(self) -> bool:
        return self.tokens < self.total

    def coverage(self) -> str:
        """'' for a whole split; else ' (partial: 7,000 of 217,646 tokens)'."""
        return f" (partial: {self.tokens:,} of {self.total:,} tokens)" if self.partial else ""


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    source: torch.Tensor,
    bptt: int,
    device: torch.device,
    precision: Precision = Precision.fp32,
    limit: int | None = None,
    tokens_per_forward: int = 1,
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> Score:
    """Mean token cross-entropy over `source` [rows, length] (its first `limit` windows).

    Under torchrun each rank scores its rows and `reduce` sums (loss total, tokens, tokens of
    a full pass) over the ranks.
    """
    model.eval()
    source = source.to(device)
    starts = list(batch_starts(source, bptt)[: num_steps(source, bptt, limit)])
    per_forward = max(1, tokens_per_forward // (source.size(0) * bptt))
    # Full-length windows are stacked; a shorter last window goes alone.
    full = [i for i in starts if i + bptt < source.size(1)]
    groups = [full[k : k + per_forward] for k in range(0, len(full), per_forward)]
    groups += [[i] for i in starts[len(full) :]]
    total, count = 0.0, 0
    for group in groups:
        pairs = [get_batch(source, i, bptt) for i in group]
        data = torch.cat([d for d, _ in pairs])  # [len(group) * rows, T]
        targets = torch.cat([t for _, t in pairs])
        with autocast(device, precision):
            loss = model(data, targets)  # mean over the forward's tokens
        total += loss.item() * targets.numel()
        count += targets.numel()
    whole = source.size(0) * (source.size(1) - 1)  # every position but the first is a target
    if reduce is not None:
        total, count, whole = reduce([total, count, whole])
    return Score(loss=total / count, tokens=int(count), total=int(whole))
