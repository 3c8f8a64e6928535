"""batchify and bptt slicing behave as in the tutorial (which is seq-first)."""

from __future__ import annotations

import pytest
import torch

from lmx.data.batching import batch_starts, batchify, get_batch
from lmx.errors import DataError


def tutorial_batchify(data, bsz):  # the tutorial's code, [len, bsz]
    seq_len = data.size(0) // bsz
    return data[: seq_len * bsz].view(bsz, seq_len).t().contiguous()


def tutorial_get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def test_batchify_is_the_tutorials_transposed():
    stream = torch.arange(103)
    ours = batchify(stream, 4)
    assert ours.shape == (4, 25)  # 3 trailing tokens dropped
    assert torch.equal(ours, tutorial_batchify(stream, 4).t())
    assert torch.equal(ours[1], torch.arange(25, 50))  # row j: the j-th contiguous chunk


def test_targets_are_inputs_shifted_by_one():
    source = batchify(torch.arange(100), 4)  # rows of 25
    starts = list(batch_starts(source, 7))
    assert starts == [0, 7, 14, 21]
    for i in starts:
        x, y = get_batch(source, i, 7)
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert torch.equal(y, x + 1)  # arange stream: next token is +1
        ref_x, ref_y = tutorial_get_batch(source.t(), i, 7)
        assert torch.equal(x, ref_x.t()) and torch.equal(
            y.flatten(), ref_y.view(-1, 4).t().flatten()
        )
    last_x, _ = get_batch(source, 21, 7)
    assert last_x.shape == (4, 3)  # the last batch is shorter: 25 - 1 - 21


def test_every_target_is_seen_exactly_once():
    source = batchify(torch.arange(1000), 10)
    seen = torch.cat([get_batch(source, i, 35)[1].flatten() for i in batch_starts(source, 35)])
    expected = torch.cat([row[1:] for row in source])
    assert torch.equal(seen.sort().values, expected.sort().values)


def test_too_small_split_is_a_clear_error():
    with pytest.raises(DataError, match="valid split has 5 tokens"):
        batchify(torch.arange(5), 10, "valid")
