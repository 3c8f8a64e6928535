"""data=text (any folder of text) and data=wikitext103: they compose, read local folders laid
out as their users have them, and give the WikiText checks' clear errors."""

from __future__ import annotations

import math

import pytest

from conftest import compose_cfg, run_cli, tiny_overrides, write_corpus
from lmx.data.cache import load_corpus
from lmx.errors import DataError
from lmx.train import train


def test_a_folder_of_text_trains(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "mine")
    cfg = compose_cfg(tiny_overrides(folder, cache_dir, "data=text", "trainer.epochs=1"))
    assert (cfg.data.name, cfg.data.hub_path) == ("text", None)
    metrics = train(cfg, tmp_path / "run")
    assert metrics["status"] == "done" and metrics["test_ppl"] > 1
    assert any(cache_dir.glob("text-*"))  # its own cache entry, named for it


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "valid.txt").unlink(), "the valid split is missing"),
        (lambda f: (f / "valid.txt").write_text(""), "the valid split is empty"),
        (lambda f: (f / "train.txt").write_bytes(b"fine\nbad \xff here\n"),
         "train.txt, line 2, column 5: byte 0xff is not valid UTF-8"),
    ],
)  # fmt: skip
def test_a_folder_of_text_gives_the_clear_errors(tmp_path, cache_dir, damage, message):
    folder = write_corpus(tmp_path / "mine")
    damage(folder)
    cfg = compose_cfg(tiny_overrides(folder, cache_dir, "data=text"))
    with pytest.raises(DataError, match=message):
        load_corpus(cfg.data)


def test_text_without_a_folder_is_refused_before_any_work(tmp_path):
    proc = run_cli("data=text", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "data=text reads local files: set data.local_dir=PATH" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_folder_too_small_for_a_step_is_named(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "mine")
    (folder / "valid.txt").write_text("just a few words\n", encoding="utf-8")
    cfg = compose_cfg(tiny_overrides(folder, cache_dir, "data=text"))
    with pytest.raises(DataError, match="the valid split has .* tokens: too few") as info:
        train(cfg, tmp_path / "run")
    assert "lower data.eval_batch_size or data.bptt" in str(info.value)  # valid's own rows


def test_wikitext103_composes_and_reads_its_archive_layout(tmp_path, cache_dir):
    folder = write_corpus(
        tmp_path / "wikitext-103",
        names=("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
    )
    cfg = compose_cfg(["data=wikitext103", f"data.local_dir={folder}",
                       f"data.cache_dir={cache_dir}"])  # fmt: skip
    assert (cfg.data.name, cfg.data.hub_config) == ("wikitext103", "wikitext-103-v1")
    assert cfg.data.tokenizer.eos and cfg.data.tokenizer.normalization.value == "none"
    corpus = load_corpus(cfg.data)
    # whitespace split, case kept, <eos> after every line: "The" and "the" are two types
    vocab = corpus.tokenizer.get_vocab()
    assert {"<eos>", "The", "the"} <= set(vocab)
    lines = (folder / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    words = sum(len(line.split()) for line in lines)
    assert len(corpus.splits["valid"]) == words + len(lines)  # one <eos> per line


def test_the_gpu_preset_for_wikitext103_composes():
    cfg = compose_cfg(["experiment=wt103_gpt", "data.local_dir=/tmp"])
    assert cfg.data.name == "wikitext103" and cfg.model.head.value == "adaptive"
    assert cfg.device.type.value == "cuda" and cfg.device.compile
    for device in ("cpu", "auto"):  # the preset's device is a choice the command line replaces
        cfg = compose_cfg(["experiment=wt103_gpt", "data.local_dir=/tmp", f"device={device}"])
        assert cfg.device.type.value == device and cfg.device.precision.value == "bf16"


def test_a_one_type_vocabulary_is_refused_and_the_unk_share_is_told(tmp_path, cache_dir, caplog):
    # One type scores a perplexity of 1 whatever the model: no result, so no run.
    from lmx.data.streams import streams

    folder = write_corpus(tmp_path / "mine")
    one = compose_cfg(tiny_overrides(folder, cache_dir, "data=text", "data.tokenizer.vocab_size=1"))
    with pytest.raises(DataError, match="the vocabulary has 1 type: every token is the same"):
        streams(one.data)
    few = compose_cfg(
        tiny_overrides(folder, cache_dir, "data=text", "data.tokenizer.vocab_size=8",
                       "trainer.epochs=1", "trainer.test=false")
    )  # fmt: skip
    data = streams(few.data)
    unk = data.tokenizer.token_to_id("<unk>")
    ids = load_corpus(few.data).splits
    for split in ("train", "valid", "test"):
        assert data.unk_share[split] == (ids[split] == unk).sum().item() / len(ids[split])
    assert data.unk_share["valid"] > 0.1
    with caplog.at_level("INFO"):
        train(few, tmp_path / "run")
    assert f"<unk> {100 * data.unk_share['train']:.1f}% of train" in caplog.text
    assert "of a split's tokens are <unk> (above): its perplexity is that of a much easier" in (
        caplog.text
    )
    assert "where data.tokenizer.vocab_size" not in caplog.text  # 8 asked, 8 made
    caplog.clear()
    big = compose_cfg(
        tiny_overrides(folder, cache_dir, "data=text", "data.tokenizer.vocab_size=999",
                       "trainer.epochs=1", "trainer.test=false")
    )  # fmt: skip
    with caplog.at_level("INFO"):
        train(big, tmp_path / "big")
    types = streams(big.data).vocab_size
    assert f"the vocabulary has {types} types where data.tokenizer.vocab_size=999 asked for more" \
        in caplog.text  # fmt: skip
    # 15 asked of 21 types: the text's own <unk> takes two places, and the note says it may
    caplog.clear()
    capped = tiny_overrides(folder, cache_dir, "data.tokenizer.vocab_size=15", "trainer.epochs=1")
    with caplog.at_level("INFO"):
        train(compose_cfg(capped), tmp_path / "capped")
    assert "the vocabulary has 14 types where data.tokenizer.vocab_size=15 asked for more" in (
        caplog.text
    )
    assert "(WikiText's literal <unk>) took two of the places" in caplog.text


def test_a_corpus_without_a_test_split_trains_with_trainer_test_false(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "mine", names=("train.txt", "valid.txt", "notes.txt"))
    asked = compose_cfg(tiny_overrides(folder, cache_dir, "trainer.epochs=1"))
    with pytest.raises(DataError, match="the test split is missing.*trainer.test=false"):
        train(asked, tmp_path / "asked")
    assert not any(cache_dir.glob("wikitext2-*"))  # refused before any tokenizing
    cfg = compose_cfg(tiny_overrides(folder, cache_dir, "trainer.epochs=1", "trainer.test=false"))
    metrics = train(cfg, tmp_path / "run")
    assert metrics["status"] == "done" and metrics["test_ppl"] is None
    assert math.isfinite(metrics["best_val_ppl"])
    from lmx.evaluate import evaluate_checkpoint

    assert math.isfinite(evaluate_checkpoint(tmp_path / "run", "valid")["ppl"])
    with pytest.raises(DataError, match="the test split is missing.*split=valid"):
        evaluate_checkpoint(tmp_path / "run", "test")
