"""Sampling: top-p keeps to the nucleus, the repetition penalty, and GPT's KV cache gives the
logits of a full forward."""

from __future__ import annotations

import pytest
import torch

from lmx.generate import _penalize, _pick, sample
from lmx.models.gpt import GPT


def test_top_p_draws_only_from_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    generator = torch.Generator().manual_seed(0)
    # p=0.7: the two most likely (0.5, then 0.3: 0.8 >= 0.7) form the nucleus
    drawn = [_pick(logits.clone(), 1.0, 0, generator, top_p=0.7) for _ in range(2000)]
    assert set(drawn) == {1, 3}
    share = drawn.count(1) / len(drawn)  # renormalized: 0.5 / 0.8
    assert abs(share - 0.625) < 0.04
    drawn = [_pick(logits.clone(), 1.0, 0, generator, top_p=0.95) for _ in range(2000)]
    assert set(drawn) == {1, 2, 3}  # 0.5 + 0.3 + 0.15 = 0.95
    assert {_pick(logits.clone(), 1.0, 0, generator, top_p=0.4) for _ in range(200)} == {1}


def test_the_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    out = _penalize(logits, [0, 1, 0], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0] and logits[0] == 2.0  # a copy


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_the_kv_cache_gives_the_logits_of_a_full_forward(positions):
    torch.manual_seed(0)
    model = GPT(50, d_model=16, nhead=2, d_hid=32, nlayers=2, positions=positions, max_len=32)
    model.eval()
    ids = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        full = model(ids)  # [1, 12, V]
        cache = model.new_cache()
        parts = [model(ids[:, :5], cache=cache)]  # the prompt at once
        parts += [model(ids[:, t : t + 1], cache=cache) for t in range(5, 9)]  # one by one
        parts.append(model(ids[:, 9:], cache=cache))  # and a chunk after a cache
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_sampling_with_the_cache_slides_its_window():
    torch.manual_seed(0)
    model = GPT(30, d_model=16, nhead=2, d_hid=32, nlayers=1, max_len=8).eval()
    calls = []
    forward = model.forward

    def counting(src, *args, **kwargs):
        calls.append(src.size(1))
        return forward(src, *args, **kwargs)

    model.forward = counting
    new = sample(model, [1, 2, 3], max_new_tokens=20, context=8, temperature=0)
    assert len(new) == 20
    # the prompt, then one token per step, and half a window again each time the cache is full
    assert calls[0] == 3 and set(calls[1:]) <= {1, 4} and 4 in calls
