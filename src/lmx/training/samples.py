"""trainer.samples: a few continuations written to TensorBoard's Text tab after each
validation, so a run shows what its model writes as it learns.

Each starts from 8 tokens of a validation row and adds 30 sampled ones (temperature 1). The
sampler has its own random generator, seeded by the step, and the model's carried state is
put back after: training and its exact resume are untouched.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import torch

from lmx.generate import sample

if TYPE_CHECKING:
    from lmx.training.loop import Run

PROMPT_TOKENS, NEW_TOKENS = 8, 30


def samples_markdown(run: Run, count: int, step: int) -> str:
    """`count` samples as Markdown: the prompt in bold, then what the model wrote."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(run.checkpoint_meta["tokenizer"])
    valid = run.splits["valid"]  # [rows, length]
    model, was_training = run.model, run.model.training
    model.eval()
    generator = torch.Generator().manual_seed(step)
    lines = []
    try:
        for i in range(count):
            prompt = valid[i % valid.size(0), :PROMPT_TOKENS].tolist()
            new = sample(model, prompt, NEW_TOKENS, run.bptt, generator=generator)
            text = [html.escape(tok.decode(ids)) for ids in (prompt, new)]  # <unk> stays
            lines.append(f"{i + 1}. **{text[0]}** {text[1]}")
    finally:
        model.train(was_training)
    return "\n".join(lines)
