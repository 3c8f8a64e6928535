"""A decoder-only GPT block stack in nanoGPT's style: pre-norm, causal attention through
scaled_dot_product_attention, a GELU MLP, a final norm, tied embeddings by default.

tokens [B, T] -> token embedding (+ learned positions, or rotary positions inside attention)
              -> dropout -> nlayers x [x + attn(ln1(x)); x + mlp(ln2(x))] -> ln_f
              -> linear decoder (the embedding matrix when tied) -> logits [B, T, ntoken]
Shapes: B batch, T sequence length, D d_model, H nhead, Dh = D / H, F d_hid, V ntoken.

Generation reads a prompt once and then one token at a time through a KVCache: each block
keeps the keys and values of the tokens before, so a new token costs one position, not the
whole window.

Init is GPT-2's: every weight N(0, 0.02), biases zero, and the two projections that write
into the residual stream N(0, 0.02 / sqrt(2 * nlayers)), so the stream's variance does not
grow with depth.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn
from torch.nn import functional as F

from lmx.models.dropout import Dropout
from lmx.models.head import adaptive_input as tied_input
from lmx.models.head import decode, make_decoder, tie


def rotary_tables(length: int, head_dim: int, base: float = 10000.0):
    """cos, sin [T, Dh/2] of RoFormer's rotation angles pos / base^(2i/Dh)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # [Dh/2]
    angles = torch.outer(torch.arange(length).float(), inv_freq)  # [T, Dh/2]
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh] with each pair (x[2i], x[2i+1]) rotated by its position's angle i."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, H, T, Dh/2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # [B, H, T, Dh/2, 2]
    return out.flatten(-2).to(x.dtype)


class KVCache:
    """Keys and values of the tokens read so far, one [k, v] pair per block ([B, H, T, Dh]
    each); `length` tokens, at positions 0..length-1. For inference only."""

    def __init__(self, nlayers: int):
        self.layers: list[list[torch.Tensor]] = [[] for _ in range(nlayers)]
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float, attn_dropout: float,
                 bias: bool, rope: bool, max_len: int):  # fmt: skip
        super().__init__()
        self.nhead, self.attn_dropout = nhead, attn_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # writes into the residual stream
        self.drop = Dropout(dropout)
        if rope:  # not saved: a pure function of (max_len, Dh)
            cos, sin = rotary_tables(max_len, d_model // nhead)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.rope = rope

    def forward(self, x: torch.Tensor, past: list[torch.Tensor] | None = None) -> torch.Tensor:
        # x: [B, T, D]; past: this block's [k, v] of the tokens before (a KVCache), extended
        B, T, D = x.shape
        start = past[0].size(2) if past else 0  # positions start..start+T-1
        q, k, v = self.qkv(x).split(D, dim=2)  # each [B, T, D]
        q, k, v = (t.view(B, T, self.nhead, D // self.nhead).transpose(1, 2) for t in (q, k, v))
        if self.rope:  # [B, H, T, Dh]
            cos, sin = self.cos[start : start + T], self.sin[start : start + T]
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past is not None:
            if past:
                k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
            past[:] = [k, v]  # [B, H, start + T, Dh]
        p = self.attn_dropout if self.training else 0.0
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # query i (position start + i) sees keys 0..start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        # y: [B, H, T, Dh]
        y = y.transpose(1, 2).reshape(B, T, D)  # heads side by side again
        return self.drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_hid: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hid, bias=bias)
        self.proj = nn.Linear(d_hid, d_model, bias=bias)  # writes into the residual stream
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, F] -> [B, T, D]
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, d_model, nhead, d_hid, dropout, attn_dropout, bias, rope, max_len):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, nhead, dropout, attn_dropout, bias, rope, max_len)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, d_hid, dropout, bias)

    def forward(self, x: torch.Tensor, past: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), past)  # [B, T, D]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(
        self,
        ntoken: int,
        d_model: int = 200,
        nhead: int = 2,
        d_hid: int = 800,
        nlayers: int = 2,
        dropout: float = 0.2,
        attn_dropout: float | None = None,
        positions: str | Enum = "learned",
        bias: bool = True,
        tie_weights: bool = True,
        max_len: int = 512,
        head: str = "softmax",
        cutoffs: list[int] | None = None,
        div_value: float = 4.0,
        adaptive_input: bool = False,
        fused_loss: bool = True,
        sparse_embedding: bool = False,
    ):
        super().__init__()
        positions = getattr(positions, "value", positions)  # the schema's enum, or its name
        if positions not in ("learned", "rope"):
            raise ValueError(f"positions={positions!r} must be 'learned' or 'rope'")
        rope = positions == "rope"
        if rope and (d_model // nhead) % 2:
            raise ValueError(f"rotary positions need an even head size; d_model / nhead = "
                             f"{d_model // nhead}")  # fmt: skip
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        self.max_len, self.fused_loss = max_len, fused_loss
        if not adaptive_input:  # else set below, from the head's weights
            self.embedding = nn.Embedding(ntoken, d_model, sparse=sparse_embedding)
        self.positions = None if rope else nn.Embedding(max_len, d_model)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, nhead, d_hid, dropout, attn_dropout, bias, rope, max_len)
            for _ in range(nlayers)
        )
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.decoder = make_decoder(d_model, ntoken, head, cutoffs, div_value,
                                    bias=bias and not tie_weights)  # fmt: skip
        self.apply(_init)
        for block in self.blocks:  # GPT-2: the residual projections scaled by depth
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * nlayers))
        if adaptive_input:
            # A rare id's vector is its cluster's output row times the projection: rows of std
            # h^-1/2 give it GPT-2's std 0.02, as the shortlist's rows have (and the cluster's
            # logits the head's scale).
            for _, out_proj in self.decoder.tail:
                nn.init.normal_(out_proj.weight, mean=0.0, std=out_proj.in_features**-0.5)
            self.embedding = tied_input(self.decoder)
        elif tie_weights:
            tie(self.decoder, self.embedding)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    def forward(
        self,
        src: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        # src: [B, T] token ids; targets: [B, T] next-token ids or None; cache: the tokens
        # before src (generation), which src then extends
        T, start = src.size(1), cache.length if cache is not None else 0
        if start + T > self.max_len:
            raise ValueError(f"a window of {start + T} tokens exceeds max_len={self.max_len}")
        x = self.embedding(src)  # [B, T, D]
        if self.positions is not None:
            x = x + self.positions(torch.arange(start, start + T, device=src.device))  # + [T, D]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None)  # [B, T, D]
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)
        return decode(x, self.decoder, targets, reduction, self.fused_loss)  # logits or loss


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
