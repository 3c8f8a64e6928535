"""Integration: the real WikiText-2 in ../shared gives the published vocabulary sizes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import SHARED_WT2
from lmx.config.schema import DataConfig, Normalization
from lmx.data.cache import load_corpus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (SHARED_WT2 / "train.txt").is_file(),
        reason=f"WikiText-2 not found at {SHARED_WT2} (the shared data folder is absent)",
    ),
]


def load(tmp_path, **tokenizer):
    cfg = OmegaConf.structured(DataConfig(local_dir=str(SHARED_WT2), cache_dir=str(tmp_path)))
    for key, value in tokenizer.items():
        cfg.tokenizer[key] = value
    return load_corpus(cfg)


def test_tutorial_convention(tmp_path):
    corpus = load(tmp_path)
    assert corpus.vocab_size == 28_782
    lengths = {s: len(t) for s, t in corpus.splits.items()}
    assert lengths == {"train": 2_049_990, "valid": 214_417, "test": 241_859}
    assert corpus.tokenizer.id_to_token(0) == "<unk>"


def test_pytorch_examples_convention(tmp_path):
    corpus = load(tmp_path, normalization=Normalization.none, eos=True)
    assert corpus.vocab_size == 33_278
    lengths = {s: len(t) for s, t in corpus.splits.items()}
    assert lengths == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
