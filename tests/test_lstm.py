"""model=lstm: pytorch/examples' RNN LM, whose hidden state is carried from window to window
in training and evaluation, and stored in checkpoints for exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY, compose_cfg, tiny_overrides
from lmx.config.rules import config_problems
from lmx.models.carried import fresh_state, reset_state
from lmx.models.rnn import RNNLM
from lmx.perplexity import evaluate

LSTM = [
    *(o for o in TINY if not o.startswith("model.")),
    "model=lstm",
    "model.emsize=16",
    "model.nhid=16",
    "model.nlayers=2",
]


def lstm_overrides(corpus, cache, *extra):
    return [o for o in tiny_overrides(corpus, cache, *extra) if o not in TINY] + LSTM


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_carried_state_equals_one_long_sequence_in_chunks(cell):
    torch.manual_seed(0)
    model = RNNLM(50, cell, emsize=12, nhid=12, nlayers=2, dropout=0.0).eval()
    ids, targets = torch.randint(0, 50, (3, 24)), torch.randint(0, 50, (3, 24))
    whole = model(ids, targets, reduction="none")  # [3, 24], one window
    reset_state(model)
    chunks = [model(ids[:, a : a + 8], targets[:, a : a + 8], reduction="none")
              for a in range(0, 24, 8)]  # fmt: skip
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, rtol=1e-5, atol=1e-5)
    # Reset before each chunk: the later chunks lose their context and score differently.
    reset = []
    for a in range(0, 24, 8):
        reset_state(model)
        reset.append(model(ids[:, a : a + 8], targets[:, a : a + 8], reduction="none"))
    assert not torch.allclose(torch.cat(reset, dim=1)[:, 8:], whole[:, 8:], atol=1e-4)
    torch.testing.assert_close(reset[0], whole[:, :8])  # the first chunk starts from zeros anyway


def test_the_state_is_detached_at_each_window():
    model = RNNLM(30, "lstm", emsize=8, nhid=8, nlayers=1, dropout=0.0)
    ids = torch.randint(0, 30, (2, 6))
    model(ids, ids).backward()
    assert all(not s.requires_grad for s in model.state)
    model(ids, ids).backward()  # a second backward would fail if the graph reached window 1


def test_evaluation_carries_the_state_through_the_split_and_keeps_training_state():
    torch.manual_seed(0)
    model = RNNLM(40, "lstm", emsize=8, nhid=8, nlayers=2, dropout=0.0)
    source = torch.randint(0, 40, (2, 41))  # 40 targets per row, in windows of 8
    one_window = model.eval()(source[:, :-1], source[:, 1:]).item()
    training_state = tuple(torch.randn(2, 2, 8) for _ in range(2))
    model.state = training_state
    score = evaluate(model, source, bptt=8, device=torch.device("cpu"))
    assert math.isclose(score.loss, one_window, rel_tol=1e-5)
    assert score.tokens == 80 and score.mode == "windows of 8 tokens, state carried"
    assert model.state is training_state  # a validation in mid-epoch leaves it as it was
    with pytest.raises(Exception, match="non-overlapping"):
        evaluate(model, source, bptt=8, device=torch.device("cpu"), context=8, stride=4)


def test_a_state_of_other_rows_is_refused_not_silently_reused():
    model = RNNLM(30, "gru", emsize=8, nhid=8, nlayers=1)
    model(torch.randint(0, 30, (4, 5)))
    with pytest.raises(RuntimeError, match="carried state has 4 rows"):
        model(torch.randint(0, 30, (2, 5)))
    with fresh_state(model):
        model(torch.randint(0, 30, (2, 5)))  # a fresh pass starts from zeros
    assert model.state.size(1) == 4  # and the state from before is back


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.tie_weights=true", "model.tie_weights=true needs model.emsize == model.nhid"),
        ("eval.stride=4", "eval.stride=4 does not apply to model=lstm"),
        ("trainer.accumulate=2", "trainer.accumulate=2 is not supported with model=lstm"),
    ],
)
def test_lstm_settings_are_checked(override, message):
    cfg = compose_cfg(["model=lstm", "model.emsize=32", override])
    assert any(p.startswith(message) for p in config_problems(cfg)), config_problems(cfg)


def test_a_step_thrown_away_leaves_the_carried_state_as_it_was():
    from lmx.config.schema import Precision
    from lmx.runtime.distributed import World
    from lmx.training.step import make_scaler, train_step

    model = RNNLM(30, "lstm", emsize=8, nhid=8, nlayers=1, dropout=0.0)
    kept = (torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    model.state = kept
    with torch.no_grad():
        model.decoder.bias.fill_(float("nan"))  # every loss is nan from here
    ids = torch.randint(0, 30, (2, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = make_scaler(torch.device("cpu"), Precision.fp32)
    result = train_step(model, list(model.parameters()), optimizer, scaler, ids, ids,
                        Precision.fp32, 0.5, World(), False)  # fmt: skip
    assert result.nonfinite == "loss (nan)"  # on_nonfinite=skip goes on with the next batch
    # The state from before, not the one this thrown-away window produced (nan-free anyway:
    # the nan is in the decoder), so the next window continues from the last good one.
    assert all(torch.equal(a, b) for a, b in zip(model.state, kept, strict=True))


def test_the_carried_state_is_kept_in_fp32_under_bf16_autocast():
    model = RNNLM(30, "lstm", emsize=8, nhid=8, nlayers=1, dropout=0.0)
    ids = torch.randint(0, 30, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, ids).backward()
        model(ids, ids)  # the fp32 state goes back in under autocast
    assert all(s.dtype == torch.float32 for s in model.state)
    model(ids, ids)  # and feeds an fp32 run (a resume with device.precision=fp32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_under_bf16_autocast_on_a_gpu_the_rnn_runs_in_fp32_not_fp16():
    # torch's autocast would run cuDNN's RNN in fp16, with no gradient scaler under bf16
    model = RNNLM(30, "lstm", emsize=8, nhid=8, nlayers=2, dropout=0.0).cuda()
    seen = []
    model.rnn.register_forward_hook(lambda m, args, out: seen.append(out[0].dtype))
    ids = torch.randint(0, 30, (2, 6), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(ids, ids).backward()
    assert seen == [torch.float32]
