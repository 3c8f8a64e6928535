"""The tutorial's batchify and bptt slicing, batch-first.

A split is one contiguous token stream. batchify cuts it into `bsz` equal rows (row j holds the
j-th contiguous chunk, the tutorial's column j); a step reads `bptt` positions from every row,
and its targets are the same positions shifted by one.
"""

from __future__ import annotations

import torch

from lmx.errors import DataError


def batchify(stream: torch.Tensor, bsz: int, name: str = "split", bptt: int = 1) -> torch.Tensor:
    """[N] -> [bsz, N // bsz]; the N % bsz trailing tokens are dropped, as in the tutorial.

    The split must fill at least one whole step: bsz rows of bptt inputs plus one target.
    """
    length = stream.size(0) // bsz
    if length < bptt + 1:
        rows = "data.batch_size" if name == "train" else "data.eval_batch_size"
        raise DataError(
            f"the {name} split has {stream.size(0)} tokens: too few for one batch of {bsz} rows "
            f"x (bptt {bptt} + 1) = {bsz * (bptt + 1)} tokens; lower {rows} or data.bptt"
        )
    return stream[: length * bsz].view(bsz, length)


def batch_starts(source: torch.Tensor, bptt: int) -> range:
    """Start positions 0, bptt, 2*bptt, ... of the steps over a batchified split."""
    return range(0, source.size(1) - 1, bptt)


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [bsz, T] = positions i..i+T-1, targets [bsz, T] = positions i+1..i+T, as int64.

    T = bptt, except for the last step of a split, which is shorter. The source stays in its
    compact dtype (uint16 or int32 from the token cache); only the batch is widened.
    """
    seq_len = min(bptt, source.size(1) - 1 - i)
    return source[:, i : i + seq_len].long(), source[:, i + 1 : i + 1 + seq_len].long()


def num_steps(source: torch.Tensor, bptt: int, limit: int | None = None) -> int:
    """How many steps a pass over a batchified split takes: all of them, or the first `limit`."""
    n = len(batch_starts(source, bptt))
    return n if limit is None else min(n, limit)
