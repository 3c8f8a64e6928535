"""The training loop, as the tutorial's: for each epoch, train on its batches, validate, keep
the best; at the end, load the best checkpoint back and score it on test.

Where the loop stands lives in `Progress` (state.py) and goes into every checkpoint, so a
resumed run continues exactly where it stopped. One optimizer step is step.py's; what a
checkpoint holds is checkpoint.py's; the log lines and TensorBoard are logs.py's.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lmx.config.schema import Interval, NonFinite, Precision, TrainerConfig
from lmx.data.batching import batch_starts, get_batch, num_steps
from lmx.files import METRICS_FILE, write_json
from lmx.perplexity import Score, evaluate, ppl
from lmx.runtime.distributed import World
from lmx.training import logs
from lmx.training.checkpoint import Checkpoint, load_checkpoint, rng_state, save_checkpoint
from lmx.training.optim import Schedule
from lmx.training.signals import Interrupted, StopSignals
from lmx.training.state import Progress
from lmx.training.step import NonFiniteLoss, train_step

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What the loop needs besides the trainer config: built objects and where to write."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    splits: dict[str, torch.Tensor]  # batchified: split -> [rows, length]
    train_tokens: int  # length of the training stream before batchify
    bptt: int
    device: torch.device
    precision: Precision
    run_dir: Path
    tb: logs.TensorBoard
    checkpoint_meta: dict[str, Any]  # config, vocab_size, tokenizer: in every checkpoint
    world: World = field(default_factory=World)  # torchrun ranks; a world of one by default
    train_model: torch.nn.Module | None = None  # model wrapped for training (DDP); else model

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model


class Trainer:
    def __init__(self, run: Run, cfg: TrainerConfig, resume_from: Checkpoint | None = None):
        self.run, self.cfg = run, cfg
        self.best_path = run.run_dir / "checkpoints" / "best.pt"
        self.last_path = run.run_dir / "checkpoints" / "last.pt"
        self.steps_per_epoch = num_steps(run.splits["train"], run.bptt, cfg.limit_train_batches)
        self.progress = Progress.from_dict(resume_from.progress) if resume_from else Progress()
        self.wall_start = time.perf_counter()
        self.warmup_left = cfg.throughput_warmup_steps
        self.stop = StopSignals()
        self.val_score: Score | None = None  # this process's latest validation
        self.eval_args = dict(
            bptt=run.bptt,
            device=run.device,
            precision=run.precision,
            limit=cfg.limit_eval_batches,
            tokens_per_forward=cfg.eval_tokens_per_forward,
            reduce=lambda values: run.world.sum(values, run.device),
        )

    def fit(self) -> dict[str, Any]:
        """Train to cfg.epochs, then test the best checkpoint. Returns the run summary."""
        p = self.progress
        with self.stop:
            while p.epoch <= self.cfg.epochs:
                self.train_epoch()
                self.validate()
        self.settle_best()
        return self.test()

    def train_epoch(self) -> None:
        """The rest of the current epoch's batches (all of them, unless resuming mid-epoch)."""
        run, cfg, p = self.run, self.cfg, self.progress
        run.train_model.train()
        source, n_steps = run.splits["train"], self.steps_per_epoch
        bar = tqdm(total=n_steps, initial=p.batch, desc=f"epoch {p.epoch}", unit="batch",
                   disable=None if cfg.progress else True, leave=False)  # fmt: skip
        self.window_start = time.perf_counter()
        with logging_redirect_tqdm():
            for i in batch_starts(source, run.bptt)[p.batch : n_steps]:
                start = time.perf_counter()
                data, targets = get_batch(source, i, run.bptt)
                result = train_step(run.train_model, list(run.model.parameters()), run.optimizer,
                                    run.scaler, data, targets, run.precision, cfg.grad_clip,
                                    run.world, self.stop.requested is not None)  # fmt: skip
                if result.nonfinite:
                    self._nonfinite(result.nonfinite)
                p.scaler_skipped_steps += result.scaler_skipped
                if run.schedule.interval == Interval.step:
                    run.schedule.scheduler.step()
                tokens = targets.numel() * run.world.world_size  # equal shares
                p.count_step(result.loss, result.norm, tokens)
                p.count_time(time.perf_counter() - start, tokens, timed=self.warmup_left <= 0)
                self.warmup_left -= 1
                bar.update()
                bar.set_postfix(loss=f"{result.loss:.2f}", lr=f"{self._lr():.3g}")
                if p.batch % cfg.log_interval == 0 or p.batch == n_steps:
                    self._log_window(n_steps)
                stop = result.stop_requested if run.world.enabled else self.stop.requested
                if stop:
                    bar.close()
                    self._interrupt()
                every = cfg.checkpoint_every_steps
                if every and p.step % every == 0 and p.batch < n_steps:
                    self._save_last()  # the epoch's end saves anyway
        bar.close()

    def validate(self) -> None:
        """End of an epoch: score valid, step an epoch schedule, keep the best, save."""
        run, p = self.run, self.progress
        score = self.val_score = evaluate(run.model, run.splits["valid"], **self.eval_args)
        lr = self._lr()
        if run.schedule.interval == Interval.epoch:
            run.schedule.scheduler.step()
        logs.log_validation(p.epoch, p.epoch_seconds, score)
        if not math.isfinite(score.loss):
            log.warning("validation loss is %s after epoch %d: it cannot be the best", score.loss,
                        p.epoch)  # fmt: skip
        run.tb.scalars({"val/loss": score.loss, "val/ppl": score.ppl}, p.step)
        run.tb.flush()
        p.history.append(
            {
                "epoch": p.epoch,
                "step": p.step,
                "train_loss": p.epoch_loss / max(p.epoch_tokens, 1),
                "val_loss": score.loss,
                "val_ppl": score.ppl,
                **logs.score_fields("val", score),
                "lr": lr,
                "train_seconds": p.epoch_seconds,
            }
        )
        improved = score.loss < p.best_val_loss
        if improved:
            p.best_val_loss, p.best_epoch = score.loss, p.epoch
        p.next_epoch()
        if improved:
            self._save(self.best_path)
        self._save_last()
        self._write_metrics(self._summary("running"))  # nothing lost

    def settle_best(self) -> None:
        """After the epochs: a best model exists, or say why there is none."""
        p = self.progress
        if p.best_epoch is not None:
            return
        if p.history:  # every validation was inf/nan
            losses = ", ".join(f"epoch {h['epoch']}: {h['val_loss']}" for h in p.history)
            raise NonFiniteLoss(
                f"every validation loss was non-finite ({losses}), so there is no best model "
                "to test. The weights diverged: lower optim.lr or tighten trainer.grad_clip."
            )
        # epochs=0: the untrained model is the best there is
        score = evaluate(self.run.model, self.run.splits["valid"], **self.eval_args)
        p.best_val_loss, p.best_epoch, self.val_score = score.loss, 0, score
        self._save(self.best_path)
        self._save(self.last_path)

    def test(self) -> dict[str, Any]:
        """Score the best checkpoint on test (unless trainer.test=false); write the summary."""
        run, p = self.run, self.progress
        score = None
        if self.cfg.test:
            run.model.load_state_dict(load_checkpoint(self.best_path, run.device).model)
            score = evaluate(run.model, run.splits["test"], **self.eval_args)
            run.tb.scalars({"test/loss": score.loss, "test/ppl": score.ppl}, p.step)
        logs.log_test(p.best_epoch, score)
        metrics = self._summary("done")
        metrics.update(
            best_epoch=p.best_epoch,
            test_loss=score.loss if score else None,
            test_ppl=score.ppl if score else None,
            **logs.score_fields("test", score),
        )
        metrics["eval_partial"] = metrics["eval_partial"] or bool(score and score.partial)
        self._write_metrics(metrics)
        hparams = {
            k: metrics[k]
            for k in ("best_val_ppl", "test_ppl", "val_tokens_scored", "test_tokens_scored")
            if metrics[k] is not None
        }
        run.tb.hparams({**run.checkpoint_meta["config"], "eval_partial": metrics["eval_partial"]},
                       {f"hparam/{k}": v for k, v in hparams.items()})  # fmt: skip
        return metrics

    # ------------------------------------------------------------------ helpers
    def _lr(self) -> float:
        return self.run.optimizer.param_groups[0]["lr"]

    def _log_window(self, n_steps: int) -> None:
        p, w = self.progress, self.progress.window
        seconds = time.perf_counter() - self.window_start
        n = max(w["batches"], 1)
        mean_loss = w["loss"] / n
        logs.log_train(p.epoch, p.batch, n_steps, self._lr(), 1000 * seconds / n, mean_loss)
        self.run.tb.scalars(
            {
                "train/loss": mean_loss,
                "train/ppl": ppl(mean_loss),
                "train/lr": self._lr(),
                "train/grad_norm": w["norm"] / n,
                "train/tokens_per_s": w["tokens"] / seconds,
            },
            p.step,
        )
        p.reset_window()
        self.window_start = time.perf_counter()

    def _nonfinite(self, what: str) -> None:
        """trainer.on_nonfinite: count and skip the batch, or stop the run."""
        p = self.progress
        where = f"step {p.step + 1} (epoch {p.epoch}, batch {p.batch + 1})"
        if self.cfg.on_nonfinite == NonFinite.skip:
            p.skipped_batches += 1
            log.warning("non-finite %s at %s: batch skipped", what, where)
            return
        best = f"{self.best_path} (epoch {p.best_epoch})" if p.best_epoch else "no best.pt yet"
        raise NonFiniteLoss(
            f"non-finite {what} at {where}; training stopped. Best checkpoint: {best}. Lower "
            "optim.lr or tighten trainer.grad_clip, or set trainer.on_nonfinite=skip to skip "
            "such batches."
        )

    def _save(self, path: Path) -> None:
        """Called on every rank: rank 0 writes, with each rank's RNG state."""
        run = self.run
        rngs = run.world.gather(rng_state())
        if run.world.is_main:
            ckpt = Checkpoint(
                model=run.model.state_dict(),
                optimizer=run.optimizer.state_dict(),
                scheduler=run.schedule.scheduler.state_dict(),
                scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
                progress=self.progress.to_dict(),
                rng=rngs[0],
                rng_per_rank=rngs if run.world.enabled else None,
                **run.checkpoint_meta,
            )
            save_checkpoint(path, ckpt)
        run.world.barrier()  # nobody reads the file before it is complete

    def _save_last(self) -> None:
        self.progress.wall_seconds = self._wall_seconds()
        self.wall_start = time.perf_counter()
        self._save(self.last_path)

    def _wall_seconds(self) -> float:
        return self.progress.wall_seconds + time.perf_counter() - self.wall_start

    def _interrupt(self) -> None:
        self._save_last()
        signum = self.stop.requested or signal.SIGTERM  # another rank got it
        name = "SIGINT" if signum == 2 else "SIGTERM" if signum == 15 else f"signal {signum}"
        p = self.progress
        raise Interrupted(
            f"{name}: stopped after step {p.step} (epoch {p.epoch}, batch {p.batch}) and saved "
            f"{self.last_path}. Continue with trainer.resume=auto "
            f"hydra.run.dir={self.run.run_dir}",
            signum,
        )

    def _summary(self, status: str) -> dict[str, Any]:
        p, run = self.progress, self.run
        last = p.history[-1] if p.history else {}  # a resumed run that validated before
        val = logs.score_fields("val", self.val_score) if self.val_score else {
            k: last.get(k) for k in ("val_tokens_scored", "val_tokens_total")}  # fmt: skip
        return {
            "status": status,
            "vocab_size": run.checkpoint_meta["vocab_size"],
            "train_tokens": run.train_tokens,
            "epochs": len(p.history),
            "steps": p.step,
            "history": p.history,
            "best_val_loss": p.best_val_loss,
            "best_val_ppl": ppl(p.best_val_loss),
            **val,
            "eval_partial": bool(val["val_tokens_scored"] != val["val_tokens_total"]),
            "train_tokens_per_s": p.timed_tokens / p.timed_seconds if p.timed_seconds else None,
            "throughput_excluded_steps": p.untimed_steps,
            "skipped_batches": p.skipped_batches,
            "world_size": run.world.world_size,
            "wall_time_s": self._wall_seconds(),
        }

    def _write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.run.world.is_main:
            write_json(self.run.run_dir / METRICS_FILE, metrics)


def fit(run: Run, cfg: TrainerConfig, resume_from: Checkpoint | None = None) -> dict[str, Any]:
    return Trainer(run, cfg, resume_from).fit()
