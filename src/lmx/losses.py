"""Cross-entropy of a linear decoder that never builds fp32 logits or a log-softmax tensor.

With a large vocabulary the decoder's output dominates a step: for the tutorial model on CPU,
converting [B*T, V] logits to fp32 and running log-softmax forward and backward over them
cost more than the matmuls. Here the logits are made once in the compute dtype, then a loop
over small row chunks (which stay in cache) turns each chunk into softmax - one_hot in place,
so the same buffer becomes d loss / d logits. The gradients of hidden, weight and bias are
taken right away, in the forward, and the backward only scales them. Without grad (eval), only
the per-token losses are computed.

The loss is exact: softmax and log are taken in fp32 from the chunk's logits.
"""

from __future__ import annotations

import torch

# Rows per chunk: [64, V] fp32 is ~7 MB at V = 28,782; larger chunks fall out of cache.
CHUNK_ROWS = 64
_TINY = 1e-30  # below this p(target) loses precision in fp32; such rows use logsumexp


def _token_losses(logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor):
    """-log p(target) per row; rows where p(target) underflowed are redone with logsumexp."""
    rows = torch.arange(logits.size(0), device=logits.device)
    p_target = probs[rows, targets]
    losses = -torch.log(p_target)
    tiny = p_target < _TINY
    if tiny.any():
        x = logits[tiny].float()
        losses[tiny] = torch.logsumexp(x, dim=1) - x.gather(1, targets[tiny, None]).squeeze(1)
    return losses, rows


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, dtype):
        # hidden [N, D], weight [V, D], bias [V] or None, targets [N] -> losses [N] (fp32)
        n = hidden.size(0)
        h, w = hidden.to(dtype), weight.to(dtype)
        logits = h @ w.t()  # [N, V]; the bias is added per chunk, in fp32
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        want_grad = any(ctx.needs_input_grad[:3])
        bias32 = bias.float() if bias is not None else None
        grad_bias = torch.zeros_like(bias32) if bias is not None and want_grad else None
        for start in range(0, n, CHUNK_ROWS):
            end = min(start + CHUNK_ROWS, n)
            chunk, t = logits[start:end], targets[start:end]
            # .float() aliases an fp32 chunk, which is overwritten below anyway
            scores = chunk.float() if bias32 is None else chunk.float().add_(bias32)  # [c, V]
            if not want_grad:  # eval: logsumexp only, no probabilities written
                rows = torch.arange(scores.size(0), device=scores.device)
                losses[start:end] = torch.logsumexp(scores, dim=1) - scores[rows, t]
                continue
            probs = torch.softmax(scores, dim=1)
            losses[start:end], rows = _token_losses(scores, probs, t)
            probs[rows, t] -= 1.0  # d(sum of losses)/d logits = softmax - one_hot
            if grad_bias is not None:
                grad_bias += probs.sum(0)  # while the chunk is in cache
            chunk.copy_(probs)
        if want_grad:
            grad_logits = logits  # [N, V], now d(sum of losses)/d logits
            ctx.save_for_backward(
                grad_logits @ w if ctx.needs_input_grad[0] else None,  # [N, D]
                (grad_logits.t() @ h).to(weight.dtype) if ctx.needs_input_grad[1] else None,
                grad_bias.to(bias.dtype) if grad_bias is not None else None,
            )
            ctx.input_dtypes = (hidden.dtype,)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        # The forward's gradients assume d loss_i = 1 for every row; scale by the real ones.
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        g = grad_losses.float()
        if bool((g == g[0]).all()):  # mean or sum: one scale (the common, cheap case)
            scale = g[0]
            grads = [None if x is None else x * scale.to(x.dtype) for x in ctx.saved_tensors]
            if grads[0] is not None:
                grads[0] = grads[0].to(ctx.input_dtypes[0])
            return grads[0], grads[1], grads[2], None, None
        raise NotImplementedError(
            "linear_cross_entropy's gradient supports sum or mean of the token losses only"
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """F.cross_entropy(F.linear(hidden, weight, bias), targets) without the fp32 logits.

    hidden [..., D], targets [...]. The compute dtype is the autocast dtype when autocast is on
    (the decoder matmuls run in it, as autocast would run F.linear), else hidden's dtype.
    """
    device_type = hidden.device.type
    dtype = (
        torch.get_autocast_dtype(device_type)
        if torch.is_autocast_enabled(device_type)
        else hidden.dtype
    )
    with torch.autocast(device_type, enabled=False):
        losses = _LinearCrossEntropy.apply(
            hidden.flatten(0, -2), weight, bias, targets.flatten(), dtype
        )
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    if reduction == "none":
        return losses.view(targets.shape)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
