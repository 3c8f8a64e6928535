"""The training loop: train an epoch, evaluate on valid, log, keep the best, step the schedule.

At the end the best checkpoint is loaded back and evaluated on test. Perplexity is
exp(mean token cross-entropy over the split), as in the tutorial.

Everything the loop carries from step to step lives in `Progress`, which every checkpoint
stores with the model, optimizer, scheduler and RNG states. A run resumed from any checkpoint
(end of epoch, every `checkpoint_every_steps`, or on SIGINT/SIGTERM) therefore continues
exactly where it stopped: same batches, same dropout masks, same numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lmx.batching import batch_starts, get_batch
from lmx.checkpoint import load_checkpoint, save_checkpoint
from lmx.config import Interval, NonFinite, Precision, TrainerConfig
from lmx.device import autocast
from lmx.distributed import World
from lmx.errors import LmxError
from lmx.files import METRICS_FILE, write_json
from lmx.resume import rng_state
from lmx.stop_signals import Interrupted, StopSignals
from lmx.tb_logger import TensorBoard

log = logging.getLogger(__name__)


class NonFiniteLoss(LmxError):
    """The loss or gradient norm became inf/nan and trainer.on_nonfinite=stop."""


@dataclass
class Run:
    """What the loop needs besides the trainer config: built objects and where to write."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    interval: Interval
    splits: dict[str, torch.Tensor]  # batchified: split -> [bsz, len]
    train_tokens: int  # length of the training stream before batchify
    bptt: int
    device: torch.device
    precision: Precision
    run_dir: Path
    tb: TensorBoard
    checkpoint_meta: dict[str, Any]  # config and vocab_size, stored in every checkpoint
    world: World = field(default_factory=World)  # torchrun ranks; a world of one by default
    train_model: torch.nn.Module | None = None  # model wrapped for training (DDP); else model

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model


def _new_window() -> dict[str, float]:
    return dict(loss=0.0, norm=0.0, tokens=0, batches=0)


@dataclass
class Progress:
    """Where the loop stands; saved in every checkpoint (plain values only)."""

    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # batches of that epoch already done
    step: int = 0  # optimizer steps so far (batches, skipped ones included): TB's x-axis
    best_val_loss: float = math.inf
    best_epoch: int | None = None
    epoch_loss: float = 0.0  # sum over this epoch's batches of loss * tokens
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    window: dict[str, float] = field(default_factory=_new_window)  # since the last log line
    # Steady-state throughput: steps after the first `throughput_warmup_steps` of each
    # process (allocator and kernel warm-up, compilation) are timed.
    timed_tokens: int = 0
    timed_seconds: float = 0.0
    untimed_steps: int = 0
    wall_seconds: float = 0.0  # before this process started (earlier tries of the run)
    skipped_batches: int = 0  # non-finite batches skipped (trainer.on_nonfinite=skip)
    history: list[dict[str, Any]] = field(default_factory=list)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_, also for sparse gradients (a sparse embedding), which
    torch's own version cannot take a norm of. Returns the total norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # repeated token rows summed, as the dense grad has them
    norms = [torch.linalg.vector_norm(p.grad._values() if p.grad.is_sparse else p.grad)
             for p in params]  # fmt: skip
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # torch's formula
    for p in params:
        p.grad.mul_(scale)
    return total


def ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def num_steps(source: torch.Tensor, bptt: int, limit: int | None) -> int:
    n = len(batch_starts(source, bptt))
    return n if limit is None else min(n, limit)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    source: torch.Tensor,
    bptt: int,
    device: torch.device,
    precision: Precision = Precision.fp32,
    limit: int | None = None,
    tokens_per_forward: int = 1,
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> float:
    """Mean token cross-entropy over the split (the first `limit` steps of it).

    Each bptt window is scored on its own, as in the tutorial; several windows are stacked
    into one forward of up to `tokens_per_forward` tokens. The numbers stay the same (up to
    float rounding), the matmuls get larger and faster. Under torchrun each rank scores its
    rows and `reduce` sums (loss total, token count) over the ranks.
    """
    model.eval()
    source = source.to(device)
    starts = list(batch_starts(source, bptt)[: num_steps(source, bptt, limit)])
    per_forward = max(1, tokens_per_forward // (source.size(0) * bptt))
    # Full-length windows are stacked; a shorter last window goes alone.
    full = [i for i in starts if i + bptt < source.size(1)]
    groups = [full[k : k + per_forward] for k in range(0, len(full), per_forward)]
    groups += [[i] for i in starts[len(full) :]]
    total, count = 0.0, 0
    for group in groups:
        pairs = [get_batch(source, i, bptt) for i in group]
        data = torch.cat([d for d, _ in pairs])  # [len(group) * bsz, T]
        targets = torch.cat([t for _, t in pairs])
        with autocast(device, precision):
            loss = model(data, targets)  # mean over the forward's tokens
        total += loss.item() * targets.numel()
        count += targets.numel()
    if reduce is not None:
        total, count = reduce([total, count])
    return total / count


class Trainer:
    """One run's loop; `fit` trains, checkpoints and tests. See the module docstring."""

    def __init__(self, run: Run, cfg: TrainerConfig, resume_from: dict[str, Any] | None = None):
        self.run, self.cfg = run, cfg
        self.ckpt_dir = run.run_dir / "checkpoints"
        self.best_path, self.last_path = self.ckpt_dir / "best.pt", self.ckpt_dir / "last.pt"
        self.steps_per_epoch = num_steps(run.splits["train"], run.bptt, cfg.limit_train_batches)
        self.progress = Progress()
        if resume_from is not None:
            self.progress = Progress(**resume_from["progress"])
        self.wall_start = time.perf_counter()
        self.warmup_left = cfg.throughput_warmup_steps
        self.stop = StopSignals()
        self.stop_agreed = False

    # ------------------------------------------------------------------ checkpoints, metrics
    def _state(self, rng: dict[str, Any]) -> dict[str, Any]:
        p = self.progress
        return {
            "model": self.run.model.state_dict(),
            "optimizer": self.run.optimizer.state_dict(),
            "scheduler": self.run.scheduler.state_dict(),
            "progress": dataclasses.asdict(p),
            "rng": rng,  # rank 0's; every rank's is in rng_per_rank
            # Summary keys for readers that do not care about resuming:
            "epoch": p.epoch - 1,  # epochs completed
            "step": p.step,
            "best_val_loss": p.best_val_loss,
            **self.run.checkpoint_meta,
        }

    def _wall_seconds(self) -> float:
        return self.progress.wall_seconds + time.perf_counter() - self.wall_start

    def _save(self, path: Path) -> None:
        """Called on every rank: rank 0 writes, with each rank's RNG state."""
        world = self.run.world
        rngs = world.gather(rng_state())
        if world.is_main:
            state = self._state(rngs[0])
            if world.enabled:
                state["rng_per_rank"] = rngs
            save_checkpoint(path, state)
        world.barrier()  # nobody reads the file before it is complete

    def _save_last(self) -> None:
        self.progress.wall_seconds = self._wall_seconds()
        self.wall_start = time.perf_counter()
        self._save(self.last_path)

    def _write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.run.world.is_main:
            write_json(self.run.run_dir / METRICS_FILE, metrics)

    def _metrics(self, status: str) -> dict[str, Any]:
        p = self.progress
        return {
            "status": status,
            "vocab_size": self.run.checkpoint_meta["vocab_size"],
            "train_tokens": self.run.train_tokens,
            "epochs": len(p.history),
            "steps": p.step,
            "history": p.history,
            "best_val_loss": p.best_val_loss,
            "best_val_ppl": ppl(p.best_val_loss),
            "train_tokens_per_s": p.timed_tokens / p.timed_seconds if p.timed_seconds else None,
            "throughput_excluded_steps": p.untimed_steps,
            "skipped_batches": p.skipped_batches,
            "world_size": self.run.world.world_size,
            "wall_time_s": self._wall_seconds(),
        }

    # ------------------------------------------------------------------ one step
    def _nonfinite(self, what: str, value: float) -> bool:
        """True: skip this batch. Raises when trainer.on_nonfinite=stop."""
        p = self.progress
        where = f"step {p.step + 1} (epoch {p.epoch}, batch {p.batch + 1})"
        if self.cfg.on_nonfinite == NonFinite.skip:
            p.skipped_batches += 1
            log.warning("non-finite %s (%s) at %s: batch skipped", what, value, where)
            return True
        best = f"{self.best_path} (epoch {p.best_epoch})" if p.best_epoch else "no best.pt yet"
        raise NonFiniteLoss(
            f"non-finite {what} ({value}) at {where}; training stopped. Best checkpoint: "
            f"{best}. Lower optim.lr or tighten trainer.grad_clip, or set "
            "trainer.on_nonfinite=skip to skip such batches."
        )

    def _train_step(self, data: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """Forward, backward, clip, update. Returns (loss, grad norm); nan when skipped."""
        run = self.run
        with autocast(run.device, run.precision):
            loss = run.train_model(data, targets)  # mean cross-entropy over the step's tokens
        loss_value = loss.item()
        if run.world.enabled:  # every rank sees the global loss and the same stop decision
            loss_sum, stops = run.world.sum(
                [loss_value, self.stop.requested is not None], run.device
            )
            loss_value = loss_sum / run.world.world_size
            self.stop_agreed = stops > 0
        run.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss_value) and self._nonfinite("loss", loss_value):
            return math.nan, math.nan
        loss.backward()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        norm = clip_grad_norm(run.model.parameters(), max_norm).item()
        if not math.isfinite(norm) and self._nonfinite("gradient norm", norm):
            run.optimizer.zero_grad(set_to_none=True)
            return math.nan, math.nan
        run.optimizer.step()
        return loss_value, norm

    # ------------------------------------------------------------------ one epoch
    def _log_window(self, n_steps: int) -> None:
        p, w = self.progress, self.progress.window
        seconds = time.perf_counter() - self.window_start
        n = max(w["batches"], 1)
        lr = self.run.optimizer.param_groups[0]["lr"]
        mean_loss = w["loss"] / n
        log.info(
            "| epoch %3d | %5d/%5d batches | lr %.3g | ms/batch %6.1f | loss %5.2f | ppl %8.2f",
            p.epoch,
            p.batch,
            n_steps,
            lr,
            1000 * seconds / n,
            mean_loss,
            ppl(mean_loss),
        )
        self.run.tb.scalars(
            {
                "train/loss": mean_loss,
                "train/ppl": ppl(mean_loss),
                "train/lr": lr,
                "train/grad_norm": w["norm"] / n,
                "train/tokens_per_s": w["tokens"] / seconds,
            },
            p.step,
        )
        p.window = _new_window()
        self.window_start = time.perf_counter()

    def train_epoch(self) -> None:
        """The rest of the current epoch's batches (all of them, unless resuming mid-epoch)."""
        run, cfg, p = self.run, self.cfg, self.progress
        run.train_model.train()
        source, n_steps = run.splits["train"], self.steps_per_epoch
        bar = tqdm(
            total=n_steps,
            initial=p.batch,
            desc=f"epoch {p.epoch}",
            unit="batch",
            disable=None if cfg.progress else True,
            leave=False,
        )
        self.window_start = time.perf_counter()
        with logging_redirect_tqdm():
            for i in batch_starts(source, run.bptt)[p.batch : n_steps]:
                start = time.perf_counter()
                data, targets = get_batch(source, i, run.bptt)
                data, targets = data.to(run.device), targets.to(run.device)
                loss, norm = self._train_step(data, targets)
                if run.interval == Interval.step:
                    run.scheduler.step()
                p.step += 1
                p.batch += 1
                if math.isfinite(loss):
                    tokens = targets.numel() * run.world.world_size  # equal shares
                    p.epoch_loss += loss * tokens
                    p.epoch_tokens += tokens
                    p.window["loss"] += loss
                    p.window["norm"] += norm
                    p.window["tokens"] += tokens
                    p.window["batches"] += 1
                seconds = time.perf_counter() - start
                p.epoch_seconds += seconds
                if self.warmup_left > 0:
                    self.warmup_left -= 1
                    p.untimed_steps += 1
                else:
                    p.timed_tokens += targets.numel() * run.world.world_size
                    p.timed_seconds += seconds
                bar.update()
                bar.set_postfix(loss=f"{loss:.2f}", lr=f"{run.optimizer.param_groups[0]['lr']:.3g}")
                if p.batch % cfg.log_interval == 0 or p.batch == n_steps:
                    self._log_window(n_steps)
                if self._stop_now():
                    bar.close()
                    self._interrupt()
                every = cfg.checkpoint_every_steps
                if every and p.step % every == 0 and p.batch < n_steps:
                    self._save_last()  # the epoch's end saves anyway
        bar.close()

    def _stop_now(self) -> bool:
        """A signal arrived; under torchrun, on any rank (agreed at the last step)."""
        if self.run.world.enabled:
            return self.stop_agreed
        return self.stop.requested is not None

    def _interrupt(self) -> None:
        self._save_last()
        signum = self.stop.requested or signal.SIGTERM  # another rank got it
        name = "SIGINT" if signum == 2 else "SIGTERM" if signum == 15 else f"signal {signum}"
        run_dir = self.run.run_dir
        raise Interrupted(
            f"{name}: stopped after step {self.progress.step} (epoch {self.progress.epoch}, "
            f"batch {self.progress.batch}) and saved {self.last_path}. Continue with "
            f"trainer.resume=auto hydra.run.dir={run_dir}",
            signum,
        )

    # ------------------------------------------------------------------ the run
    def _end_epoch(self, eval_args: dict[str, Any]) -> None:
        run, p = self.run, self.progress
        val_loss = evaluate(run.model, run.splits["valid"], **eval_args)
        lr = run.optimizer.param_groups[0]["lr"]
        if run.interval == Interval.epoch:
            run.scheduler.step()
        log.info("-" * 89)
        log.info(
            "| end of epoch %3d | time: %6.1fs | valid loss %5.2f | valid ppl %8.2f",
            p.epoch,
            p.epoch_seconds,
            val_loss,
            ppl(val_loss),
        )
        log.info("-" * 89)
        run.tb.scalars({"val/loss": val_loss, "val/ppl": ppl(val_loss)}, p.step)
        run.tb.flush()
        p.history.append(
            {
                "epoch": p.epoch,
                "step": p.step,
                "train_loss": p.epoch_loss / max(p.epoch_tokens, 1),
                "val_loss": val_loss,
                "val_ppl": ppl(val_loss),
                "lr": lr,
                "train_seconds": p.epoch_seconds,
            }
        )
        improved = val_loss < p.best_val_loss
        if improved:
            p.best_val_loss, p.best_epoch = val_loss, p.epoch
        # The next epoch's state, so that a resume from here starts it.
        p.epoch, p.batch = p.epoch + 1, 0
        p.epoch_loss, p.epoch_tokens, p.epoch_seconds = 0.0, 0, 0.0
        if improved:
            self._save(self.best_path)
        self._save_last()
        self._write_metrics(self._metrics("running"))  # nothing lost

    def fit(self) -> dict[str, Any]:
        """Train to cfg.epochs, then test the best checkpoint. Returns the run summary."""
        run, cfg, p = self.run, self.cfg, self.progress
        eval_args = dict(
            bptt=run.bptt,
            device=run.device,
            precision=run.precision,
            limit=cfg.limit_eval_batches,
            tokens_per_forward=cfg.eval_tokens_per_forward,
            reduce=lambda values: run.world.sum(values, run.device),
        )
        with self.stop:
            while p.epoch <= cfg.epochs:
                self.train_epoch()
                self._end_epoch(eval_args)

        if p.best_epoch is None:  # epochs=0: the untrained model is the best there is
            p.best_val_loss = evaluate(run.model, run.splits["valid"], **eval_args)
            p.best_epoch = 0
            self._save(self.best_path)
            self._save(self.last_path)

        metrics = self._metrics("done")
        metrics.update(best_epoch=p.best_epoch, test_loss=None, test_ppl=None)
        hparams = {"hparam/best_val_ppl": metrics["best_val_ppl"]}
        if cfg.test:
            best = load_checkpoint(self.best_path, map_location=run.device)
            run.model.load_state_dict(best["model"])
            test_loss = evaluate(run.model, run.splits["test"], **eval_args)
            log.info("=" * 89)
            log.info(
                "| End of training | best epoch %d | test loss %5.2f | test ppl %8.2f",
                p.best_epoch,
                test_loss,
                ppl(test_loss),
            )
            log.info("=" * 89)
            metrics.update(test_loss=test_loss, test_ppl=ppl(test_loss))
            run.tb.scalars({"test/loss": test_loss, "test/ppl": ppl(test_loss)}, p.step)
            hparams["hparam/test_ppl"] = metrics["test_ppl"]
        else:
            log.info("| End of training | best epoch %d | test split not scored (trainer.test"
                     "=false)", p.best_epoch)  # fmt: skip
        self._write_metrics(metrics)
        run.tb.hparams(run.checkpoint_meta["config"], hparams)
        return metrics


def fit(run: Run, cfg: TrainerConfig, resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
    return Trainer(run, cfg, resume_from).fit()
