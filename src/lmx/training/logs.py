"""What a run reports as it goes: the tutorial's log lines, TensorBoard scalars and the HParams
entry, and the run summary in metrics.json. Only rank 0 writes; elsewhere these are no-ops."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmx.perplexity import Score, ppl

log = logging.getLogger("lmx.training")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and None become strings (HParams takes scalars)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class TensorBoard:
    """Scalars and the HParams entry of a run (no-op when disabled)."""

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, config: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        # run_name="." keeps the entry in the run's own event folder, not a timestamped subdir.
        self.writer.add_hparams(flatten(config), dict(metrics), run_name=".")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------- log lines
def log_train(epoch: int, batch: int, n_steps: int, lr: float, ms: float, loss: float) -> None:
    log.info(
        "| epoch %3d | %5d/%5d batches | lr %.3g | ms/batch %6.1f | loss %5.2f | ppl %8.2f",
        epoch,
        batch,
        n_steps,
        lr,
        ms,
        loss,
        ppl(loss),
    )


def log_validation(epoch: int, seconds: float, score: Score) -> None:
    log.info("-" * 89)
    log.info(
        "| end of epoch %3d | time: %6.1fs | valid loss %5.2f | valid ppl %8.2f%s",
        epoch,
        seconds,
        score.loss,
        score.ppl,
        score.coverage(),
    )
    log.info("-" * 89)


def log_test(best_epoch: int, score: Score | None) -> None:
    if score is None:
        log.info("| End of training | best epoch %d | test split not scored (trainer.test"
                 "=false)", best_epoch)  # fmt: skip
        return
    log.info("=" * 89)
    log.info(
        "| End of training | best epoch %d | test loss %5.2f | test ppl %8.2f%s",
        best_epoch,
        score.loss,
        score.ppl,
        score.coverage(),
    )
    log.info("=" * 89)


def score_fields(split: str, score: Score | None) -> dict[str, Any]:
    """metrics.json's fields for one split's evaluation: how much of it was scored."""
    if score is None:
        return {f"{split}_tokens_scored": None, f"{split}_tokens_total": None}
    return {f"{split}_tokens_scored": score.tokens, f"{split}_tokens_total": score.total}
