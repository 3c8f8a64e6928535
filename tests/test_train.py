"""A few-step training run on a tiny corpus: every output, the numbers in them, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from conftest import compose_cfg, job_dir, run_cli, run_module, tiny_overrides
from lmx.data.batching import batchify
from lmx.data.cache import load_corpus
from lmx.perplexity import evaluate
from lmx.train import train
from lmx.training.checkpoint import load_checkpoint

TRAIN_SCALARS = {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_per_s"}
EPOCH_SCALARS = {"val/loss", "val/ppl", "test/loss", "test/ppl"}


def test_run_writes_every_output(tiny_run):
    _, run_dir, _ = tiny_run
    for name in (
        "config.yaml",
        "tokenizer.json",
        "metrics.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (run_dir / name).is_file(), name
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.model.d_model == 16 and saved.optim._target_ == "torch.optim.SGD"


def test_metrics_summary(tiny_run):
    cfg, run_dir, returned = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["status"] == "done" and metrics["epochs"] == 2
    assert len(metrics["history"]) == 2
    corpus = load_corpus(cfg.data)
    assert metrics["vocab_size"] == corpus.vocab_size
    assert metrics["train_tokens"] == len(corpus.splits["train"])
    best = min(h["val_loss"] for h in metrics["history"])
    assert metrics["best_val_loss"] == best
    assert math.isclose(metrics["best_val_ppl"], math.exp(best))
    assert math.isclose(metrics["test_ppl"], math.exp(metrics["test_loss"]))
    assert metrics["train_tokens_per_s"] > 0
    # it learned something: the tiny corpus is very predictable
    assert metrics["history"][-1]["val_loss"] < math.log(corpus.vocab_size)


def test_tensorboard_has_the_scalars_and_hparams(tiny_run):
    _, run_dir, metrics = tiny_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert TRAIN_SCALARS | EPOCH_SCALARS <= tags
    val = events.Scalars("val/ppl")
    assert len(val) == 2 and math.isclose(
        val[-1].value, metrics["history"][-1]["val_ppl"], rel_tol=1e-5
    )
    assert math.isclose(events.Scalars("test/ppl")[0].value, metrics["test_ppl"], rel_tol=1e-5)
    # The HParams entry: the keys that differ from the defaults, against series the run logs
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model.d_model"].number_value == 16
    assert "optim._target_" not in hparams  # torch.optim.SGD, as by default
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = [m.name.tag for m in experiment.metric_infos]
    assert names == ["val/best_ppl", "val/ppl", "test/ppl", "train/tokens_per_s",
                     "model/parameters"]  # fmt: skip
    assert events.Scalars("model/parameters")[0].value == metrics["parameters"]
    best = events.Scalars("val/best_ppl")
    assert math.isclose(best[-1].value, metrics["best_val_ppl"], rel_tol=1e-5)


def test_checkpoint_round_trip_reproduces_validation_loss(tiny_run):
    cfg, run_dir, metrics = tiny_run
    # On disk: one plain dict, with summary keys for readers that do not know lmx.
    raw = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "progress",
        "rng",
        "epoch",
        "step",
        "best_val_loss",
        "config",
        "vocab_size",
        "tokenizer",
        "format",
    } <= set(raw)
    assert raw["best_val_loss"] == metrics["best_val_loss"]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    saved = OmegaConf.create(ckpt.config)
    model = instantiate(saved.model, ntoken=ckpt.vocab_size)  # a fresh model from its config
    model.load_state_dict(ckpt.model)
    valid = batchify(load_corpus(cfg.data).splits["valid"], saved.data.eval_batch_size)
    score = evaluate(model, valid, saved.data.bptt, torch.device("cpu"))
    assert math.isclose(score.loss, metrics["best_val_loss"], rel_tol=1e-6)
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["step"] == metrics["steps"]


def test_scheduler_steps_once_per_epoch(tiny_run):
    _, _, metrics = tiny_run
    lrs = [h["lr"] for h in metrics["history"]]
    assert lrs == pytest.approx([1.0, 0.95])


def test_limits_and_other_options(corpus_dir, cache_dir, tmp_path):
    cfg = compose_cfg(
        tiny_overrides(
            corpus_dir,
            cache_dir,
            "trainer.epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_eval_batches=2",
            "optim=adamw",
            "scheduler=cosine",
            "model.tie_weights=true",
            "data/tokenizer=whitespace_eos",
            "trainer.tensorboard=false",
            "trainer.test=false",
        )
    )
    metrics = train(cfg, tmp_path / "run")
    assert metrics["steps"] == 3 and metrics["status"] == "done"
    assert metrics["test_loss"] is None and metrics["test_ppl"] is None  # test split untouched
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_cli_run_and_multirun(corpus_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "single"
    proc = run_cli(
        *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1"), f"hydra.run.dir={run_dir}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "train.log").is_file()
    assert "End of training" in (run_dir / "train.log").read_text()

    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1"),
        "model.nhead=1,2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job in ("0", "1"):
        metrics = json.loads((job_dir(sweep, job) / "metrics.json").read_text())
        assert metrics["status"] == "done"
        assert (job_dir(sweep, job) / "checkpoints" / "best.pt").is_file()
    heads = {OmegaConf.load(job_dir(sweep, j) / "config.yaml").model.nhead for j in ("0", "1")}
    assert heads == {1, 2}


def test_zero_epochs_tests_the_untrained_model(corpus_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"stale file from an earlier run")
    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=0"))
    metrics = train(cfg, run_dir)
    assert metrics["steps"] == 0 and metrics["best_epoch"] == 0 and metrics["status"] == "done"
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt").progress["epoch"] == 1


def test_a_partial_evaluation_is_labelled_everywhere_and_paths_are_stored_resolved(
    corpus_dir, cache_dir, tmp_path
):
    # From the corpus's parent folder, with the data path typed relative to it.
    work = corpus_dir.parent
    args = [a for a in tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1",
                                      "trainer.limit_eval_batches=2")
            if not a.startswith("data.local_dir=")]  # fmt: skip
    run_dir = tmp_path / "run"
    proc = run_cli(*args, "data.local_dir=corpus", f"hydra.run.dir={run_dir}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_window = 2 * 8  # eval_batch_size rows x bptt
    assert metrics["val_tokens_scored"] == metrics["test_tokens_scored"] == 2 * per_window
    assert metrics["val_tokens_total"] > metrics["val_tokens_scored"]
    assert metrics["test_tokens_total"] > metrics["test_tokens_scored"]
    assert metrics["eval_partial"] is True
    log = (run_dir / "train.log").read_text()
    valid_line = next(line for line in log.splitlines() if "valid ppl" in line)
    test_line = next(line for line in log.splitlines() if "test ppl" in line)
    for line, split in ((valid_line, "val"), (test_line, "test")):
        assert f"(partial: 32 of {metrics[f'{split}_tokens_total']:,} tokens)" in line

    # The config holds the data path resolved, the overrides the form that was typed.
    assert OmegaConf.load(run_dir / "config.yaml").data.local_dir == str(corpus_dir)
    assert "data.local_dir=corpus" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_module("lmx.evaluate", f"ckpt={run_dir}", cwd=elsewhere)  # no data override
    assert proc.returncode == 0, proc.stderr
    total = metrics["test_tokens_total"]
    expected = f"| 32 of {total:,} word-level tokens, windows of 8 tokens, no overlap (partial: "
    assert expected + "trainer.limit_eval_batches=2" in proc.stdout
    report = run_module("lmx.report", str(run_dir)).stdout
    assert "partial: val" in report and "test" in report

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["trainer.limit_eval_batches"].number_value == 2
