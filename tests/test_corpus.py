"""Loading through datasets, the on-disk cache, and the data errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

import lmx.data.cache
import lmx.data.sources
from conftest import write_corpus
from lmx.config.schema import DataConfig
from lmx.data.cache import load_corpus
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

    monkeypatch.setattr(lmx.data.cache, "_build_entry", no_rebuild)
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
@pytest.mark.parametrize("split", ["valid", "test"])
def test_empty_split_says_so(corpus_dir, cache_dir, content, split):
    (corpus_dir / f"{split}.txt").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=f"the {split} split is empty") as info:
        load_corpus(data_cfg(corpus_dir, cache_dir), (split,))
    assert str(corpus_dir / f"{split}.txt") in str(info.value)  # the file, blank or not
    assert not any(cache_dir.glob("wikitext2-*"))  # no half-built cache entry is left


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_a_corpus_without_a_test_split_loads_until_one_is_asked_for(corpus_dir, cache_dir, kind):
    (corpus_dir / "test.txt").unlink()
    cfg = data_cfg(corpus_dir, cache_dir)
    cfg.tokenizer.kind = kind
    cfg.tokenizer.vocab_size = 60 if kind == "bpe" else None  # BPE needs one (config rules)
    corpus = load_corpus(cfg)
    assert set(corpus.splits) == {"train", "valid"}
    assert corpus.splits["valid"].tolist() == reference_stream(
        corpus_dir / "valid.txt", corpus.tokenizer
    )
    with pytest.raises(DataError, match="the test split is missing") as info:
        load_corpus(cfg, ("test",))
    assert str(corpus_dir / "test.txt") in str(info.value) and "trainer.test=false" in str(
        info.value
    )
    for placeholder in ("", "\n \n"):  # an empty or blank placeholder is no test split either
        (corpus_dir / "test.txt").write_text(placeholder)
        assert set(load_corpus(cfg).splits) == {"train", "valid"}


def test_a_file_or_a_folder_in_the_wrong_place_is_named_for_what_it_is(corpus_dir, cache_dir):
    with pytest.raises(DataError, match=f"data.local_dir={corpus_dir / 'train.txt'} is a file"):
        load_corpus(data_cfg(corpus_dir / "train.txt", cache_dir))
    (corpus_dir / "valid.txt").unlink()
    (corpus_dir / "valid.txt").mkdir()
    with pytest.raises(
        DataError, match=f"the valid split {corpus_dir / 'valid.txt'} is not a file"
    ):
        load_corpus(data_cfg(corpus_dir, cache_dir))


def test_a_byte_order_mark_is_not_a_token(corpus_dir, cache_dir, tmp_path):
    plain = load_corpus(data_cfg(corpus_dir, cache_dir))
    for name in ("train.txt", "valid.txt"):
        path = corpus_dir / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows Notepad saves
    marked = load_corpus(data_cfg(corpus_dir, cache_dir))
    assert marked.vocab_size == plain.vocab_size and "\ufeff" not in marked.tokenizer.get_vocab()
    # keyed apart from an entry an older lmx built of the same bytes, mark and all
    meta = json.loads((marked.tokenizer_path.parent / "meta.json").read_text())
    assert meta["fingerprint"]["bom_dropped"] == ["train", "valid"]
    for split in ("train", "valid", "test"):
        assert marked.splits[split].equal(plain.splits[split])


def test_unreachable_hub_points_to_local_dir(cache_dir, monkeypatch):
    # A closed port on loopback: the connection is refused at once, as with no network.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = OmegaConf.structured(DataConfig(cache_dir=str(cache_dir)))
    with pytest.raises(DataError) as info:
        load_corpus(cfg)
    message = str(info.value)
    assert "not reachable" in message and "data.local_dir=" in message
    assert "wiki.train.tokens" in message and "../shared/data/wikitext-2" in message
    other = OmegaConf.structured(DataConfig(name="wikitext103", cache_dir=str(cache_dir)))
    with pytest.raises(DataError) as info:  # no WikiText-2 folder offered for another corpus
        load_corpus(other)
    assert "wiki.train.tokens" in str(info.value) and "wikitext-2)" not in str(info.value)


def test_bytes_that_are_not_utf8_name_the_file_and_line(corpus_dir, cache_dir):
    path = corpus_dir / "train.txt"
    lines = path.read_bytes().split(b"\n")
    lines[6] = b" caf\xe9 latin-1 bytes "
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as info:
        load_corpus(data_cfg(corpus_dir, cache_dir))
    assert f"{path}, line 7, column 5: byte 0xe9 is not valid UTF-8" in str(info.value)


def test_a_bad_byte_is_placed_by_universal_newlines_and_characters(corpus_dir, cache_dir):
    path = corpus_dir / "train.txt"  # old Mac line ends, and a two-byte character before it
    path.write_bytes(b"one two\rthree\r\nfour\r\xc3\xa9t\xc3\xa9 x \xff y\r")
    with pytest.raises(DataError) as info:
        load_corpus(data_cfg(corpus_dir, cache_dir))
    assert f"{path}, line 4, column 7: byte 0xff is not valid UTF-8" in str(info.value)


def test_a_split_file_that_cannot_be_read_is_named(corpus_dir, cache_dir, monkeypatch):
    original = lmx.data.sources.Path.open

    def refuse_valid(self, *args, **kwargs):
        if self.name == "valid.txt" and self.parent == corpus_dir:
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lmx.data.sources.Path, "open", refuse_valid)
    with pytest.raises(DataError, match=f"cannot read {corpus_dir / 'valid.txt'}: Permission"):
        load_corpus(data_cfg(corpus_dir, cache_dir))


def _entry(cache_dir):
    (entry,) = cache_dir.glob("wikitext2-*")
    return entry


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: (e / "train.bin").write_bytes((e / "train.bin").read_bytes()[:100]),  # cut
        lambda e: (e / "valid.bin").write_bytes(b"garbage"),
        lambda e: (e / "test.bin").unlink(),
        lambda e: (e / "meta.json").write_text("{not json"),
        # another lmx version: same place, other format
        lambda e: (e / "meta.json").write_text('{"fingerprint": {"format": 0}}'),
    ],
)
def test_a_damaged_or_foreign_cache_entry_is_rebuilt(corpus_dir, cache_dir, damage, caplog):
    caplog.set_level(logging.INFO, logger="lmx.data.cache")
    cfg = data_cfg(corpus_dir, cache_dir)
    good = {s: t.clone() for s, t in load_corpus(cfg).splits.items()}  # not the mapped file
    damage(_entry(cache_dir))
    rebuilt = load_corpus(cfg).splits
    assert all(torch.equal(good[s], rebuilt[s]) for s in good)
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    caplog.clear()
    load_corpus(cfg)  # and the rebuilt entry is a good one
    assert "using cached tokens" in caplog.text


def test_a_split_too_small_for_one_step_is_named(corpus_dir, cache_dir, tmp_path):
    from conftest import compose_cfg, tiny_overrides
    from lmx.train import train

    cfg = compose_cfg(tiny_overrides(corpus_dir, cache_dir, "data.bptt=400"))
    with pytest.raises(DataError, match="the valid split has .* tokens: too few for one batch"):
        train(cfg, tmp_path / "run")


def test_streaming_preparation_gives_the_ids_of_the_whole_text_at_once(
    corpus_dir, cache_dir, monkeypatch
):
    # Batches of a few lines (a 200-byte read) against the tokenizer trained and applied on
    # each split's whole text in one call: the same vocabulary and the same ids.
    import numpy as np

    from lmx.data.tokenizer import train_tokenizer

    monkeypatch.setattr(lmx.data.sources, "READ_BYTES", 200)
    cfg = data_cfg(corpus_dir, cache_dir)
    streamed = load_corpus(cfg)
    whole = {s: (corpus_dir / f"{s}.txt").read_text(encoding="utf-8").split("\n")[:-1]
             for s in ("train", "valid", "test")}  # fmt: skip
    tokenizer = train_tokenizer(cfg.tokenizer, whole["train"])
    assert tokenizer.get_vocab() == streamed.tokenizer.get_vocab()
    for split, lines in whole.items():
        ids = [i for e in tokenizer.encode_batch(lines) for i in e.ids]
        assert streamed.splits[split].dtype == torch.uint16  # the cache's compact ids
        assert np.array_equal(streamed.splits[split].numpy(), np.array(ids))


@pytest.mark.parametrize("vocab,dtype", [(300, "uint16"), (2**16, "uint16"), (2**16 + 1, "int32")])
def test_ids_are_stored_in_the_smallest_dtype(vocab, dtype):
    from lmx.data.encode import ids_dtype

    assert ids_dtype(vocab).name == dtype


def test_the_cache_stores_uint16_ids(corpus_dir, cache_dir):
    import json

    load_corpus(data_cfg(corpus_dir, cache_dir))
    entry = _entry(cache_dir)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["dtype"] == "uint16"
    for split, count in meta["tokens"].items():
        assert (entry / f"{split}.bin").stat().st_size == 2 * count


def test_long_preparation_logs_its_progress(corpus_dir, cache_dir, monkeypatch, caplog):
    import lmx.data.encode

    monkeypatch.setattr(lmx.data.encode, "LOG_EVERY_S", 0.0)  # a line at every batch
    caplog.set_level(logging.INFO, logger="lmx.data")
    load_corpus(data_cfg(corpus_dir, cache_dir))
    assert "data: encoding train: 100%" in caplog.text and "tokens/s" in caplog.text


def test_lines_split_as_the_datasets_text_loader_splits_them():
    from lmx.data.sources import _split_lines

    text = "a\r\nb\rc\u2028d\x85e\n\nf"  # only \n, \r\n and \r end a line
    assert _split_lines(text) == ["a", "b", "c\u2028d\x85e", "", "f"]
    assert _split_lines("a\n") == ["a"] and _split_lines("\n") == [""]


def test_rows_stay_compact_and_only_a_batch_is_widened(corpus_dir, cache_dir):
    # An epoch never holds a split as int64: the rows keep the cache's uint16, a batch (and an
    # evaluation window group) is widened on its own, and training reads the same ids.
    from lmx.data.batching import get_batch
    from lmx.data.streams import streams

    cfg = data_cfg(corpus_dir, cache_dir, batch_size=4, bptt=8)
    rows = streams(cfg).rows
    assert {r.dtype for r in rows.values()} == {torch.uint16}
    data, targets = get_batch(rows["train"], 8, 8)
    assert data.dtype == targets.dtype == torch.int64 and data.shape == (4, 8)
    assert torch.equal(data, rows["train"][:, 8:16].long())
    assert torch.equal(targets[:, :-1], data[:, 1:])


def test_a_dead_builders_half_built_entry_is_removed(corpus_dir, cache_dir):
    import subprocess
    import sys

    load_corpus(data_cfg(corpus_dir, cache_dir))
    entry = _entry(cache_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    orphan = entry.with_name(f".{entry.name}.tmp-{dead}")
    orphan.mkdir()
    (orphan / "train.bin").write_bytes(b"\0" * 100)
    import shutil

    shutil.rmtree(entry)  # the next load builds again, and clears what the dead one left
    load_corpus(data_cfg(corpus_dir, cache_dir))
    assert not orphan.exists() and _entry(cache_dir).is_dir()


def test_an_unchanged_corpus_is_not_read_again_to_key_the_cache(corpus_dir, cache_dir, monkeypatch):
    import os
    import time

    hashed, sha256 = [], lmx.data.sources._sha256
    monkeypatch.setattr(lmx.data.sources, "_sha256", lambda p: hashed.append(p.name) or sha256(p))
    monkeypatch.setattr(lmx.data.sources, "RACY_NS", 200_000_000)  # a short racy window

    def settled() -> None:  # past the racy window of the files' last change
        time.sleep(0.3)

    cfg = data_cfg(corpus_dir, cache_dir)
    load_corpus(cfg)  # files written just now: hashed, but their stamps not trusted yet
    load_corpus(cfg)
    assert len(hashed) == 6
    settled()
    first = load_corpus(cfg)  # hashed once more, now long after the files changed
    hashed.clear()
    assert load_corpus(cfg).splits["train"].equal(first.splits["train"]) and hashed == []
    train = corpus_dir / "train.txt"  # a same-size edit changes the stamp: hashed again
    original = train.read_bytes()
    train.write_bytes(original.replace(b" cat ", b" dog "))
    changed = load_corpus(cfg)
    assert hashed == ["train.txt"] and not changed.splits["train"].equal(first.splits["train"])
    settled()
    load_corpus(cfg)  # stamped after its change settled
    hashed.clear()
    assert load_corpus(cfg).splits["train"].equal(changed.splits["train"]) and hashed == []
    # the same size, and the stamped modification time put back (as touch -d can): the
    # change time still moved, so the file is read again
    stamped = train.stat().st_mtime_ns
    train.write_bytes(original)
    os.utime(train, ns=(stamped, stamped))
    assert load_corpus(cfg).splits["train"].equal(first.splits["train"])
    assert hashed == ["train.txt"]


def test_a_bpe_corpus_is_trained_and_encoded_by_tokenizers(corpus_dir, cache_dir):
    # BPE takes the tokenizers route (train, then encode): the cached ids are its own.
    import json

    import numpy as np

    cfg = data_cfg(corpus_dir, cache_dir)
    cfg.tokenizer.kind, cfg.tokenizer.vocab_size = "bpe", 120
    corpus = load_corpus(cfg)
    assert json.loads(corpus.tokenizer.to_str())["model"]["type"] == "BPE"
    for split in ("train", "valid", "test"):
        lines = (corpus_dir / f"{split}.txt").read_text(encoding="utf-8").split("\n")[:-1]
        ids = [i for e in corpus.tokenizer.encode_batch(lines) for i in e.ids]
        assert np.array_equal(corpus.splits[split].numpy(), np.array(ids))


def test_a_folder_with_both_names_of_a_split_says_which_it_reads(corpus_dir, cache_dir, caplog):
    (corpus_dir / "wiki.train.tokens").write_text("other text\n")
    with caplog.at_level("WARNING"):
        corpus = load_corpus(data_cfg(corpus_dir, cache_dir))
    assert (
        caplog.text.count(
            f"{corpus_dir} holds both train.txt and wiki.train.tokens; the train split is read "
            "from train.txt"
        )
        == 1
    )
    assert corpus.tokenizer.token_to_id("other") is None  # train.txt's words, not the other's
