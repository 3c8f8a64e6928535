"""model.head=adaptive: exact log-probabilities, exact losses, the full softmax as its special
case, and the frequency order of ids that it relies on."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from conftest import compose_cfg, tiny_overrides
from lmx.config.rules import config_problems
from lmx.config.schema import Normalization, TokenizerConfig
from lmx.data.tokenizer import train_tokenizer
from lmx.errors import ConfigError
from lmx.models.gpt import GPT
from lmx.models.head import AdaptiveInput
from lmx.models.rnn import RNNLM
from lmx.models.transformer import TransformerLM
from lmx.train import train

V = 60


def adaptive_models():
    torch.manual_seed(0)
    common = dict(head="adaptive", cutoffs=[8, 30], div_value=2.0)
    return [
        TransformerLM(V, d_model=16, nhead=2, d_hid=32, nlayers=1, dropout=0.0, **common),
        RNNLM(V, "lstm", emsize=16, nhid=16, nlayers=1, dropout=0.0, **common),
        GPT(V, d_model=16, nhead=2, d_hid=32, nlayers=1, dropout=0.0, tie_weights=False, **common),
        GPT(V, d_model=16, nhead=2, d_hid=32, nlayers=1, dropout=0.0, tie_weights=False,
            adaptive_input=True, **common),
    ]  # fmt: skip


def _name(model):
    return type(model).__name__ + ("+input" if isinstance(_embedding(model), AdaptiveInput) else "")


def _embedding(model):
    return model.encoder if isinstance(model, RNNLM) else model.embedding


@pytest.mark.parametrize("model", adaptive_models(), ids=_name)
def test_log_prob_is_a_distribution_and_the_loss_is_its_nll(model):
    model.eval()
    ids, targets = torch.randint(0, V, (3, 9)), torch.randint(0, V, (3, 9))
    logp = model(ids)  # [3, 9, V]: exact log-probabilities over the whole vocabulary
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 9), rtol=0, atol=1e-5)
    model.state = None  # (the LSTM carries one; the others ignore it)
    losses = model(ids, targets, reduction="none")  # the cheap cluster path
    nll = -logp.gather(2, targets[..., None]).squeeze(2)
    torch.testing.assert_close(losses, nll, rtol=0, atol=1e-5)
    model.state = None
    assert model(ids, targets).item() == pytest.approx(nll.mean().item(), abs=1e-5)


def test_one_cluster_of_one_id_is_the_full_softmax():
    # Head over ids 0..V-2 plus one cluster logit, a cluster holding only id V-1: the head is a
    # [V, D] linear layer, and p(V-1) = p(cluster) * 1. With the same weights: the same model.
    torch.manual_seed(0)
    full = TransformerLM(V, d_model=16, nhead=2, d_hid=32, nlayers=1, dropout=0.0,
                         fused_loss=False)  # fmt: skip
    torch.manual_seed(0)
    adaptive = TransformerLM(V, d_model=16, nhead=2, d_hid=32, nlayers=1, dropout=0.0,
                             head="adaptive", cutoffs=[V - 1], div_value=1.0)  # fmt: skip
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("decoder.")}
    adaptive.load_state_dict(state, strict=False)
    adaptive.decoder.head.weight.data.copy_(full.decoder.weight)
    adaptive.decoder.head.bias.data.copy_(full.decoder.bias)
    ids, targets = torch.randint(0, V, (2, 10)), torch.randint(0, V, (2, 10))
    full.eval(), adaptive.eval()
    torch.testing.assert_close(adaptive(ids, targets, reduction="none"),
                               full(ids, targets, reduction="none"), rtol=0, atol=1e-5)  # fmt: skip
    torch.testing.assert_close(adaptive(ids), full(ids).log_softmax(-1), rtol=0, atol=1e-5)


def test_word_level_ids_are_in_frequency_order(corpus_dir):
    lines = (corpus_dir / "train.txt").read_text().splitlines()
    for normalization, eos in ((Normalization.basic_english, False), (Normalization.none, True)):
        cfg = TokenizerConfig(normalization=normalization, eos=eos)
        tok = train_tokenizer(cfg, lines)
        counts = Counter(i for line in lines for i in tok.encode(line).ids)
        specials = set(tok.get_added_tokens_decoder())
        ranked = [counts[i] for i in range(tok.get_vocab_size()) if i not in specials]
        assert ranked == sorted(ranked, reverse=True), normalization


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.tie_weights=true"], "model.head=adaptive needs model.tie_weights=false"),
        (["model.cutoffs=[100,50]"], "model.cutoffs=[100, 50] must be increasing"),
        (["data/tokenizer=bpe", "data.tokenizer.vocab_size=500"], "needs ids in frequency order"),
        (["model.div_value=16", "model.cutoffs=[5,10,20]"], "leaves the last of 3 clusters"),
        (["model.fused_loss=false"], "model.fused_loss=false has no effect with model.head="),
    ],
)
def test_adaptive_settings_are_checked(overrides, message):
    cfg = compose_cfg(["model.head=adaptive", *overrides])
    assert any(message in p for p in config_problems(cfg)), config_problems(cfg)


def test_cutoffs_beyond_the_vocabulary_are_refused_by_name(corpus_dir, cache_dir, tmp_path):
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, "model.head=adaptive",
                                     "model.cutoffs=[5,5000]"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"model.cutoffs=\[5, 5000\] must increase and lie in"):
        train(cfg, tmp_path / "run")


def test_adaptive_is_torchs_module():
    model = adaptive_models()[0]
    assert isinstance(model.decoder, nn.AdaptiveLogSoftmaxWithLoss)
    assert model.decoder.cutoffs == [8, 30, V]


def test_the_adaptive_head_works_in_fp32_under_bf16_autocast():
    model = adaptive_models()[0]
    ids, targets = torch.randint(0, V, (3, 9)), torch.randint(0, V, (3, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, targets)
        logp = model(ids)
    loss.backward()  # torch's module mixes dtypes under autocast; lmx runs it in fp32
    assert loss.dtype == logp.dtype == torch.float32
    assert model.decoder.head.weight.grad is not None


@pytest.mark.parametrize(
    "override", ["model.cutoffs=[100,200]", "model.div_value=2.0", "model.adaptive_input=true"]
)
def test_adaptive_settings_with_the_softmax_head_are_refused(override):
    key = override.split("=")[0]
    problems = config_problems(compose_cfg(["model=lstm", override]))
    assert any(p.startswith(f"{key}=") and "no effect with model.head=softmax" in p
               for p in problems), problems  # fmt: skip


@pytest.mark.parametrize("family", [TransformerLM, RNNLM, GPT], ids=lambda c: c.__name__)
def test_the_adaptive_input_is_the_heads_weights(family):
    sizes = dict(emsize=16, nhid=16) if family is RNNLM else dict(d_model=16, nhead=2, d_hid=32)
    common = dict(head="adaptive", cutoffs=[8, 30], div_value=2.0, nlayers=1, **sizes)
    untied = {} if family is not GPT else dict(tie_weights=False)
    torch.manual_seed(0)
    plain = family(V, **common, **untied)
    torch.manual_seed(0)
    model = family(V, **common, **untied, adaptive_input=True)
    head, embed = model.decoder, _embedding(model)
    ids = torch.tensor([[3, 8, 29, 30, 59]])  # the shortlist, cluster 1, cluster 2
    got = embed(ids)[0]  # [5, 16]
    (p1, o1), (p2, o2) = head.tail  # input projections [h, 16], output weights [band, h]
    want = torch.stack([head.head.weight[3], o1.weight[0] @ p1.weight,
                        o1.weight[21] @ p1.weight, o2.weight[0] @ p2.weight,
                        o2.weight[29] @ p2.weight])  # fmt: skip
    torch.testing.assert_close(got, want)
    # No [V, D] embedding of its own: fewer parameters by exactly that matrix, none saved twice.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(plain) - count(model) == V * 16
    assert not [k for k in model.state_dict() if k.startswith(("embedding.", "encoder.w"))]
    # The gradient of an embedding reaches the head's weights.
    embed(ids).sum().backward()
    assert head.head.weight.grad[3].abs().sum() > 0 and o2.weight.grad[29].abs().sum() > 0


def test_an_unhit_cluster_still_gets_a_zero_gradient():
    model = adaptive_models()[0]
    zeros = torch.zeros(2, 5, dtype=torch.long)  # every target in the shortlist
    model(zeros, zeros).backward()
    for p in model.decoder.tail.parameters():  # DDP's reducer waits for each of these
        assert p.grad is not None and not p.grad.any()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.sparse_embedding=true", "optim=sgd"], "model.sparse_embedding does not apply"),
        (["model=lstm", "model.emsize=100"], "model.adaptive_input=true reads the head's weights"),
    ],
)
def test_adaptive_input_settings_are_checked(overrides, message):
    cfg = compose_cfg(["model.head=adaptive", "model.adaptive_input=true", *overrides])
    assert any(message in p for p in config_problems(cfg)), config_problems(cfg)


def test_gpts_adaptive_input_gives_rare_ids_vectors_of_gpt2s_scale():
    torch.manual_seed(0)
    adaptive = dict(head="adaptive", cutoffs=[100, 500], div_value=4.0, adaptive_input=True)
    model = GPT(2000, d_model=64, nhead=2, d_hid=64, nlayers=1, tie_weights=False, **adaptive)
    for band in (torch.arange(100), torch.arange(100, 500), torch.arange(500, 2000)):
        assert model.embedding(band[None]).std().item() == pytest.approx(0.02, rel=0.2)


@pytest.mark.parametrize("bad", [-1, V])
def test_the_adaptive_input_refuses_an_id_outside_the_vocabulary(bad):
    model = adaptive_models()[-1]
    with pytest.raises(IndexError):
        model.embedding(torch.tensor([[1, bad]]))
