"""Perplexity of a model over a batchified split: the figure every lmx command reports.

Perplexity is exp(mean token cross-entropy), as in the tutorial. Each bptt window is scored
on its own; several windows are stacked into one forward of up to `tokens_per_forward`
tokens, which gives the same numbers (up to float rounding) with larger, faster matmuls.
A `Score` carries how many tokens were scored out of how many a full pass scores, so a
partial evaluation (`trainer.limit_eval_batches`) is labelled wherever it is shown, and how
the windows were laid (`mode`).

With `eval.stride` the windows overlap (HF's "perplexity of fixed-length models"): windows of
`context` tokens advance by `stride` along each row, the first scores all its tokens and each
next one only its last `stride`, so every token is scored once with at least
context - stride tokens before it. A model that carries state from window to window (a
recurrent one, lmx.models.carried) needs no overlap: it scores the non-overlapping windows one
after another, from a zero state at the split's start, each token with all that came before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmx.config.schema import Precision
from lmx.errors import ConfigError
from lmx.models.carried import carries_state, fresh_state
from lmx.runtime.device import autocast


def ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


@dataclass(frozen=True)
class Score:
    loss: float  # mean token cross-entropy over the tokens scored
    tokens: int  # tokens scored
    total: int  # tokens a pass over the whole split scores
    mode: str = ""  # how the windows were laid, e.g. "windows of 35 tokens, no overlap"

    @property
    def ppl(self) -> float:
        return ppl(self.loss)

    @property
    def partial(self) -> bool:
        return self.tokens < self.total

    def coverage(self) -> str:
        """'' for a whole split in the tutorial's windows; else what differs, e.g.
        ' (partial: 7,000 of 217,646 tokens)' or ' (windows of 64 tokens every 32)'."""
        notes = [f"partial: {self.tokens:,} of {self.total:,} tokens"] if self.partial else []
        notes += [self.mode] if "every" in self.mode else []  # overlapping windows
        return f" ({'; '.join(notes)})" if notes else ""


def window_plan(length: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, new) of each window over a row of `length` tokens: inputs start..end-1,
    targets start+1..end, of which the last `new` are scored (not scored by a window before).
    """
    plan, start, scored = [], 0, 0  # scored: targets 1..scored are done
    while scored < length - 1:
        end = min(start + context, length - 1)
        plan.append((start, end, end - scored))
        scored, start = end, start + stride
    return plan


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
    context: int | None = None,
    stride: int | None = None,
) -> Score:
    """Mean token cross-entropy over `source` [rows, length] (its first `limit` windows).

    Without `stride`: non-overlapping windows of `context` (default `bptt`) tokens, the
    tutorial's evaluation. With it: overlapping windows (module docstring). Under torchrun
    each rank scores its rows and `reduce` sums (loss total, tokens, tokens of a full pass)
    over the ranks.
    """
    model.eval()
    source = source.to(device)
    context = context or bptt
    stride = stride or context
    if not 1 <= stride <= context:
        raise ConfigError(f"eval.stride={stride} must be in [1, eval.context={context}]")
    stateful = carries_state(model)
    if stateful and stride != context:
        raise ConfigError(f"eval.stride={stride}: a model that carries its state from window to "
                          "window scores non-overlapping windows")  # fmt: skip
    plan = window_plan(source.size(1), context, stride)[:limit]
    # A carried state runs the windows one after another, each from the last one's state.
    per_forward = 1 if stateful else max(1, tokens_per_forward // (source.size(0) * context))
    # Windows of the same shape (length, tokens scored) are stacked into one forward.
    groups: list[list[tuple[int, int, int]]] = []
    for window in plan:
        same = groups and len(groups[-1]) < per_forward and _shape(groups[-1][0]) == _shape(window)
        groups[-1].append(window) if same else groups.append([window])
    with fresh_state(model):  # from zeros; a training state in mid-epoch is kept aside
        total, count = _score(model, source, groups, device, precision)
    whole = source.size(0) * (source.size(1) - 1)  # every position but the first is a target
    if reduce is not None:
        total, count, whole = reduce([total, count, whole])
    mode = (f"windows of {context} tokens, state carried" if stateful
            else f"windows of {context} tokens, no overlap" if stride == context
            else f"windows of {context} tokens every {stride}")  # fmt: skip
    return Score(loss=total / count, tokens=int(count), total=int(whole), mode=mode)


def _score(model, source, groups, device, precision) -> tuple[float, int]:
    """(summed loss, tokens scored) over the groups of windows, in order."""
    total, count = 0.0, 0
    for group in groups:
        # [len(group) * rows, T], widened from the source's compact dtype
        data = torch.cat([source[:, a:b] for a, b, _ in group]).long()
        targets = torch.cat([source[:, a + 1 : b + 1] for a, b, _ in group]).long()
        new = group[0][2]
        with autocast(device, precision):
            if new == targets.size(1):  # every target scored: the mean is enough
                loss = model(data, targets)
                total += loss.item() * targets.numel()
            else:
                losses = model(data, targets, reduction="none")[
                    :, -new:
                ]  # [len(group) * rows, new]
                total += losses.double().sum().item()
        count += targets.size(0) * new
    return total, count


def _shape(window: tuple[int, int, int]) -> tuple[int, int]:
    start, end, new = window
    return end - start, new
