"""The output layer every model family shares: hidden states -> logits, or the loss.

Given targets it returns the cross-entropy (through lmx.models.fused_loss, which never builds
fp32 logits, when `fused`); without targets, the logits. So the loop, evaluation and
generation call every family the same way: model(ids) or model(ids, targets, reduction).
"""

from __future__ import annotations

import torch
from torch import nn

from lmx.models.fused_loss import linear_cross_entropy


def decode(
    x: torch.Tensor,
    decoder: nn.Linear,
    targets: torch.Tensor | None,
    reduction: str = "mean",
    fused: bool = True,
) -> torch.Tensor:
    # x: [B, T, D] hidden states; targets: [B, T] next-token ids or None
    # returns logits [B, T, V] without targets; else the mean loss (a scalar), or per-token
    # losses [B, T] with reduction="none"
    if targets is None:
        return decoder(x)
    if fused:
        return linear_cross_entropy(x, decoder.weight, decoder.bias, targets, reduction)
    logits = decoder(x)  # [B, T, V]
    loss = nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction
    )
    return loss if reduction == "mean" else loss.view(targets.shape)
