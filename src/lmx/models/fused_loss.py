"""Cross-entropy of a linear decoder that never builds fp32 logits or a log-softmax tensor.

With a large vocabulary the decoder's output dominates a step: for the tutorial model on CPU,
converting [B*T, V] logits to fp32 and running log-softmax forward and backward over them
cost more than the matmuls. Here the logits are made once in the compute dtype, then a loop
over small row chunks (which stay in cache) turns each chunk into softmax - one_hot in place,
so the same buffer becomes d loss / d logits. The gradients of hidden, weight and bias are
taken right away, in the forward. The reduction's scale (1/N for a mean) is applied to each
chunk while it is in cache; the backward multiplies them by the scale it gets over that one
(exactly 1 for a plain mean or sum), on the device: nothing in the loss reads a value back
to the host, so a GPU never waits on it.

Without grad (evaluation: grad mode off, as under torch.inference_mode or no_grad) only the
per-token losses are computed: one matmul and a log-softmax per chunk, whether or not the
parameters require grad.

The loss is exact: softmax and log are taken in fp32 from the chunk's logits.

Under torch.compile, and on a GPU below PLAIN_LOGITS_BYTES of fp32 logits, the plain
expression runs instead (`_plain`): measured faster there, and traced whole.
"""

from __future__ import annotations

import torch

# Rows per chunk. On a CPU a [64, V] fp32 chunk of a word-level vocabulary stays in cache,
# where each pass over it is cheap (benchmarks/loss_chunks.py; docs/benchmarks.md has its
# figures for both development CPUs). A GPU wants few, large kernels instead.
CHUNK_ROWS = 64
CUDA_CHUNK_ROWS = 8192
# On a GPU the plain expression (logits, then F.cross_entropy) measured faster than the chunk
# loop (benchmarks/gpu_check.py; docs/benchmarks.md); the loop's gain there is memory only, so
# it takes over where the fp32 logits would pass this size.
PLAIN_LOGITS_BYTES = 2**30


def chunk_rows(device: torch.device) -> int:
    return CHUNK_ROWS if device.type == "cpu" else CUDA_CHUNK_ROWS


def _plain(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the plain expression serves this call better: under torch.compile (which fuses
    it, and traces it whole where the chunk loop would break the graph), and on a GPU up to
    PLAIN_LOGITS_BYTES of fp32 logits."""
    if torch.compiler.is_compiling():
        return True
    rows = hidden.numel() // max(hidden.size(-1), 1)
    return hidden.device.type == "cuda" and rows * weight.size(0) * 4 <= PLAIN_LOGITS_BYTES


_TINY = 1e-30  # below this p(target) loses precision in fp32: such rows take another way
_SCRATCH: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _scratch(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised [rows, cols] buffer for the logits, reused from call to call on CPU.

    A fresh CPU allocation this large (tens of MB for the tutorial's step) is mmap-ed by malloc
    and page-faulted in on first touch, which slows the decoder's forward matmul a lot (the
    docs/benchmarks.md has the figure). The buffer only lives inside one forward, so one
    per dtype and device is enough; it grows to the largest call (eval's stacked windows).
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


def _token_losses(scores: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor):
    """-log p(target) per row, without a host round-trip: where p(target) underflowed, the
    row's loss is taken from its largest probability instead, which never underflows
    (p_max >= 1/V): -log p(t) = -log p_max + max(scores) - scores[t]. Both forms are computed
    for every row and `torch.where` picks, so no branch reads the device."""
    rows = torch.arange(scores.size(0), device=scores.device)
    s_target = scores[rows, targets]
    p_target = probs[rows, targets]
    exact = (scores.amax(1) - s_target).sub_(torch.log(probs.amax(1)))
    losses = torch.where(p_target < _TINY, exact, -torch.log(p_target))
    return losses, rows


def _logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h [N, D] @ w [V, D]^T into the reused scratch buffer: [N, V] in h's dtype."""
    return torch.mm(h, w.t(), out=_scratch(h.size(0), w.size(0), h.dtype, h.device))


def _scores(chunk: torch.Tensor, bias32: torch.Tensor | None) -> torch.Tensor:
    """A chunk of logits in fp32, bias added (.float() aliases an fp32 chunk: it is scratch)."""
    return chunk.float() if bias32 is None else chunk.float().add_(bias32)


def _losses_only(hidden, weight, bias, targets, dtype) -> torch.Tensor:
    """-log p(target) per row with no gradient work: one matmul, then per chunk the target's
    entry of log_softmax (one fused kernel; torch.logsumexp makes a temporary per step and
    is several times slower). hidden [N, D] -> losses [N] (fp32)."""
    logits = _logits(hidden.to(dtype), weight.to(dtype))
    losses = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
    bias32 = bias.float() if bias is not None else None
    step = chunk_rows(hidden.device)
    for start in range(0, hidden.size(0), step):
        end = min(start + step, hidden.size(0))
        scores, t = _scores(logits[start:end], bias32), targets[start:end]
        rows = torch.arange(scores.size(0), device=scores.device)
        losses[start:end] = torch.log_softmax(scores, dim=1)[rows, t].neg_()
    return losses


def _chunk_grad(chunk, bias32, targets, grad_scale, grad_bias) -> torch.Tensor:
    """One chunk of logits [c, V], in place: returns its losses [c] (fp32) and leaves in the
    chunk grad_scale * d(sum of losses)/d logits = grad_scale * (softmax - one_hot), in the
    chunk's dtype; grad_bias (fp32 [V], or None) gains the unscaled column sums."""
    scores = _scores(chunk, bias32)  # [c, V] fp32
    probs = torch.softmax(scores, dim=1)
    losses, rows = _token_losses(scores, probs, targets)
    probs[rows, targets] -= 1.0
    if grad_bias is not None:
        grad_bias += probs.sum(0)  # while the chunk is in cache
    # into the logits' place (two passes in cache beat one mixed-dtype torch.mul(out=chunk);
    # computing in the chunk's bf16 instead did not pay: benchmarks/step_parts.py)
    chunk.copy_(probs.mul_(grad_scale) if grad_scale != 1.0 else probs)
    return losses


# In fp16 the forward's weight gradient is not folded by 1/N (see linear_cross_entropy), so a
# column of it sums up to one (softmax - one_hot) entry per row times the hidden: over many
# rows that passes fp16's 65,504, and an inf there is no loss-scale overflow (a smaller scale
# would not cure it: the GradScaler would skip every step). On a GPU torch's matmul can give
# an fp32 result of fp16 inputs; elsewhere row blocks this small keep each fp16 product below
# the limit unless the hidden passes 255 in size, and their sum is fp32.
FP16_WEIGHT_GRAD_ROWS = 256
_fp32_out_mm = True  # whether torch.mm(..., out_dtype=float32) is worth a try on a GPU


def _weight_grad(grad_logits: torch.Tensor, h: torch.Tensor, dtype: torch.dtype):
    """grad_logits [N, V]^T @ h [N, D] -> [V, D] in `dtype` (the weight's)."""
    if grad_logits.dtype != torch.float16:
        return (grad_logits.t() @ h).to(dtype)
    global _fp32_out_mm
    if h.device.type == "cuda" and _fp32_out_mm:
        try:  # one product, accumulated and returned in fp32
            return torch.mm(grad_logits.t(), h, out_dtype=torch.float32).to(dtype)
        except torch.OutOfMemoryError:
            pass  # the blocks below need less; the product is tried again next time
        except (NotImplementedError, RuntimeError, TypeError):
            _fp32_out_mm = False  # this torch or GPU has none: not tried again
    total = torch.zeros(grad_logits.size(1), h.size(1), dtype=torch.float32, device=h.device)
    for start in range(0, h.size(0), FP16_WEIGHT_GRAD_ROWS):
        block = slice(start, start + FP16_WEIGHT_GRAD_ROWS)
        total += grad_logits[block].t() @ h[block]
    return total.to(dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, dtype, grad_scale, uniform):
        # hidden [N, D], weight [V, D], bias [V] or None, targets [N] -> losses [N] (fp32)
        # grad_scale: the d loss / d losses[i] the backward will most likely get (1/N: mean)
        h, w = hidden.to(dtype), weight.to(dtype)
        logits = _logits(h, w)  # [N, V]; the bias is added per chunk, in fp32
        n = hidden.size(0)
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        bias32 = bias.float() if bias is not None else None
        grad_bias = torch.zeros_like(bias32) if ctx.needs_input_grad[2] else None
        step = chunk_rows(hidden.device)
        for start in range(0, n, step):
            end = min(start + step, n)
            losses[start:end] = _chunk_grad(
                logits[start:end], bias32, targets[start:end], grad_scale, grad_bias
            )
        grad_logits = logits  # [N, V], now grad_scale * d(sum of losses)/d logits
        ctx.save_for_backward(
            grad_logits @ w if ctx.needs_input_grad[0] else None,  # [N, D]
            _weight_grad(grad_logits, h, weight.dtype) if ctx.needs_input_grad[1] else None,
            grad_bias.mul_(grad_scale).to(bias.dtype) if grad_bias is not None else None,
        )
        ctx.input_dtypes = (hidden.dtype,)
        ctx.grad_scale, ctx.uniform, ctx.spent = grad_scale, uniform, False
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        # The forward's gradients assume d loss / d losses[i] = grad_scale for every row; a
        # mean or a sum of the losses (any multiple of one: a loss scaler's, a micro-batch's
        # share) gives one value for all rows, g[0], and the gradients are scaled by
        # g[0] / grad_scale on the device. A non-finite g[0] (a nan loss times something)
        # makes them non-finite, which the step then refuses. No value is read on the host.
        g = grad_losses.float()
        # reduction="none" only: the caller may weight the tokens; nan weights give nan grads
        weighted = not ctx.uniform and bool(torch.isfinite(g).all() & (g != g[0]).any())
        if weighted:
            raise NotImplementedError(
                "linear_cross_entropy's gradient supports sum or mean of the token losses only"
            )
        if ctx.spent:  # the gradients were scaled in place by the first backward
            raise RuntimeError("linear_cross_entropy's graph cannot be backpropagated twice")
        ctx.spent = True
        ratio = g[0] / ctx.grad_scale  # a 0-d tensor: exactly 1 for the expected reduction
        if not ctx.uniform:
            ratio = ratio + 0.0 * g.sum()  # a nan anywhere in g makes every gradient nan
        grads = [None if x is None else x.mul_(ratio) for x in ctx.saved_tensors]
        if grads[0] is not None:
            grads[0] = grads[0].to(ctx.input_dtypes[0])
        return grads[0], grads[1], grads[2], None, None, None, None


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

    Under torch.compile (device.compile=true), and on a GPU while the logits are not huge, it
    is that very expression (see _plain).
    """
    if _plain(hidden, weight):
        logits = torch.nn.functional.linear(hidden, weight, bias)  # [..., V]
        losses = torch.nn.functional.cross_entropy(
            logits.flatten(0, -2).float(), targets.flatten(), reduction=reduction
        )
        return losses.view(targets.shape) if reduction == "none" else losses
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
    # Grad mode, not requires_grad, says whether a gradient can follow: evaluation runs under
    # inference_mode with parameters that still require grad.
    wants_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (hidden, weight, bias)
    )
    with torch.autocast(device_type, enabled=False):
        if wants_grad:
            losses = _LinearCrossEntropy.apply(
                hidden.flatten(0, -2),
                weight,
                bias,
                targets,
                dtype,
                grad_scale,
                reduction != "none",  # a sum or mean: one d loss / d losses[i] for all rows
            )
        else:
            losses = _losses_only(hidden.flatten(0, -2), weight, bias, targets, dtype)
    return reduce_losses(losses, reduction, shape)


def reduce_losses(losses: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    """Per-token losses [N] -> their mean or sum (a scalar), or [*shape] for "none"."""
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    if reduction == "none":
        return losses.view(shape)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
