"""Cross-entropy of a linear decoder that never builds fp32 logits or a log-softmax tensor.

With a large vocabulary the decoder's output dominates a step: for the tutorial model on CPU,
converting [B*T, V] logits to fp32 and running log-softmax forward and backward over them
cost more than the matmuls. Here the logits are made once in the compute dtype, then a loop
over small row chunks (which stay in cache) turns each chunk into softmax - one_hot in place,
so the same buffer becomes d loss / d logits. The gradients of hidden, weight and bias are
taken right away, in the forward. The reduction's scale (1/N for a mean) is applied to each
chunk while it is in cache, so for a plain mean or sum the backward returns them untouched;
any other uniform scale (e.g. a loss scaler's) costs one multiply. Without grad (eval), only
the per-token losses are computed.

The loss is exact: softmax and log are taken in fp32 from the chunk's logits.
"""

from __future__ import annotations

import torch

# Rows per chunk: [64, V] fp32 is ~7 MB at V = 28,782; larger chunks fall out of cache.
CHUNK_ROWS = 64
_TINY = 1e-30  # below this p(target) loses precision in fp32; such rows use logsumexp


_SCRATCH: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _scratch(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised [rows, cols] buffer for the logits, reused from call to call on CPU.

    A fresh CPU allocation this large (40 MB for the tutorial's step) is mmap-ed by malloc and
    page-faulted in on first touch: measured here, that doubled the decoder's forward matmul
    (~20 ms instead of ~10 ms). The buffer only lives inside one forward, so one per dtype
    and device is enough; it grows to the largest call (eval's stacked windows) and is kept.
    CUDA's caching allocator already reuses memory, so CUDA gets a plain allocation.
    """
    if device.type != "cpu":
        return torch.empty(rows, cols, dtype=dtype, device=device)
    buf = _SCRATCH.get((dtype, device))
    if buf is None or buf.numel() < rows * cols:
        with torch.inference_mode(False):  # made in eval, it must still be writable in training
            buf = torch.empty(rows * cols, dtype=dtype, device=device)
        _SCRATCH[(dtype, device)] = buf
    return buf[: rows * cols].view(rows, cols)


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
    def forward(ctx, hidden, weight, bias, targets, dtype, grad_scale):
        # hidden [N, D], weight [V, D], bias [V] or None, targets [N] -> losses [N] (fp32)
        # grad_scale: the d loss / d losses[i] the backward will most likely get (1/N: mean)
        n = hidden.size(0)
        h, w = hidden.to(dtype), weight.to(dtype)
        # [N, V]; the bias is added per chunk, in fp32
        logits = torch.mm(h, w.t(), out=_scratch(n, weight.size(0), dtype, hidden.device))
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
            # d(loss)/d logits for the expected reduction, into the logits' place (two passes
            # in cache beat one mixed-dtype torch.mul(out=chunk), measured)
            chunk.copy_(probs.mul_(grad_scale) if grad_scale != 1.0 else probs)
        if want_grad:
            grad_logits = logits  # [N, V], now grad_scale * d(sum of losses)/d logits
            ctx.save_for_backward(
                grad_logits @ w if ctx.needs_input_grad[0] else None,  # [N, D]
                (grad_logits.t() @ h).to(weight.dtype) if ctx.needs_input_grad[1] else None,
                grad_bias.mul_(grad_scale).to(bias.dtype) if grad_bias is not None else None,
            )
            ctx.input_dtypes = (hidden.dtype,)
            ctx.grad_scale = grad_scale
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        # The forward's gradients assume d loss / d losses[i] = grad_scale for every row.
        g = grad_losses.float()
        if bool((g == g[0]).all()):  # one scale for all rows: mean or sum, maybe scaled
            grads = list(ctx.saved_tensors)
            ratio = (g[0] / torch.tensor(ctx.grad_scale, dtype=g.dtype)).item()
            if ratio != 1.0:  # not the reduction the forward expected
                grads = [None if x is None else x * ratio for x in grads]
            if grads[0] is not None:
                grads[0] = grads[0].to(ctx.input_dtypes[0])
            return grads[0], grads[1], grads[2], None, None, None
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
    shape = targets.shape
    dtype = (
        torch.get_autocast_dtype(device_type)
        if torch.is_autocast_enabled(device_type)
        else hidden.dtype
    )
    targets = targets.flatten()
    # fp16 would flush the scaled probabilities (~1/(V*N)) to zero; bf16 has fp32's range
    fold = reduction == "mean" and dtype != torch.float16
    grad_scale = 1.0 / max(targets.numel(), 1) if fold else 1.0
    with torch.autocast(device_type, enabled=False):
        losses = _LinearCrossEntropy.apply(
            hidden.flatten(0, -2), weight, bias, targets, dtype, grad_scale
        )
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    if reduction == "none":
        return losses.view(shape)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
