"""trainer.samples: a few continuations written to TensorBoard's Text tab after each
validation, so a run shows what its model writes as it learns.

Each starts from 8 tokens of a validation row and adds 30 sampled ones (temperature 1). The
sampler has its own random generator, seeded by the step, and the model's carried state and
mode are put back after: training and its exact resume are untouched. A compiled model
samples eagerly (one token at a time would recompile it), and a sampling error is logged,
not raised: samples are never worth a run.
"""

from __future__ import annotations

import contextlib
import functools
import html
import logging
from typing import TYPE_CHECKING

import torch

from lmx.generate import decode, sample

if TYPE_CHECKING:
    from lmx.training.loop import Run

log = logging.getLogger("lmx.training")
PROMPT_TOKENS, NEW_TOKENS = 8, 30


def write_samples(run: Run, count: int, step: int) -> None:
    """`count` samples of the validated weights (the average, with trainer.ema) to the Text
    tab; rank 0 only."""
    if not count or not run.world.is_main:
        return
    with run.average.applied():
        text = samples_markdown(run, count, step)
    if text is not None:
        run.tb.text("samples", text, step)


def samples_markdown(run: Run, count: int, step: int) -> str | None:
    """`count` samples as Markdown: the prompt in bold, then what the model wrote; None (and
    a warning) if sampling failed."""
    tok = _tokenizer(run.checkpoint_meta["tokenizer"])
    valid = run.splits["valid"]  # [rows, length]
    model, was_training = run.model, run.model.training
    model.eval()
    generator = torch.Generator().manual_seed(step)
    lines = []
    try:
        with _eager():
            for i in range(count):
                prompt = valid[i % valid.size(0), :PROMPT_TOKENS].tolist()
                new = sample(model, prompt, NEW_TOKENS, run.bptt, generator=generator)
                # <unk> shows; a line break (<eos>) is drawn, as Markdown would end the item
                text = [html.escape(decode(tok, ids)).replace("\n", " ↵ ") for ids in (prompt, new)]
                lines.append(f"{i + 1}. **{text[0].strip()}** {text[1]}")
    except Exception as err:  # a sample is never worth the run
        log.warning("trainer.samples: sampling failed at step %d (%s: %s); training goes on",
                    step, type(err).__name__, err)  # fmt: skip
        return None
    finally:
        model.train(was_training)
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _tokenizer(saved: str):
    """The run's tokenizer, parsed once, not at every validation."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(saved)


def _eager():
    """Compiled code off: a compiled model would recompile for every new length."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance else contextlib.nullcontext()
