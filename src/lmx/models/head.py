"""The output layer every model family shares (model.head): hidden states -> logits, or the
loss.

- `softmax`: a linear decoder over the whole vocabulary. Given targets, the cross-entropy goes
  through lmx.models.fused_loss (no fp32 logits) when the family's `fused_loss` is on.
- `adaptive`: Grave et al.'s adaptive softmax (torch's AdaptiveLogSoftmaxWithLoss): the
  `cutoffs[0]` most frequent ids in a full-size head, the rarer ones in clusters whose
  projections shrink by `div_value` each. Training computes only the clusters a batch's
  targets fall in; the per-token losses are still exact (-log p of the target under the full
  distribution), and without targets `log_prob` gives all V exact log-probabilities, which
  serve as logits (a softmax of them is the model's distribution). It runs in fp32 (also
  under bf16 autocast), so its losses are as exact as the fused loss's. It needs ids in
  frequency order: lmx's word-level tokenizers give them that way (tested); the config rules
  refuse BPE, whose ids are in merge order. Every cluster joins the graph on every batch, so
  a cluster no target fell in gets a zero gradient rather than none: DDP's reducer waits for
  every parameter's gradient, and one process and several then train alike (a stateful
  optimizer, e.g. AdamW, steps such a cluster as it steps a full softmax's unhit rows).
- `AdaptiveInput` (model.adaptive_input): the embedding read from the adaptive head's own
  weights, as fairseq ties adaptive input to adaptive softmax (Baevski & Auli).

So the loop, evaluation and generation call every family the same way: model(ids) or
model(ids, targets, reduction).
"""

from __future__ import annotations

import torch
from torch import nn

from lmx.models.fused_loss import linear_cross_entropy, reduce_losses


class AdaptiveInput(nn.Module):
    """Token embeddings tied to an adaptive head: an id in the head's shortlist reads its row
    of the head's weight [D]; an id in cluster i reads its row of the cluster's output weight
    [D / div^(i+1)] and goes up to D through the transpose of the cluster's input projection.
    Frequent ids get full-size vectors, rare ones small ones, and the model has no [V, D]
    embedding of its own. All weights stay the head's (this module holds none)."""

    def __init__(self, decoder: nn.AdaptiveLogSoftmaxWithLoss):
        super().__init__()
        # A plain list: the head is the model's submodule already, and registering it here too
        # would save its weights twice in every checkpoint.
        self._head = [decoder]
        self.dim = decoder.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [B, T] -> embeddings [B, T, D], in fp32 like the head
        head = self._head[0]
        flat = ids.reshape(-1)  # [N]
        bounds = [0] + head.cutoffs  # torch's cutoffs end with the vocabulary size
        with torch.autocast(ids.device.type, enabled=False):
            out = head.head.weight.new_zeros(flat.numel(), self.dim)  # [N, D]
            for i in range(len(bounds) - 1):
                # The first band open below and the last above: an id outside [0, V) then
                # fails in F.embedding, as it would in nn.Embedding, instead of reading zeros.
                low = flat >= bounds[i] if i > 0 else torch.ones_like(flat, dtype=torch.bool)
                band = low & (flat < bounds[i + 1]) if i < len(bounds) - 2 else low
                rows = band.nonzero().squeeze(1)
                local = flat.index_select(0, rows) - bounds[i]  # [n] ids within the band
                if i == 0:  # the shortlist: rows 0..cutoffs[0]-1 of the head are its words
                    vectors = nn.functional.embedding(local, head.head.weight)  # [n, D]
                else:
                    proj, out_proj = head.tail[i - 1]  # [h, D], [band, h]
                    small = nn.functional.embedding(local, out_proj.weight)  # [n, h]
                    vectors = small @ proj.weight  # [n, D]
                out = out.index_copy(0, rows, vectors)
        return out.view(*ids.shape, self.dim)


def make_decoder(
    d_model: int,
    ntoken: int,
    head: str = "softmax",
    cutoffs: list[int] | None = None,
    div_value: float = 4.0,
    bias: bool = True,
) -> nn.Module:
    """The decoder for `head` (model.head): nn.Linear, or an AdaptiveLogSoftmaxWithLoss."""
    head = getattr(head, "value", head)  # the schema's Head enum, or its name
    if head == "softmax":
        return nn.Linear(d_model, ntoken, bias=bias)
    if head != "adaptive":
        raise ValueError(f"head={head!r} must be 'softmax' or 'adaptive'")
    cutoffs = list(cutoffs or [])
    if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] >= ntoken:
        raise ValueError(f"model.cutoffs={cutoffs} must increase and lie in [1, {ntoken - 1}] "
                         f"for a vocabulary of {ntoken}")  # fmt: skip
    return nn.AdaptiveLogSoftmaxWithLoss(d_model, ntoken, cutoffs, div_value, head_bias=bias)


def adaptive_input(decoder: nn.Module) -> AdaptiveInput:
    """The embedding for model.adaptive_input=true: tied to the adaptive head."""
    if not isinstance(decoder, nn.AdaptiveLogSoftmaxWithLoss):
        raise ValueError("adaptive_input needs head=adaptive: it reads the head's weights")
    return AdaptiveInput(decoder)


def tie(decoder: nn.Module, embedding: nn.Embedding) -> None:
    """The decoder's weight becomes the embedding's (Press & Wolf): softmax head only."""
    if not isinstance(decoder, nn.Linear):
        raise ValueError("tie_weights needs head=softmax: an adaptive head has no [V, D] matrix")
    decoder.weight = embedding.weight


def decode(
    x: torch.Tensor,
    decoder: nn.Module,
    targets: torch.Tensor | None,
    reduction: str = "mean",
    fused: bool = True,
) -> torch.Tensor:
    # x: [B, T, D] hidden states; targets: [B, T] next-token ids or None
    # returns logits [B, T, V] without targets; else the loss: mean or sum (a scalar), or
    # per-token losses [B, T] with reduction="none"
    if isinstance(decoder, nn.AdaptiveLogSoftmaxWithLoss):
        return _adaptive(x, decoder, targets, reduction)
    if targets is None:
        return decoder(x)
    if fused:
        return linear_cross_entropy(x, decoder.weight, decoder.bias, targets, reduction)
    logits = decoder(x)  # [B, T, V]
    loss = nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction
    )
    return loss.view(targets.shape) if reduction == "none" else loss


def _adaptive(x, decoder: nn.AdaptiveLogSoftmaxWithLoss, targets, reduction: str):
    B, T, D = x.shape
    # In fp32, outside autocast: torch's module mixes dtypes under bf16 autocast, and its
    # matmuls are small (the head and the clusters a batch needs) next to a full softmax's.
    with torch.autocast(x.device.type, enabled=False):
        flat = x.reshape(B * T, D).float()  # [N, D]
        if targets is None:
            return decoder.log_prob(flat).view(B, T, -1)  # exact log-probabilities [B, T, V]
        # .output: log p(target) per row [N], from the head and the target's cluster only
        losses = -decoder(flat, targets.reshape(-1)).output
        if torch.is_grad_enabled():  # + 0: an unhit cluster gets a zero gradient, not none
            losses = losses + sum(p.sum() for p in decoder.tail.parameters()) * 0.0
    return reduce_losses(losses, reduction, targets.shape)
