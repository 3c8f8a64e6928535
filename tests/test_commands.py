"""lmx.evaluate and lmx.generate on a finished tiny run."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_module
from lmx.errors import CheckpointError, ConfigError
from lmx.evaluate import evaluate_checkpoint
from lmx.generate import generate


def test_evaluate_reproduces_the_recorded_numbers(tiny_run):
    _, run_dir, metrics = tiny_run
    test = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", "test")
    assert math.isclose(test["ppl"], metrics["test_ppl"], rel_tol=1e-4)
    valid = evaluate_checkpoint(run_dir, "valid")  # a run dir means its best.pt
    assert math.isclose(valid["loss"], metrics["best_val_loss"], rel_tol=1e-4)
    assert test["unit"] == "word-level"


def test_evaluate_cli(tiny_run):
    _, run_dir, metrics = tiny_run
    proc = run_module("lmx.evaluate", f"ckpt={run_dir}", "split=test")
    assert proc.returncode == 0, proc.stderr
    assert f"ppl {metrics['test_ppl']:.4f}" in proc.stdout and "word-level" in proc.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["ckpt=/no/such/run"], "no checkpoint at /no/such/run"),
        (["split=test"], "ckpt=PATH is required"),
    ],
)
def test_evaluate_cli_errors(args, message):
    proc = run_module("lmx.evaluate", *args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_rejects_unknown_split_and_keys(tiny_run):
    _, run_dir, _ = tiny_run
    with pytest.raises(ConfigError, match="split=dev"):
        evaluate_checkpoint(run_dir, "dev")
    with pytest.raises(ConfigError) as err:  # every bad override, one message, like train's
        evaluate_checkpoint(run_dir, "test", ["model.nhed=1", "device.threads=two", "dropout"])
    lines = str(err.value).splitlines()
    assert "saved config" in lines[0] and len(lines) == 4
    assert "did you mean model.nhead?" in lines[1]
    assert lines[2].startswith("  - device.threads=two: ")
    assert lines[3] == "  - dropout: expected key=value"


def test_evaluate_refuses_overrides_the_checkpoint_decides(tiny_run):
    # The weights fix the model's shape and the saved tokenizer the tokens: such an override
    # would be ignored, or mislabel the result (a BPE label on word-level tokens).
    _, run_dir, _ = tiny_run
    with pytest.raises(ConfigError) as err:
        evaluate_checkpoint(run_dir, "test", ["model.nlayers=3", "data.tokenizer.kind=bpe"])
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and lines[1].startswith("  - model.nlayers=3: the model and its")
    assert lines[2].startswith("  - data.tokenizer.kind=bpe: the model and its tokenizer are")
    # the training command's own values (copied with the rest of it) change nothing
    same = evaluate_checkpoint(run_dir, "test", ["model.nlayers=1", "data.tokenizer.kind=word"])
    assert same["unit"] == "word-level"
    fused = evaluate_checkpoint(run_dir, "test", ["model.fused_loss=false"])  # how, not what
    assert math.isclose(fused["ppl"], evaluate_checkpoint(run_dir, "test")["ppl"], rel_tol=1e-5)


def test_evaluate_says_when_the_text_changed_since_training(tmp_path):
    from conftest import compose_cfg, tiny_overrides, write_corpus
    from lmx.train import train

    corpus, cache = write_corpus(tmp_path / "corpus"), tmp_path / "cache"
    train(compose_cfg(tiny_overrides(corpus, cache, "trainer.epochs=1")), tmp_path / "run")
    assert evaluate_checkpoint(tmp_path / "run", "valid")["changed_file"] is None
    valid = corpus / "valid.txt"
    valid.write_text(valid.read_text() + "a few more words at the end\n")
    assert evaluate_checkpoint(tmp_path / "run", "valid")["changed_file"] == str(valid)
    assert evaluate_checkpoint(tmp_path / "run", "test")["changed_file"] is None  # unchanged
    proc = run_module("lmx.evaluate", f"ckpt={tmp_path / 'run'}", "split=valid")
    assert proc.returncode == 0 and f"{valid} is not the text the run was scored on" in proc.stderr
    assert "are <unk> under the run's vocabulary" not in proc.stderr
    # text the vocabulary mostly lacks scores an easy perplexity: said, with the share
    valid.write_text("zebra quokka narwhal the axolotl okapi\n" * 50)
    result = evaluate_checkpoint(tmp_path / "run", "valid")
    assert math.isclose(result["unk_share"], 5 / 6)
    proc = run_module("lmx.evaluate", f"ckpt={tmp_path / 'run'}", "split=valid")
    assert "83.3% of the valid split's tokens are <unk> under the run's vocabulary" in proc.stderr


def test_evaluate_checks_an_overrides_range_as_train_does(tiny_run):
    _, run_dir, _ = tiny_run
    with pytest.raises(ConfigError, match="trainer.limit_eval_batches=0 must be >= 1 or null"):
        evaluate_checkpoint(run_dir, "test", ["trainer.limit_eval_batches=0"])


def test_a_pickle_that_is_not_a_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{bad}: not a whole file torch.save wrote"):
        evaluate_checkpoint(bad)


def test_a_run_without_a_best_model_yet_points_to_its_latest_weights(tiny_run, tmp_path):
    import shutil

    _, run_dir, _ = tiny_run
    stopped = tmp_path / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.pt", stopped / "checkpoints" / "last.pt")
    last = stopped / "checkpoints" / "last.pt"
    with pytest.raises(
        CheckpointError, match=f"no best model yet; its latest weights are ckpt={last}"
    ):
        evaluate_checkpoint(stopped)


def test_generation_is_deterministic_under_a_seed(tiny_run):
    _, run_dir, _ = tiny_run
    [first] = generate(run_dir, "the cat", max_new_tokens=30, seed=3)
    assert [first] == generate(run_dir, "the cat", max_new_tokens=30, seed=3)
    assert [first] != generate(run_dir, "the cat", max_new_tokens=30, seed=4)
    assert first.startswith("the cat ") and len(first.split()) == 32
    greedy = generate(run_dir, "the cat", max_new_tokens=10, temperature=0, seed=1)
    assert greedy == generate(run_dir, "the cat", max_new_tokens=10, temperature=0, seed=2)
    assert greedy == generate(run_dir, "the cat", max_new_tokens=10, top_k=1, seed=5)
    assert greedy == generate(run_dir, "the cat", max_new_tokens=10, top_p=1e-6, seed=6)
    # num_samples: one generator, so the first sample of three is the one sample of one
    three = generate(run_dir, "the cat", max_new_tokens=30, seed=3, num_samples=3)
    assert three[0] == first and len(set(three)) == 3


def test_generate_cli_and_errors(tiny_run):
    _, run_dir, _ = tiny_run
    proc = run_module(
        "lmx.generate", f"ckpt={run_dir}", "prompt=The dog", "max_new_tokens=5", "seed=1"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("the dog ")  # basic_english lowercases the prompt
    with pytest.raises(ConfigError, match="prompt is empty"):
        generate(run_dir, "   ")
    proc = run_module("lmx.generate", f"ckpt={run_dir}", "prompt=x", "top_k=many", "seed=abc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "top_k=many: not an integer; seed=abc: not an integer" in proc.stderr
    with pytest.raises(ConfigError, match=r"^temperature=-1.0 must be >= 0; top_p=2.0 must be in"):
        generate(run_dir, "x", temperature=-1.0, top_p=2.0)
    for temperature in (float("nan"), float("inf")):  # no distribution to sample from
        with pytest.raises(ConfigError, match=f"temperature={temperature} must be"):
            generate(run_dir, "x", temperature=temperature)
    proc = run_module("lmx.generate", f"ckpt={run_dir}", "prompt=x", "num_samples=2",
                      "max_new_tokens=3")  # fmt: skip
    assert proc.stdout.count("--- sample") == 2, proc.stderr


def test_a_generate_error_lists_generates_options(tiny_run):
    _, run_dir, _ = tiny_run
    proc = run_module("lmx.generate", f"ckpt={run_dir}", "prompt=the cat", "top_pp=0.9")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "generate has no option 'top_pp'; did you mean top_p?" in proc.stderr
    assert "its options: ckpt, prompt, max_new_tokens, num_samples, temperature" in proc.stderr
    proc = run_module("lmx.evaluate", f"ckpt={run_dir}", "splt=valid")
    assert "eval has no option 'splt'; did you mean split?" in proc.stderr
    assert "its options: ckpt, split" in proc.stderr


def test_prompt_words_outside_the_vocabulary_are_named(tiny_run, caplog):
    _, run_dir, _ = tiny_run
    with caplog.at_level("WARNING", logger="lmx.generate"):
        generate(run_dir, "the zebra sat on a quagga", max_new_tokens=2)
    assert "not in the vocabulary, read as <unk>: zebra, quagga" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lmx.generate"):
        generate(run_dir, "the cat sat", max_new_tokens=2)
    assert "vocabulary" not in caplog.text


def test_an_fp16_run_evaluates_on_a_cpu(tiny_run):
    # Training refuses fp16 on a CPU (no gradient scaler there); scoring a checkpoint does not.
    _, run_dir, metrics = tiny_run
    result = evaluate_checkpoint(run_dir, "test", ["device.precision=fp16"])
    assert math.isclose(result["ppl"], metrics["test_ppl"], rel_tol=0.05)


def test_the_lmx_command_helps_from_any_directory(tmp_path):
    lmx = Path(sys.executable).parent / "lmx"  # the console script of this environment
    if not lmx.exists():
        pytest.skip("lmx is not installed as a console script here (pip install -e .)")
    top = subprocess.run([str(lmx), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert top.returncode == 0
    assert all(f"  {c} " in top.stdout for c in ("train", "eval", "generate", "report", "bench"))
    train = subprocess.run([str(lmx), "train", "--help"], capture_output=True, text=True,
                           cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0 and "== Config groups" in train.stdout
    assert "model: gpt, lstm, transformer" in train.stdout
    for command, option in (("generate", "top_p"), ("eval", "split"), ("report", "--group-by")):
        proc = subprocess.run([str(lmx), command, "--help"], capture_output=True, text=True,
                              cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0 and option in proc.stdout, (command, proc.stderr)
    wrong = subprocess.run([str(lmx), "genrate"], capture_output=True, text=True, cwd=tmp_path)
    assert wrong.returncode == 2 and "did you mean generate?" in wrong.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["ckpt=/some/run"], "lmx: prompt=TEXT is required"),
        (["prompt=The"], "lmx: ckpt=PATH is required"),
        ([], "lmx: ckpt=PATH and prompt=TEXT are required"),
    ],
)
def test_generate_names_what_it_lacks(args, message):
    proc = run_module("lmx.generate", *args)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_generate_refuses_device_settings_it_would_not_apply(tiny_run):
    from lmx.generate import generate

    _, run_dir, _ = tiny_run
    for override in ("device.precision=bf16", "device.compile=true", "++device.compile=true"):
        with pytest.raises(ConfigError, match=re.escape(f"{override}: generate samples in fp32")):
            generate(run_dir, "the cat", overrides=[override])
    with pytest.raises(ConfigError, match="device.compile=true: lmx eval scores uncompiled"):
        evaluate_checkpoint(run_dir, "test", ["device.compile=true"])


def test_evaluate_names_a_precision_other_than_fp32(tiny_run):
    _, run_dir, _ = tiny_run
    proc = run_module("lmx.evaluate", f"ckpt={run_dir}", "device.precision=bf16")
    assert proc.returncode == 0 and " | bf16 | " in proc.stdout, proc.stderr
    assert " | fp32" not in run_module("lmx.evaluate", f"ckpt={run_dir}").stdout
