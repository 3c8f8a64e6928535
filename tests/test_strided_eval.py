"""Evaluation with context (eval.context, eval.stride): overlapping windows score every token
once, with at least context - stride tokens before it."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, run_module, tiny_overrides
from lmx.evaluate import evaluate_checkpoint
from lmx.models.pretrained import load_trained
from lmx.perplexity import evaluate, window_plan
from lmx.train import train

CPU = torch.device("cpu")


@pytest.mark.parametrize("length,context,stride", [(100, 8, 8), (100, 8, 3), (9, 8, 2), (50, 7, 1)])
def test_every_token_is_scored_exactly_once_with_enough_context(length, context, stride):
    scored = []
    for i, (start, end, new) in enumerate(window_plan(length, context, stride)):
        assert end - start <= context and new <= end - start
        targets = list(range(start + 1, end + 1))[-new:]  # positions scored by this window
        if i:  # after the first window: at least context - stride tokens before each one
            assert all(t - start >= min(context - stride, t) for t in targets)
        scored += targets
    assert scored == list(range(1, length))


def test_stride_equal_to_context_is_the_tutorial_evaluation(tiny_run):
    cfg, run_dir, _ = tiny_run
    trained = load_trained(run_dir)
    from lmx.data.streams import streams

    valid = streams(cfg.data, ("valid",)).rows["valid"]
    plain = evaluate(trained.model, valid, 8, CPU, tokens_per_forward=64)
    same = evaluate(trained.model, valid, 8, CPU, tokens_per_forward=64, context=8, stride=8)
    assert same.loss == pytest.approx(plain.loss, rel=1e-6) and same.tokens == plain.tokens
    for fused in (True, False):  # the per-token losses of both loss paths
        trained.model.fused_loss = fused
        strided = evaluate(trained.model, valid, 8, CPU, tokens_per_forward=64, stride=2)
        assert strided.tokens == strided.total == plain.total  # each token once
        assert strided.mode == "windows of 8 tokens every 2"
        assert strided.loss < plain.loss  # more context per token: a trained model does better


def test_the_setting_reaches_metrics_and_lmx_evaluate(corpus_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1", "eval.stride=4")
    metrics = train(compose_cfg(args), run_dir)
    assert metrics["val_eval"] == metrics["test_eval"] == "windows of 8 tokens every 4"
    assert metrics["history"][0]["val_eval"] == "windows of 8 tokens every 4"
    assert metrics["test_tokens_scored"] == metrics["test_tokens_total"]
    result = evaluate_checkpoint(run_dir, "test", ["eval.stride=8"])
    assert result["mode"] == "windows of 8 tokens, no overlap"
    proc = run_module("lmx.evaluate", f"ckpt={run_dir}", "eval.context=6", "eval.stride=3")
    assert proc.returncode == 0, proc.stderr
    assert "word-level tokens, windows of 6 tokens every 3 |" in proc.stdout


def test_bad_windows_are_config_errors():
    from lmx.config.rules import config_problems

    problems = config_problems(compose_cfg(["eval.context=8", "eval.stride=9"]))
    assert "eval.stride=9 must be in [1, eval.context=8]" in problems
