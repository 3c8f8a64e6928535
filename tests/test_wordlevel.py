"""The one-pass word-level route (lmx.data.wordlevel) against `tokenizers` itself: the same
tokenizer and the same ids, on text built to hit every place where Python and Rust differ."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from lmx.config.schema import Normalization, TokenizerConfig
from lmx.data import wordlevel
from lmx.data.encode import train_and_encode
from lmx.data.sources import SPLITS

BASIC = TokenizerConfig()
EOS_CASE = TokenizerConfig(normalization=Normalization.none, eos=True)

TRICKY = [
    " = Valkyria Chronicles III = ",
    "the <unk> of the <unk> , and <unk> 's <unk> .",
    "glued x<unk> and <unk>y and <eos>z and (<unk>) and <unk>.",
    'case <UNK> <Unk> <EOS> and "quoted" <br /> <BR /> <br" /> <br;/> don\'t',
    "ΟΔΟΣ Σ ΣΑ σς İstanbul Straße ǅ",  # final sigma, dotted I, titlecase digraph
    "no\u00a0break thin\u2009space line\u2028sep para\u2029sep nel\u0085x",
    "file\x1cgroup\x1drecord\x1eunit\x1fseparators are not spaces to Rust",
    "",
    "   ",
    "tab\tand\x0bvt\x0cff",
    "numbers 1 @,@ 000 and 3 @.@ 5 ; colon : semi",
]


def _words(rng: random.Random, n: int) -> list[str]:
    pool = "the a of and <unk> to in was on for Σ ς é – ( ) , . ; : ! ? ' \"".split()
    pool += ["x<unk>", "<eos>", "<EOS>", "Word", "WORD", "word", "ab", "ba"]
    return [" ".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def _batches(lines: list[str], per: int):
    def batches():
        for i in range(0, len(lines), per):
            yield lines[i : i + per], min(i + per, len(lines)) / len(lines)

    return batches


def _both(cfg: TokenizerConfig, texts: dict[str, list[str]], tmp_path, per: int = 3):
    batches = {s: _batches(texts[s], per) for s in SPLITS}

    slow, fast = tmp_path / "slow", tmp_path / "fast"
    slow.mkdir()
    fast.mkdir()
    tok_slow, n_slow = train_and_encode(cfg, batches, slow)
    tok_fast, n_fast = wordlevel.encode_corpus(cfg, batches, fast)
    assert tok_fast.to_str() == tok_slow.to_str()
    assert n_fast == n_slow
    for s in SPLITS:
        assert (fast / f"{s}.bin").read_bytes() == (slow / f"{s}.bin").read_bytes(), s
        assert not (fast / f"{s}.prov").exists()  # the provisional ids are removed
    return tok_fast


CONFIGS = [
    BASIC,
    EOS_CASE,
    TokenizerConfig(eos=True),
    TokenizerConfig(normalization=Normalization.none),
    TokenizerConfig(min_frequency=3),
    TokenizerConfig(vocab_size=12),  # a cap that cuts the words; <unk> is also in the text
    TokenizerConfig(vocab_size=5, eos=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.normalization.name}-{c.eos}-"
                         f"{c.min_frequency}-{c.vocab_size}")  # fmt: skip
def test_one_pass_gives_the_trained_tokenizer_and_its_ids(cfg, tmp_path):
    rng = random.Random(0)
    texts = {"train": TRICKY + _words(rng, 60), "valid": _words(rng, 20) + TRICKY[2:5],
             "test": _words(rng, 20) + ["words never seen in train: zyzzyva"]}  # fmt: skip
    _both(cfg, texts, tmp_path)


@pytest.mark.parametrize("cfg", [BASIC, EOS_CASE], ids=["basic_english", "eos"])
def test_plain_batches_take_the_fast_route_and_still_agree(cfg, tmp_path, monkeypatch):
    # Ordinary text must not fall back to tokenizers (that is the speed), yet agree with it.
    calls = []
    monkeypatch.setattr(wordlevel.OnePassEncoder, "_by_line",
                        lambda *a, **k: calls.append(1) or pytest.fail("fell back"))  # fmt: skip
    rows = [" the cat , the <unk> dog . ", "a <unk> 's hat", "", " = Hub row = \n"]
    texts = {s: rows * 5 for s in SPLITS}
    _both(cfg, texts, tmp_path, per=4)
    assert not calls


def test_rows_holding_newlines_get_one_eos_each(tmp_path):
    # Hub rows end in "\n"; with <eos> each row still gets exactly one.
    rows = [" = Title = \n", " some text <unk> here \n", "\n", "two\nlines"]
    tok = _both(EOS_CASE, {s: rows * 3 for s in SPLITS}, tmp_path)
    assert tok.token_to_id("<eos>") == 1


def test_a_character_python_and_rust_lowercase_differently_takes_the_exact_route(tmp_path):
    odd = wordlevel._odd_lowercase()
    if not odd:
        pytest.skip("this Python and tokenizers lowercase every character alike")
    line = f"Word {odd[:5]} WORD {odd[0]}x"
    _both(BASIC, {s: [line, "plain text here"] * 3 for s in SPLITS}, tmp_path)


def test_the_whitespace_of_python_covers_rusts():
    # The route relies on tokenizers' whitespace being str.split()'s less _odd_spaces().
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    words = pre_tokenizers.WhitespaceSplit().pre_tokenize_str("".join(chars))
    rust = set(chars) - set("".join(w for w, _ in words))
    python = {c for c in chars if c.isspace()}
    assert rust == python - set(wordlevel._odd_spaces())
    assert wordlevel._odd_spaces() == "\x1c\x1d\x1e\x1f"


def test_the_remap_works_chunk_by_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(wordlevel, "REMAP_CHUNK", 7)
    rng = random.Random(1)
    _both(BASIC, {s: _words(rng, 30) for s in SPLITS}, tmp_path)


def test_words_only_in_valid_or_test_are_unknown(tmp_path):
    texts = {"train": ["a b c a"], "valid": ["a zz b"], "test": ["yy"]}
    tok = _both(BASIC, texts, tmp_path)
    ids = np.fromfile(tmp_path / "fast" / "valid.bin", dtype=np.uint16)
    assert ids.tolist() == [tok.token_to_id("a"), 0, tok.token_to_id("b")]


def test_the_eos_after_each_line_is_not_counted_as_a_word(tmp_path):
    # With a cap, a counted <eos> would take a word's place in the vocabulary.
    texts = {s: ["b a", "c a b", "a"] * 4 for s in SPLITS}
    tok = _both(TokenizerConfig(normalization=Normalization.none, eos=True, vocab_size=4),
                texts, tmp_path)  # fmt: skip
    assert sorted(tok.get_vocab()) == ["<eos>", "<unk>", "a", "b"]
