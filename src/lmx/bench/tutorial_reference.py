"""The PyTorch tutorial's own model and loop, kept as the baseline that `lmx.bench` measures
lmx against: sequence-first tensors, nn.TransformerEncoder, F.cross_entropy over the full
logits, SGD with grad-norm clipping. Same semantics as ../shared/docs/tutorial-spec.md; only
the timing hooks are ours.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, B, D]
        return self.dropout(x + self.pe[: x.size(0)])


class TransformerModel(nn.Module):
    def __init__(self, ntoken: int, d_model: int, nhead: int, d_hid: int, nlayers: int,
                 dropout: float = 0.5):  # fmt: skip
        super().__init__()
        self.pos_encoder = PositionalEncoding(d_model, dropout)
        layers = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout)
        self.transformer_encoder = nn.TransformerEncoder(layers, nlayers)
        self.embedding = nn.Embedding(ntoken, d_model)
        self.d_model = d_model
        self.linear = nn.Linear(d_model, ntoken)
        initrange = 0.1
        self.embedding.weight.data.uniform_(-initrange, initrange)
        self.linear.bias.data.zero_()
        self.linear.weight.data.uniform_(-initrange, initrange)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        src = self.embedding(src) * math.sqrt(self.d_model)  # [T, B, D]
        src = self.pos_encoder(src)
        output = self.transformer_encoder(src, src_mask)
        return self.linear(output)  # [T, B, V]


def batchify(stream: torch.Tensor, bsz: int) -> torch.Tensor:
    seq_len = stream.size(0) // bsz
    return stream[: seq_len * bsz].view(bsz, seq_len).t().contiguous()  # [len, bsz]


def get_batch(source: torch.Tensor, i: int, bptt: int):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def train_steps(model, train_data, bptt, ntokens, steps, lr=5.0, warmup=5, first=0):
    """The tutorial's train() for `steps` batches from batch `first`; returns (tokens,
    seconds) of the steps after the first `warmup`."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    device = train_data.device
    src_mask = nn.Transformer.generate_square_subsequent_mask(bptt).to(device)
    tokens, seconds = 0, 0.0
    for batch, i in enumerate(range(first * bptt, train_data.size(0) - 1, bptt)):
        if batch == steps:
            break
        start = time.perf_counter()
        data, targets = get_batch(train_data, i, bptt)
        seq_len = data.size(0)
        mask = src_mask if seq_len == bptt else src_mask[:seq_len, :seq_len]
        output = model(data, mask)
        loss = criterion(output.view(-1, ntokens), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        loss.item()  # the tutorial adds it to total_loss every step
        if batch >= warmup:
            tokens += targets.numel()
            seconds += time.perf_counter() - start
    return tokens, seconds


def evaluate(model, eval_data, bptt, ntokens, limit=None) -> float:
    """The tutorial's evaluate(): mean cross-entropy per token over the split (over its first
    `limit` batches)."""
    model.eval()
    criterion = nn.CrossEntropyLoss()
    src_mask = nn.Transformer.generate_square_subsequent_mask(bptt).to(eval_data.device)
    total_loss, count = 0.0, 0
    with torch.no_grad():
        for batch, i in enumerate(range(0, eval_data.size(0) - 1, bptt)):
            if batch == limit:
                break
            data, targets = get_batch(eval_data, i, bptt)
            seq_len = data.size(0)
            mask = src_mask if seq_len == bptt else src_mask[:seq_len, :seq_len]
            output = model(data, mask)
            total_loss += seq_len * criterion(output.view(-1, ntokens), targets).item()
            count += seq_len
    return total_loss / count  # the tutorial's len(eval_data) - 1 for the whole split
