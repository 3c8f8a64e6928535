"""The training loop, as the tutorial's: for each epoch, train on its batches, validate, keep
the best; at the end, load the best checkpoint back and score it on test.

Where the loop stands lives in `Progress` (state.py) and goes into every checkpoint, so a
resumed run continues exactly where it stopped. One optimizer step is step.py's; what a
checkpoint holds is checkpoint.py's; the log lines and TensorBoard are logs.py's.
"""

from __future__ import annotations

import logging
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
from lmx.models.carried import reset_state
from lmx.perplexity import Score, evaluate, ppl
from lmx.runtime.distributed import World
from lmx.training import logs
from lmx.training.averaging import WeightAverage
from lmx.training.budget import Budget, Stopping
from lmx.training.checkpoint import Saver, load_checkpoint
from lmx.training.meters import DeviceMeters
from lmx.training.optim import Schedule, TimeHorizon
from lmx.training.samples import write_samples
from lmx.training.signals import Interrupted, StopSignals
from lmx.training.state import Progress
from lmx.training.step import NonFiniteLoss, StepResult, apply_nonfinite_policy, train_step

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What the loop needs besides the trainer config: built objects and where to write."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    budget: Budget  # when training ends: epochs, max_steps, max_time
    average: WeightAverage  # trainer.ema: what is validated, kept as best and tested
    eval_windows: dict[str, int | None]  # eval.context and eval.stride (None: the tutorial's)
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
        self.parameters = list(self.model.parameters())  # for the gradient clip, every step


def eval_settings(run: Run, cfg: TrainerConfig) -> dict[str, Any]:
    """How the loop scores valid and test (lmx.perplexity.evaluate's arguments)."""
    return dict(
        bptt=run.bptt,
        device=run.device,
        precision=run.precision,
        limit=cfg.limit_eval_batches,
        tokens_per_forward=cfg.eval_tokens_per_forward,
        reduce=lambda values: run.world.sum(values, run.device),
        **run.eval_windows,
    )


def start_epoch(run: Run, p: Progress) -> None:
    """Train mode; at an epoch's first batch a recurrent model's carried state starts from
    zeros (pytorch/examples' init_hidden), and in mid-epoch it is the checkpoint's."""
    run.train_model.train()
    if p.batch == 0:
        reset_state(run.model)


def no_best_model(history: list[dict[str, Any]]) -> NonFiniteLoss:
    """The error of a run whose every validation loss was inf or nan."""
    losses = ", ".join(f"epoch {h['epoch']}: {h['val_loss']}" for h in history)
    return NonFiniteLoss(
        f"every validation loss was non-finite ({losses}), so there is no best model to test. "
        "The weights diverged: lower optim.lr or set (or tighten) trainer.grad_clip."
    )


def count_step(p: Progress, result: StepResult, tokens: int, meters: DeviceMeters, policy,
               best_path: Path) -> None:  # fmt: skip
    """A step into the count: a checked non-finite one goes by trainer.on_nonfinite (skip or
    stop), and neither it nor one the fp16 scaler skipped counts in the loss meters."""
    if result.nonfinite:
        apply_nonfinite_policy(result.nonfinite, p, policy, best_path)
    p.scaler_skipped_steps += result.scaler_skipped
    p.count_step()
    if not (result.nonfinite or result.scaler_skipped):
        meters.add(p, result.loss, result.norm, tokens)


class Trainer:
    def __init__(self, run: Run, cfg: TrainerConfig, resumed: dict[str, Any] | None = None):
        self.run, self.cfg = run, cfg
        self.steps_per_epoch = num_steps(run.splits["train"], run.bptt, cfg.limit_train_batches)
        self.progress = Progress.from_dict(resumed) if resumed else Progress()
        self.saver = Saver(run, self.progress, clock=lambda: time.perf_counter())
        self.warmup_left = cfg.throughput_warmup_steps
        self.stop = StopSignals()
        self.val_score = None  # this process's latest validation; the step of the run's latest:
        self.validated_at = self.progress.history[-1]["step"] if self.progress.history else -1
        self.horizon = TimeHorizon(run.schedule, run.budget)
        self.stopping = Stopping(run.budget, cfg.early_stop.patience, cfg.early_stop.min_delta)
        self.eval_args = eval_settings(run, cfg)
        self.meters = DeviceMeters(run.device)  # read at log lines, saves and validations
        self.saver.before_save = lambda: self.meters.read(self.progress, run.world, self.saver.best)

    def fit(self) -> dict[str, Any]:
        """Train to cfg.epochs, then test the best checkpoint. Returns the run summary."""
        p = self.progress
        with self.stop:
            if self._validation_missed():
                self.validate()
            while p.epoch <= self.cfg.epochs and not self._spent():
                self.train_epoch()
                if self.validated_at != p.step:  # not just done mid-epoch
                    self.validate()
        self.settle_best()
        return self.test()

    def train_epoch(self) -> None:
        """The rest of the current epoch's batches (all of them, unless resuming mid-epoch)."""
        run, cfg, p = self.run, self.cfg, self.progress
        start_epoch(run, p)
        source, n_steps = run.splits["train"], self.steps_per_epoch
        bar = tqdm(total=n_steps, initial=p.batch, desc=f"epoch {p.epoch}", unit="batch",
                   disable=None if cfg.progress else True, leave=False)  # fmt: skip
        self.window_start, self.window_from = time.perf_counter(), p.step  # this process's
        before = (int(p.window["batches"]), int(p.window["tokens"]))  # run before a resume
        with logging_redirect_tqdm():
            for i in batch_starts(source, run.bptt)[p.batch : n_steps]:
                start = time.perf_counter()
                data, targets = get_batch(source, i, run.bptt)
                result = train_step(run.train_model, run.parameters, run.optimizer,
                                    run.scaler, data, targets, run.precision, cfg.grad_clip,
                                    run.world, self.stop.requested is not None,
                                    cfg.accumulate, cfg.on_nonfinite == NonFinite.skip)  # fmt: skip
                tokens = targets.numel() * run.world.world_size  # equal shares
                count_step(p, result, tokens, self.meters, cfg.on_nonfinite, self.saver.best)
                p.step_lr = run.optimizer.param_groups[0]["lr"]  # what this step trained at
                run.average.update(p.step)
                p.count_time(time.perf_counter() - start, tokens, timed=self.warmup_left <= 0)
                self.warmup_left -= 1
                if run.schedule.interval == Interval.step:
                    self.horizon.after_step(p.step, self.saver.wall_seconds(agreed=True),
                                            self.warmup_left < 0)  # fmt: skip
                    run.schedule.scheduler.step()
                bar.update()
                spent = self._spent()
                if p.batch % cfg.log_interval == 0 or p.batch == n_steps or spent:
                    self.meters.read(p, run.world, self.saver.best)
                    seconds = time.perf_counter() - self.window_start
                    steps = p.step - self.window_from  # this process's, skipped ones too
                    bar.set_postfix(logs.log_window(run, p, n_steps, seconds, before, steps,
                                                    p.step_lr))  # fmt: skip
                    self.window_start, self.window_from = time.perf_counter(), p.step
                    before = (0, 0)
                stop = result.stop_requested if run.world.enabled else self.stop.requested
                if stop:
                    bar.close()
                    self.saver.save_last()
                    signum = self.stop.requested or signal.SIGTERM  # another rank got it
                    raise Interrupted.after(signum, p, self.saver.last, run.run_dir)
                every = cfg.checkpoint_every_steps
                if every and p.step % every == 0 and p.batch < n_steps and not spent:
                    self.saver.save_last()  # the epoch's end saves anyway
                every = cfg.val_every_steps
                if every and p.step % every == 0 and p.batch < n_steps and not spent:
                    eval_start = time.perf_counter()
                    self.validate()  # the epoch stays open; best is best at any validation
                    run.train_model.train()
                    self.window_start += time.perf_counter() - eval_start  # not in ms/batch
                    spent = self._spent()  # early stopping counts this validation
                if spent:
                    break
        bar.close()

    def validate(self) -> None:
        """End of an epoch, or of training when a budget ends it part-way through one: score
        valid, step an epoch schedule (after a whole epoch), keep the best, save."""
        run, p = self.run, self.progress
        self.meters.read(p, run.world, self.saver.best)  # the epoch's loss; finite weights
        whole = p.batch >= self.steps_per_epoch
        with run.average.applied():  # the weight average, if the run keeps one
            score = self.val_score = evaluate(run.model, run.splits["valid"], **self.eval_args)
        raw = evaluate(run.model, run.splits["valid"], **self.eval_args) if run.average.on else None
        self.validated_at = p.step
        lr = run.optimizer.param_groups[0]["lr"] if p.step_lr is None else p.step_lr
        run.schedule.after_validation(whole, score.loss)
        logs.log_validation(p, score, whole)  # warns when it is inf or nan
        scalars, details = logs.validation_record(score, raw)
        improved = p.end_epoch(score.loss, {**details, "lr": lr}, whole)
        run.tb.scalars({**scalars, "val/best_ppl": ppl(p.best_val_loss)}, p.step)
        write_samples(run, self.cfg.samples, p.step)  # trainer.samples; none by default
        run.tb.flush()
        self.stopping.after_validation(p, score.loss)  # counted before the save: resumable
        if improved:
            self.saver.save(self.saver.best)
        self.saver.save_last()
        logs.write_metrics(self.run, self._summary("running"))  # nothing lost

    def settle_best(self) -> None:
        """After the epochs: a best model exists, or say why there is none."""
        p = self.progress
        if p.best_epoch is not None:
            return
        if p.history:  # every validation was inf/nan
            raise no_best_model(p.history)
        score = evaluate(self.run.model, self.run.splits["valid"], **self.eval_args)  # epochs=0
        p.best_val_loss, p.best_epoch, self.val_score = score.loss, 0, score
        self.saver.save(self.saver.best)
        self.saver.save(self.saver.last)

    def test(self) -> dict[str, Any]:
        """Score the best checkpoint on test (unless trainer.test=false); write the summary."""
        run, p, score = self.run, self.progress, None
        if self.cfg.test:
            # on the CPU: the file's optimizer state need not sit on a GPU beside the run's
            run.model.load_state_dict(load_checkpoint(self.saver.best).eval_weights())
            score = evaluate(run.model, run.splits["test"], **self.eval_args)
            run.tb.scalars({"test/loss": score.loss, "test/ppl": score.ppl}, p.step)
        logs.log_test(p.best_epoch, score)
        metrics = self._summary("done", test=score)
        logs.write_metrics(run, metrics)
        run.tb.end_session()
        return metrics

    # ------------------------------------------------------------------ helpers
    def _spent(self) -> str | None:
        return self.stopping.spent(self.progress, self.saver.wall_seconds(agreed=True))

    def _validation_missed(self) -> bool:
        """A resumed run whose last try stopped (a signal, a kill) where a validation was due:
        at a trainer.val_every_steps step, or where a budget ended training."""
        p, every = self.progress, self.cfg.val_every_steps
        mid = bool(every) and p.step % every == 0 and 0 < p.batch < self.steps_per_epoch
        return p.step > 0 and self.validated_at != p.step and (mid or bool(self._spent()))

    def _summary(self, status: str, test: Score | None = None) -> dict[str, Any]:
        p, wall = self.progress, self.saver.wall_seconds()
        return logs.summary(self.run, p, status, self.val_score, wall, test, self.stopping)


def fit(run: Run, cfg: TrainerConfig, resumed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, validate, test; `resumed`: the progress of the checkpoint the run resumes from."""
    return Trainer(run, cfg, resumed).fit()
