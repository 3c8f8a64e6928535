"""Build and train a `tokenizers` tokenizer from a TokenizerConfig.

Two word-level conventions matter for comparing numbers with published runs:
- basic_english (the tutorial): lowercase, spaces around ' . , ( ) ! ?, drop ", turn ; : into
  spaces, split on whitespace, no end-of-line token.
- none + eos (pytorch/examples): split on whitespace, keep case, <eos> after every line.
The README gives the vocabulary size each makes of WikiText-2.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

from lmx.config.schema import Normalization, TokenizerConfig, TokenizerKind

UNK = "<unk>"
EOS = "<eos>"

# torchtext's basic_english, applied in this order after lowercasing.
BASIC_ENGLISH_RULES = [
    ("'", " '  "),
    ('"', ""),
    (".", " . "),
    ("<br />", " "),
    (",", " , "),
    ("(", " ( "),
    (")", " ) "),
    ("!", " ! "),
    ("?", " ? "),
    (";", " "),
    (":", " "),
]

# The trainers' default vocab_size (30,000) would silently cap a larger vocabulary.
_NO_CAP = 2**31 - 1


def special_tokens(cfg: TokenizerConfig) -> list[str]:
    return [UNK, EOS] if cfg.eos else [UNK]


def normalizer_of(cfg: TokenizerConfig) -> normalizers.Normalizer | None:
    if cfg.normalization == Normalization.basic_english:
        steps = [normalizers.Lowercase()]
        steps += [normalizers.Replace(old, new) for old, new in BASIC_ENGLISH_RULES]
        return normalizers.Sequence(steps)
    return None


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """An untrained tokenizer with the configured normalizer, splitter and model."""
    if cfg.kind == TokenizerKind.word:
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # WordLevel decoding joins tokens with spaces: no decoder needed.
    else:
        tok = Tokenizer(models.BPE(unk_token=UNK))
        # Metaspace marks word starts, so decoded subwords get their spaces back.
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
    normalizer = normalizer_of(cfg)
    if normalizer is not None:
        tok.normalizer = normalizer
    return tok


def _trainer(cfg: TokenizerConfig) -> trainers.Trainer:
    vocab_size = cfg.vocab_size if cfg.vocab_size is not None else _NO_CAP
    kwargs = dict(
        vocab_size=vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=special_tokens(cfg),
        show_progress=False,
    )
    if cfg.kind == TokenizerKind.word:
        return trainers.WordLevelTrainer(**kwargs)
    return trainers.BpeTrainer(**kwargs)


def train_tokenizer(cfg: TokenizerConfig, lines: Iterable[str]) -> Tokenizer:
    """Train on `lines` (the train split only); specials come first, <unk> at id 0."""
    tok = build_tokenizer(cfg)
    tok.train_from_iterator(lines, trainer=_trainer(cfg))
    if cfg.kind == TokenizerKind.word:
        return word_tokenizer(cfg, _specials_first(tok, cfg))
    return _with_eos(tok, cfg)


def word_tokenizer(cfg: TokenizerConfig, vocab: list[str]) -> Tokenizer:
    """The word-level tokenizer of a vocabulary (id = place in the list, specials first)."""
    tok = build_tokenizer(cfg)
    tok.model = models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token=UNK)
    tok.add_special_tokens(special_tokens(cfg))
    return _with_eos(tok, cfg)


def _with_eos(tok: Tokenizer, cfg: TokenizerConfig) -> Tokenizer:
    if cfg.eos:
        # Every encoded line ends with <eos>, an empty one included (as pytorch/examples).
        tok.post_processor = TemplateProcessing(
            single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
        )
    return tok


def _specials_first(trained: Tokenizer, cfg: TokenizerConfig) -> list[str]:
    """A trained word-level vocabulary with the specials at ids 0, 1, ...

    WordLevelTrainer ranks a special by its count when the corpus also contains it (WikiText
    has `<unk>` in its text), whereas the tutorial's vocabulary has `<unk>` at index 0. The
    rest keeps the trainer's order: most frequent first, ties alphabetical, as torchtext.
    """
    specials = special_tokens(cfg)
    vocab = trained.get_vocab()
    return specials + [w for w in sorted(vocab, key=vocab.__getitem__) if w not in specials]
