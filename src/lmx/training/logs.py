"""What a run reports as it goes: the tutorial's log lines, TensorBoard scalars and the HParams
entry, and the run summary in metrics.json. Only rank 0 writes; elsewhere these are no-ops."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmx.files import METRICS_FILE, write_json
from lmx.perplexity import Score, ppl
from lmx.stats import shown

if TYPE_CHECKING:
    import torch

    from lmx.training.budget import Stopping
    from lmx.training.loop import Run
    from lmx.training.state import Progress

log = logging.getLogger("lmx.training")


class TensorBoard:
    """Scalars, samples and the HParams session of a run (no-op when disabled)."""

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

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def start_session(
        self, hparams: Mapping[str, Any], metrics: list[str], differs: list[str]
    ) -> None:
        """The HParams entry (hparams_config): its keys, `differs` flagged (TensorBoard lists
        those first), and this run's values, against `metrics`, scalar series the run logs
        (HParams shows their last values; no hparam/* cards of their own). Also the chart of
        train and val ppl together."""
        if self.writer is None:
            return
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        experiment, start, _ = hparams_summaries(dict(hparams), dict.fromkeys(metrics, 0.0))
        meta = experiment.value[0].metadata.plugin_data
        data = HParamsPluginData.FromString(meta.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in differs
        meta.content = data.SerializeToString()
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)
        # the tags are regular expressions: anchored, or val/ppl would take val/ppl_raw too
        layout = {
            "perplexity": {"train and validation ppl": ["Multiline", ["^train/ppl$", "^val/ppl$"]]}
        }
        self.writer.add_custom_scalars(layout)

    def end_session(self) -> None:
        """The HParams session ends as a success (a failed run never gets here)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        *_, end = hparams_summaries({}, {})
        self.writer.file_writer.add_summary(end)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------- log lines
def log_window(
    run: Run,
    p: Progress,
    n_steps: int,
    seconds: float,
    before: tuple[int, int],
    steps: int,
    lr: float,
) -> dict[str, str]:
    """The tutorial's train line and the TensorBoard scalars of the steps since the last one;
    then a new window starts. Returns the progress bar's figures: the loss and the lr.

    `seconds` is this process's time in the window and `steps` the steps it took in it,
    skipped ones included; `before` the (batches, tokens) of the window that an earlier
    process ran (a run resumed mid-window): in the loss, not in the speed. `lr` is what the
    window's last step trained at. A window whose every step
    was skipped (trainer.on_nonfinite=skip) has no loss: it says so, and TensorBoard gets
    no loss point for it."""
    w = p.window
    counted = w["batches"]
    loss = w["loss"] / counted if counted else math.nan
    steps = max(steps, 1)
    log.info(
        "| epoch %3d | %5d/%5d batches | lr %.3g | ms/batch %6.1f | loss %5.2f | ppl %s%s",
        p.epoch,
        p.batch,
        n_steps,
        lr,
        1000 * seconds / steps,
        loss,
        shown(ppl(loss)) if counted else "-",
        "" if counted else " | every step skipped (non-finite)",
    )
    scalars = {"train/lr": lr}
    if counted:
        scalars.update({"train/loss": loss, "train/ppl": ppl(loss),
                        "train/grad_norm": w["norm"] / counted,
                        "train/tokens_per_s": (w["tokens"] - before[1]) / seconds})  # fmt: skip
    run.tb.scalars(scalars, p.step)
    p.reset_window()
    return {"loss": f"{loss:.2f}", "lr": f"{lr:.3g}"}


def log_validation(p: Progress, score: Score, whole: bool) -> None:
    """The tutorial's end-of-epoch line; inside an epoch (trainer.val_every_steps, or a
    budget that ended training there) it names the step instead."""
    where = f"end of epoch {p.epoch:3d}" if whole else f"epoch {p.epoch:3d}, step {p.step:6d}"
    log.info("-" * 89)
    log.info(
        "| %s | time: %6.1fs | valid loss %5.2f | valid ppl %s%s",
        where,
        p.epoch_seconds,
        score.loss,
        shown(score.ppl),
        score.coverage(),
    )
    log.info("-" * 89)
    if not math.isfinite(score.loss):
        log.warning("validation loss is %s at %s: it cannot be the best", score.loss, where)


def log_test(best_epoch: int, score: Score | None) -> None:
    if score is None:
        log.info("| End of training | best epoch %d | test split not scored (trainer.test"
                 "=false)", best_epoch)  # fmt: skip
        return
    log.info("=" * 89)
    log.info(
        "| End of training | best epoch %d | test loss %5.2f | test ppl %s%s",
        best_epoch,
        score.loss,
        shown(score.ppl),
        score.coverage(),
    )
    log.info("=" * 89)


def validation_record(score: Score, raw: Score | None) -> tuple[dict, dict]:
    """TensorBoard scalars and history fields of one validation; `raw`: the model's own
    weights where `score` is their average's (trainer.ema)."""
    scalars = {"val/loss": score.loss, "val/ppl": score.ppl}
    details = score_fields("val", score)
    if raw is not None:
        scalars.update({"val/loss_raw": raw.loss, "val/ppl_raw": raw.ppl})
        details.update(val_loss_raw=raw.loss, val_ppl_raw=raw.ppl)
    return scalars, details


def score_fields(split: str, score: Score | None) -> dict[str, Any]:
    """metrics.json's fields for one split's evaluation: how much of it was scored."""
    if score is None:
        return {f"{split}_tokens_scored": None, f"{split}_tokens_total": None}
    return {
        f"{split}_tokens_scored": score.tokens,
        f"{split}_tokens_total": score.total,
        f"{split}_eval": score.mode,  # how the windows were laid
    }


def summary(
    run: Run,
    p: Progress,
    status: str,
    val: Score | None,
    wall: float,
    test: Score | None = None,
    stopping: Stopping | None = None,
) -> dict[str, Any]:
    """metrics.json: the run so far. `val` is this process's latest validation; a resumed
    run that has not validated yet takes the figures of the last one it recorded. A finished
    run ("done") adds its best epoch, its test figures (null when trainer.test=false) and
    what ended training (epochs, max_steps, max_time or early_stop) and why."""
    last = p.history[-1] if p.history else {}
    scored = score_fields("val", val) if val else {
        k: last.get(k) for k in ("val_tokens_scored", "val_tokens_total")}  # fmt: skip
    out = {
        "status": status,
        "vocab_size": run.checkpoint_meta["vocab_size"],
        "parameters": parameter_count(run.model),
        "train_tokens": run.train_tokens,
        "epochs": sum(not h.get("partial_epoch") for h in p.history),  # whole epochs
        "steps": p.step,
        "history": p.history,
        "best_val_loss": p.best_val_loss,
        "best_val_ppl": ppl(p.best_val_loss),
        **scored,
        "eval_partial": scored["val_tokens_scored"] != scored["val_tokens_total"],
        "train_tokens_per_s": p.timed_tokens / p.timed_seconds if p.timed_seconds else None,
        "throughput_excluded_steps": p.untimed_steps,
        "skipped_batches": p.skipped_batches,
        "scaler_skipped_steps": p.scaler_skipped_steps,
        "world_size": run.world.world_size,
        "wall_time_s": wall,
    }
    if status == "done":
        out.update(
            best_epoch=p.best_epoch,
            test_loss=test.loss if test else None,
            test_ppl=test.ppl if test else None,
            **score_fields("test", test),
            stopped_by=stopping.reason if stopping and stopping.reason else "epochs",
            stop_reason=stopping.message if stopping else None,
        )
        out["eval_partial"] = out["eval_partial"] or bool(test and test.partial)
    return out


def parameter_count(model: torch.nn.Module) -> int:
    """Numbers in the model's parameters; a tied matrix counts once."""
    return sum(p.numel() for p in model.parameters())


def write_metrics(run: Run, metrics: dict[str, Any]) -> None:
    if run.world.is_main:
        write_json(run.run_dir / METRICS_FILE, metrics)
