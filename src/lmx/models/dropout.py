"""Dropout with the mask drawn by torch.rand, which is faster on CPU than bernoulli_; every
model family uses it, so a seed gives the same masks whichever family draws them. On a GPU it
is torch's own dropout: one fused kernel, where the CPU way would launch several and keep a
float mask."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return nn.functional.dropout(x, self.p, training=True)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # same law: P(keep) = 1 - p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))
