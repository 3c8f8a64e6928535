"""Loading through datasets, the on-disk cache, and the data errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import lmx.corpus
from conftest import write_corpus
from lmx.config import DataConfig
from lmx.corpus import load_corpus
from lmx.errors import DataError


def data_cfg(local_dir, cache_dir, **kw):
    return OmegaConf.structured(
        DataConfig(local_dir=str(local_dir), cache_dir=str(cache_dir), **kw)
    )


def reference_stream(path, tokenizer):
    """Every line through the tokenizer, concatenated: what the pipeline must produce."""
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [i for line in lines for i in tokenizer.encode(line).ids]


def test_local_files_become_streams(corpus_dir, cache_dir):
    corpus = load_corpus(data_cfg(corpus_dir, cache_dir))
    assert set(corpus.splits) == {"train", "valid", "test"}
    for split, stream in corpus.splits.items():
        assert stream.dtype.is_floating_point is False and stream.dim() == 1
        assert stream.tolist() == reference_stream(corpus_dir / f"{split}.txt", corpus.tokenizer)
    assert corpus.tokenizer.token_to_id("<unk>") == 0
    assert corpus.tokenizer_path.name == "tokenizer.json" and corpus.tokenizer_path.is_file()


def test_second_load_uses_the_cache(corpus_dir, cache_dir, monkeypatch):
    first = load_corpus(data_cfg(corpus_dir, cache_dir))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(lmx.corpus, "_build_entry", no_rebuild)
    second = load_corpus(data_cfg(corpus_dir, cache_dir))
    assert second.tokenizer_path == first.tokenizer_path
    assert all(second.splits[s].equal(first.splits[s]) for s in first.splits)


def test_cache_is_keyed_by_settings_and_content(corpus_dir, cache_dir):
    base = load_corpus(data_cfg(corpus_dir, cache_dir)).tokenizer_path.parent
    other_tok = data_cfg(corpus_dir, cache_dir)
    other_tok.tokenizer.eos = True
    assert load_corpus(other_tok).tokenizer_path.parent != base
    with open(corpus_dir / "train.txt", "a", encoding="utf-8") as f:
        f.write(" a brand new line \n")
    changed = load_corpus(data_cfg(corpus_dir, cache_dir))
    assert changed.tokenizer_path.parent != base
    assert changed.tokenizer.token_to_id("brand") is not None
    # batch sizes do not change the tokens, so they share the entry
    assert (
        load_corpus(data_cfg(corpus_dir, cache_dir, batch_size=3)).tokenizer_path.parent
        == changed.tokenizer_path.parent
    )


def test_original_wikitext_file_names_are_accepted(tmp_path, cache_dir):
    folder = write_corpus(
        tmp_path / "wt", names=("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
    )
    corpus = load_corpus(data_cfg(folder, cache_dir))
    assert len(corpus.splits["valid"]) > 0


def test_missing_split_names_the_file(corpus_dir, cache_dir):
    (corpus_dir / "valid.txt").unlink()
    with pytest.raises(DataError) as info:
        load_corpus(data_cfg(corpus_dir, cache_dir))
    assert str(corpus_dir / "valid.txt") in str(info.value)
    assert "valid split is missing" in str(info.value)


@pytest.mark.parametrize("content", ["", "\n \n\n"])
def test_empty_split_says_so(corpus_dir, cache_dir, content):
    (corpus_dir / "test.txt").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="the test split is empty"):
        load_corpus(data_cfg(corpus_dir, cache_dir))
    assert not any(cache_dir.glob("wikitext2-*"))  # no half-built cache entry is left


def test_unreachable_hub_points_to_local_dir(cache_dir, monkeypatch):
    # A closed port on loopback: the connection is refused at once, as with no network.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = OmegaConf.structured(DataConfig(cache_dir=str(cache_dir)))
    with pytest.raises(DataError) as info:
        load_corpus(cfg)
    message = str(info.value)
    assert "not reachable" in message and "data.local_dir=" in message
