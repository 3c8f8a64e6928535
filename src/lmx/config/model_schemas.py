"""The model families' typed schemas (every default of each family lives here), and
MODEL_FAMILIES, which names each `model=NAME` option's schema. lmx.config.schema re-exports
them beside the other components' schemas."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class RNNCell(Enum):
    lstm = "lstm"
    gru = "gru"
    rnn_tanh = "rnn_tanh"  # Elman RNN, tanh
    rnn_relu = "rnn_relu"  # Elman RNN, ReLU


class Head(Enum):
    softmax = "softmax"  # a linear decoder over the whole vocabulary
    adaptive = "adaptive"  # adaptive softmax: frequent ids in the head, rare ones in clusters


class Positions(Enum):
    learned = "learned"  # a learned embedding per position, added to the token embedding
    rope = "rope"  # rotary positions, applied to queries and keys in every layer


@dataclass
class TransformerConfig:
    _target_: str = "lmx.models.transformer.TransformerLM"
    d_model: int = 200  # embedding dimension
    nhead: int = 2  # attention heads; must divide d_model
    d_hid: int = 200  # feed-forward hidden size
    nlayers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False  # share embedding and decoder weights
    max_len: int = 5000  # longest sequence the positional table covers
    norm_first: bool = False  # pre-norm blocks plus a final LayerNorm (tutorial: post-norm)
    activation: str = "relu"  # feed-forward activation: relu or gelu
    attn_dropout: float | None = None  # dropout on attention weights; None: same as dropout
    # Output layer (lmx.models.head): softmax, or adaptive with the ids split at `cutoffs`
    # (ids in frequency order: word-level tokenizers) and each cluster's projection smaller
    # by div_value. tie_weights is for the softmax head. adaptive_input: the embedding reads
    # the adaptive head's weights (fairseq's tied adaptive input): no [V, D] matrix at all.
    head: Head = Head.softmax
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    div_value: float = 4.0
    adaptive_input: bool = False
    # Loss through lmx.models.fused_loss.linear_cross_entropy: same value, no fp32 logits (faster).
    fused_loss: bool = True
    # Sparse embedding gradient (only the batch's rows): faster with SGD; untied weights only.
    sparse_embedding: bool = False


@dataclass
class LSTMConfig:
    """pytorch/examples' word_language_model RNN (its defaults): carries its hidden state
    from window to window, in training and in evaluation."""

    _target_: str = "lmx.models.rnn.RNNLM"
    cell: RNNCell = RNNCell.lstm
    emsize: int = 200  # embedding size
    nhid: int = 200  # hidden units per layer
    nlayers: int = 2
    dropout: float = 0.2  # on the embedding, between layers and on the output
    tie_weights: bool = False  # share embedding and decoder weights; needs emsize == nhid
    head: Head = Head.softmax  # as TransformerConfig.head, with cutoffs and div_value
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    div_value: float = 4.0
    adaptive_input: bool = False  # as TransformerConfig.adaptive_input; needs emsize == nhid
    fused_loss: bool = True  # as TransformerConfig.fused_loss
    sparse_embedding: bool = False  # as TransformerConfig.sparse_embedding


@dataclass
class GPTConfig:
    """A decoder-only block stack in nanoGPT's style (lmx.models.gpt)."""

    _target_: str = "lmx.models.gpt.GPT"
    d_model: int = 200
    nhead: int = 2  # must divide d_model
    d_hid: int = 800  # MLP hidden size
    nlayers: int = 2
    dropout: float = 0.2  # on the embeddings, and on each attention and MLP output
    attn_dropout: float | None = None  # on attention weights; None: same as dropout
    positions: Positions = Positions.learned
    bias: bool = True  # biases in the linear layers and LayerNorms
    tie_weights: bool = True  # the decoder is the token embedding
    max_len: int = 512  # longest window (learned positions have one row each)
    head: Head = Head.softmax  # as TransformerConfig.head, with cutoffs and div_value
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    div_value: float = 4.0
    adaptive_input: bool = False  # as TransformerConfig.adaptive_input
    fused_loss: bool = True  # as TransformerConfig.fused_loss
    sparse_embedding: bool = False  # as TransformerConfig.sparse_embedding; untied only


# Each model family: its `model=NAME` option and schema. A saved config is typed by its target.
MODEL_FAMILIES: dict[str, type] = {
    "transformer": TransformerConfig,
    "lstm": LSTMConfig,
    "gpt": GPTConfig,
}
