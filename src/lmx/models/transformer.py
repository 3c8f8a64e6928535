"""The tutorial's Transformer language model, batch-first.

tokens [B, T] -> embedding * sqrt(d_model) + sinusoidal positions -> dropout
              -> nn.TransformerEncoder (post-norm, ReLU) under a causal mask
              -> linear decoder -> logits [B, T, ntoken]
Shapes: B batch, T sequence length, D d_model, V ntoken.

Options beyond the tutorial (defaults keep it): pre-norm with a final LayerNorm, GELU, a
separate attention dropout, tied embedding/decoder weights. Given targets, forward returns the
mean cross-entropy through lmx.models.head.decode (the fused loss skips the fp32 logits).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmx.models.dropout import Dropout
from lmx.models.head import adaptive_input as tied_input
from lmx.models.head import decode, make_decoder, tie


class PositionalEncoding(nn.Module):
    """pe[pos, 2k] = sin(pos / 10000^(2k/D)), pe[pos, 2k+1] = cos(...), added, then dropout."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 5000):
        super().__init__()
        self.dropout = Dropout(p=dropout)
        position = torch.arange(max_len).unsqueeze(1)  # [max_len, 1]
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)  # [max_len, D]
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term[: d_model // 2])  # odd D: one fewer cos
        # Not a parameter and not saved: it is a pure function of (max_len, D).
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, D]
        return self.dropout(x + self.pe[: x.size(1)])


def causal_mask(size: int, device: torch.device | None = None) -> torch.Tensor:
    """[T, T] float mask: 0 on and below the diagonal, -inf above (position t sees <= t)."""
    return nn.Transformer.generate_square_subsequent_mask(size, device=device)


class TransformerLM(nn.Module):
    def __init__(
        self,
        ntoken: int,
        d_model: int = 200,
        nhead: int = 2,
        d_hid: int = 200,
        nlayers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = False,
        max_len: int = 5000,
        norm_first: bool = False,
        activation: str = "relu",
        attn_dropout: float | None = None,
        head: str = "softmax",
        cutoffs: list[int] | None = None,
        div_value: float = 4.0,
        adaptive_input: bool = False,
        fused_loss: bool = True,
        sparse_embedding: bool = False,
    ):
        super().__init__()
        self.d_model = d_model
        self.fused_loss = fused_loss
        # sparse: the backward touches only the rows of this batch's tokens, not all V rows
        if not adaptive_input:  # else set below, from the head's weights
            self.embedding = nn.Embedding(ntoken, d_model, sparse=sparse_embedding)
        self.pos_encoder = PositionalEncoding(d_model, dropout, max_len)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, d_hid, dropout, activation, batch_first=True, norm_first=norm_first
        )  # PyTorch defaults otherwise: layer-norm eps 1e-5
        layer.dropout, layer.dropout1, layer.dropout2 = (Dropout(dropout) for _ in range(3))
        layer.self_attn.dropout = dropout if attn_dropout is None else attn_dropout
        # enable_nested_tensor only matters for padding masks, which a LM stream never has.
        # Pre-norm leaves the residual stream unnormalized, so it needs a final LayerNorm.
        self.encoder = nn.TransformerEncoder(
            layer,
            nlayers,
            norm=nn.LayerNorm(d_model) if norm_first else None,
            enable_nested_tensor=False,
        )
        self.decoder = make_decoder(d_model, ntoken, head, cutoffs, div_value)
        if adaptive_input:
            self.embedding = tied_input(self.decoder)
        self.init_weights()
        if tie_weights:  # after init: the shared matrix keeps the embedding's uniform init
            tie(self.decoder, self.embedding)

    def init_weights(self) -> None:
        initrange = 0.1
        if isinstance(self.embedding, nn.Embedding):  # an adaptive input is the head's weights
            nn.init.uniform_(self.embedding.weight, -initrange, initrange)
        if isinstance(self.decoder, nn.Linear):  # an adaptive head keeps torch's init
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(
        self, src: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"
    ) -> torch.Tensor:
        # src: [B, T] token ids; targets: [B, T] next-token ids or None
        # reduction: "mean" (a scalar) or "none" (per-token losses [B, T], for evaluation)
        x = self.embedding(src) * math.sqrt(self.d_model)  # [B, T, D]
        x = self.pos_encoder(x)  # [B, T, D]
        mask = causal_mask(src.size(1), device=src.device)  # [T, T]
        x = self.encoder(x, mask=mask, is_causal=True)  # [B, T, D]
        return decode(x, self.decoder, targets, reduction, self.fused_loss)  # logits or loss
