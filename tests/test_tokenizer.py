"""Both word-level conventions and BPE, on small fixtures."""

from __future__ import annotations

from lmx.config.schema import Normalization, TokenizerConfig, TokenizerKind
from lmx.data.tokenizer import EOS, UNK, train_tokenizer

TUTORIAL = TokenizerConfig()
EXAMPLES = TokenizerConfig(normalization=Normalization.none, eos=True)

LINES = [
    " = Heading = ",
    " ",
    ' The cat\'s "toy" (red) fell; it said: Hello, World! Why? Yes. ',
    " the cat sat <unk> . ",
]


def tokens(tok, line):
    return tok.encode(line).tokens


def test_basic_english_rules():
    tok = train_tokenizer(TUTORIAL, LINES)
    assert tokens(tok, LINES[2]) == [
        "the",
        "cat",
        "'",
        "s",
        "toy",
        "(",
        "red",
        ")",
        "fell",
        "it",
        "said",
        "hello",
        ",",
        "world",
        "!",
        "why",
        "?",
        "yes",
        ".",
    ]
    assert tokens(tok, " ") == []  # an empty line adds nothing, and no <eos>


def test_basic_english_vocab_is_ordered_like_torchtext():
    tok = train_tokenizer(TUTORIAL, ["b a c a b a", "<unk> d"])
    vocab = tok.get_vocab()
    # <unk> first even though the text has it, then by frequency, ties alphabetical.
    assert sorted(vocab, key=vocab.get) == [UNK, "a", "b", "c", "d"]
    assert tok.encode("a zebra").ids == [1, 0]  # unseen words map to <unk>


def test_pytorch_examples_convention():
    tok = train_tokenizer(EXAMPLES, LINES)
    assert tokens(tok, " The cat said: ") == ["The", "cat", "said:", EOS]
    assert tokens(tok, " ") == [EOS]  # every line ends with <eos>, empty ones too
    assert tok.token_to_id(UNK) == 0 and tok.token_to_id(EOS) == 1
    types = {t for line in LINES for t in line.split()} | {UNK, EOS}
    assert tok.get_vocab_size() == len(types)
    assert tokens(tok, " the THE ")[:2] == ["the", UNK]  # case kept: THE was never seen


def test_no_silent_vocabulary_cap():
    # tokenizers' trainers default to vocab_size=30000; a larger corpus must keep every type.
    words = [f"w{i}" for i in range(31_000)]
    lines = [" ".join(words[i : i + 100]) for i in range(0, len(words), 100)]
    assert train_tokenizer(TUTORIAL, lines).get_vocab_size() == 31_001
    capped = TokenizerConfig(vocab_size=1000)
    assert train_tokenizer(capped, lines).get_vocab_size() == 1000


def test_bpe_respects_vocab_size_and_decodes():
    cfg = TokenizerConfig(
        kind=TokenizerKind.bpe, normalization=Normalization.none, eos=True, vocab_size=120
    )
    corpus = [" the quick brown fox jumps over the lazy dog "] * 50 + LINES
    tok = train_tokenizer(cfg, corpus)
    assert tok.get_vocab_size() == 120
    assert tok.token_to_id(UNK) == 0
    enc = tok.encode("the lazy fox")
    assert enc.tokens[-1] == EOS
    assert tok.decode(enc.ids) == "the lazy fox"  # Metaspace restores the word boundaries
