"""pytorch/examples' word_language_model RNN language model, batch-first, with carried state.

tokens [B, T] -> embedding -> dropout -> nlayers of LSTM | GRU | tanh-RNN | ReLU-RNN
              (dropout between layers) -> dropout -> linear decoder -> logits [B, T, ntoken]
Shapes: B batch, T window length, E emsize, H nhid, L nlayers, V ntoken.

The hidden state is carried from one window to the next and detached at each window, as
pytorch/examples' repackage_hidden does: the model keeps it in `self.state` (lmx.models.carried
holds the protocol), so the loop calls it like any family. The loop resets it at an epoch's
start, evaluation runs its windows in order from zeros, and checkpoints store it.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn

from lmx.models.dropout import Dropout
from lmx.models.head import adaptive_input as tied_input
from lmx.models.head import decode, make_decoder, tie

_NONLINEARITY = {"rnn_tanh": "tanh", "rnn_relu": "relu"}


class RNNLM(nn.Module):
    carries_state = True

    def __init__(
        self,
        ntoken: int,
        cell: str | Enum = "lstm",
        emsize: int = 200,
        nhid: int = 200,
        nlayers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = False,
        head: str = "softmax",
        cutoffs: list[int] | None = None,
        div_value: float = 4.0,
        adaptive_input: bool = False,
        fused_loss: bool = True,
        sparse_embedding: bool = False,
    ):
        super().__init__()
        cell = getattr(cell, "value", cell)  # the schema's RNNCell enum, or its name
        between = dropout if nlayers > 1 else 0.0  # torch's RNNs drop between layers only
        self.fused_loss = fused_loss
        self.drop = Dropout(dropout)
        if not adaptive_input:  # else set below, from the head's weights
            self.encoder = nn.Embedding(ntoken, emsize, sparse=sparse_embedding)
        if cell in ("lstm", "gru"):
            rnn = nn.LSTM if cell == "lstm" else nn.GRU
            self.rnn = rnn(emsize, nhid, nlayers, dropout=between, batch_first=True)
        elif cell in _NONLINEARITY:
            self.rnn = nn.RNN(emsize, nhid, nlayers, nonlinearity=_NONLINEARITY[cell],
                              dropout=between, batch_first=True)  # fmt: skip
        else:
            raise ValueError(f"cell={cell!r} must be one of lstm, gru, rnn_tanh, rnn_relu")
        self.decoder = make_decoder(nhid, ntoken, head, cutoffs, div_value)
        if adaptive_input:
            if nhid != emsize:
                raise ValueError(f"adaptive_input needs nhid == emsize; got {nhid} and {emsize}")
            self.encoder = tied_input(self.decoder)
        if tie_weights:  # "Using the Output Embedding to Improve Language Models" (Press & Wolf)
            if nhid != emsize:
                raise ValueError(f"tie_weights needs nhid == emsize; got {nhid} and {emsize}")
            tie(self.decoder, self.encoder)
        self.init_weights()
        self.state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None

    def init_weights(self) -> None:
        initrange = 0.1  # pytorch/examples' init; the RNN (and an adaptive head) keep torch's
        if isinstance(self.encoder, nn.Embedding):  # an adaptive input is the head's weights
            nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        if isinstance(self.decoder, nn.Linear):
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(
        self, src: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"
    ) -> torch.Tensor:
        # src: [B, T] token ids; targets: [B, T] next-token ids or None
        # self.state: None or h [L, B, H] (LSTM: (h, c), both [L, B, H]), from the last window
        _check_rows(self.state, src.size(0))
        x = self.drop(self.encoder(src))  # [B, T, E]
        x, state = self._recur(x)  # [B, T, H]; state as above, after the window
        # Detached: the next window starts from these values, the gradient stops here. In
        # fp32: under autocast it comes out in bf16 (autocast casts it back on the way in),
        # and a checkpoint's state must also feed an fp32 run.
        self.state = _detached(state)
        x = self.drop(x)  # [B, T, H]
        return decode(x, self.decoder, targets, reduction, self.fused_loss)  # logits or loss

    def _recur(self, x: torch.Tensor):
        # On a GPU, torch's autocast runs a cuDNN RNN in fp16 whatever dtype it was given
        # (aten/src/ATen/cudnn/AutocastRNN.cpp): under bf16 there is no gradient scaler to
        # keep fp16's small gradients from flushing to zero. So there the RNN runs in fp32
        # (TF32 with device.tf32); the rest of the model stays in bf16.
        if x.is_cuda and torch.is_autocast_enabled("cuda"):
            if torch.get_autocast_dtype("cuda") == torch.bfloat16:
                with torch.autocast("cuda", enabled=False):
                    return self.rnn(x.float(), self.state)
        return self.rnn(x, self.state)


def _detached(state):
    if isinstance(state, torch.Tensor):
        return state.detach().float()
    return tuple(s.detach().float() for s in state)


def _check_rows(state, rows: int) -> None:
    h = state if isinstance(state, torch.Tensor) or state is None else state[0]
    if h is not None and h.size(1) != rows:
        raise RuntimeError(
            f"the carried state has {h.size(1)} rows and this window {rows}: reset the state "
            "(lmx.models.carried.reset_state) before a pass over other data"
        )
