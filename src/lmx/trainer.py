"""The training loop: train an epoch, evaluate on valid, log, keep the best, step the schedule.

At the end the best checkpoint is loaded back and evaluated on test. Perplexity is
exp(mean token cross-entropy over the split), as in the tutorial.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lmx.batching import batch_starts, get_batch
from lmx.checkpoint import load_checkpoint, save_checkpoint
from lmx.config import Interval, Precision, TrainerConfig
from lmx.device import autocast
from lmx.files import METRICS_FILE, write_json
from lmx.tb_logger import TensorBoard

log = logging.getLogger(__name__)


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
) -> float:
    """Mean token cross-entropy over the split (the first `limit` steps of it)."""
    model.eval()
    total, count = 0.0, 0
    for i in batch_starts(source, bptt)[: num_steps(source, bptt, limit)]:
        data, targets = get_batch(source, i, bptt)
        data, targets = data.to(device), targets.to(device)
        with autocast(device, precision):
            loss = model(data, targets)  # mean over the step's tokens
        total += loss.item() * targets.numel()
        count += targets.numel()
    return total / count


def train_epoch(run: Run, cfg: TrainerConfig, epoch: int, step: int) -> tuple[float, int, float]:
    """One pass over the training split. Returns (mean loss, tokens seen, seconds)."""
    model, source = run.model, run.splits["train"]
    model.train()
    n_steps = num_steps(source, run.bptt, cfg.limit_train_batches)
    epoch_loss, epoch_tokens, start = 0.0, 0, time.perf_counter()
    window = dict(loss=0.0, norm=0.0, tokens=0, batches=0)
    window_start = time.perf_counter()
    bar = tqdm(
        total=n_steps,
        desc=f"epoch {epoch}",
        unit="batch",
        disable=None if cfg.progress else True,
        leave=False,
    )
    with logging_redirect_tqdm():
        for batch, i in enumerate(batch_starts(source, run.bptt)[:n_steps], start=1):
            data, targets = get_batch(source, i, run.bptt)
            data, targets = data.to(run.device), targets.to(run.device)
            with autocast(run.device, run.precision):
                loss = model(data, targets)  # mean cross-entropy over the step's tokens
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            run.optimizer.step()
            if run.interval == Interval.step:
                run.scheduler.step()
            step += 1

            loss_value, tokens = loss.item(), targets.numel()
            epoch_loss += loss_value * tokens
            epoch_tokens += tokens
            window["loss"] += loss_value
            window["norm"] += grad_norm.item()
            window["tokens"] += tokens
            window["batches"] += 1
            bar.update()
            bar.set_postfix(
                loss=f"{loss_value:.2f}", lr=f"{run.optimizer.param_groups[0]['lr']:.3g}"
            )

            if batch % cfg.log_interval == 0 or batch == n_steps:
                seconds = time.perf_counter() - window_start
                n = window["batches"]
                lr = run.optimizer.param_groups[0]["lr"]
                mean_loss = window["loss"] / n
                log.info(
                    "| epoch %3d | %5d/%5d batches | lr %.3g | ms/batch %6.1f "
                    "| loss %5.2f | ppl %8.2f",
                    epoch,
                    batch,
                    n_steps,
                    lr,
                    1000 * seconds / n,
                    mean_loss,
                    ppl(mean_loss),
                )
                run.tb.scalars(
                    {
                        "train/loss": mean_loss,
                        "train/ppl": ppl(mean_loss),
                        "train/lr": lr,
                        "train/grad_norm": window["norm"] / n,
                        "train/tokens_per_s": window["tokens"] / seconds,
                    },
                    step,
                )
                window = dict(loss=0.0, norm=0.0, tokens=0, batches=0)
                window_start = time.perf_counter()
    bar.close()
    return epoch_loss / max(epoch_tokens, 1), epoch_tokens, time.perf_counter() - start


def _checkpoint(run: Run, epoch: int, step: int, best_val_loss: float) -> dict[str, Any]:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_val_loss": best_val_loss,
        **run.checkpoint_meta,
    }


def fit(run: Run, cfg: TrainerConfig) -> dict[str, Any]:
    """Train for cfg.epochs, then test the best checkpoint. Returns the run summary."""
    ckpt_dir = run.run_dir / "checkpoints"
    best_path, last_path = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    eval_args = dict(
        bptt=run.bptt, device=run.device, precision=run.precision, limit=cfg.limit_eval_batches
    )
    metrics: dict[str, Any] = {
        "status": "running",
        "vocab_size": run.checkpoint_meta["vocab_size"],
        "train_tokens": run.train_tokens,
        "epochs": 0,
        "history": [],
    }
    best_val_loss, best_epoch = math.inf, None
    step, train_tokens, train_seconds = 0, 0, 0.0
    wall_start = time.perf_counter()

    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss, tokens, seconds = train_epoch(run, cfg, epoch, step)
        step += num_steps(run.splits["train"], run.bptt, cfg.limit_train_batches)
        train_tokens, train_seconds = train_tokens + tokens, train_seconds + seconds
        val_loss = evaluate(run.model, run.splits["valid"], **eval_args)
        lr = run.optimizer.param_groups[0]["lr"]
        if run.interval == Interval.epoch:
            run.scheduler.step()

        log.info("-" * 89)
        log.info(
            "| end of epoch %3d | time: %6.1fs | valid loss %5.2f | valid ppl %8.2f",
            epoch,
            time.perf_counter() - epoch_start,
            val_loss,
            ppl(val_loss),
        )
        log.info("-" * 89)
        run.tb.scalars({"val/loss": val_loss, "val/ppl": ppl(val_loss)}, step)
        run.tb.flush()

        if val_loss < best_val_loss:
            best_val_loss, best_epoch = val_loss, epoch
            save_checkpoint(best_path, _checkpoint(run, epoch, step, best_val_loss))
        save_checkpoint(last_path, _checkpoint(run, epoch, step, best_val_loss))

        metrics["history"].append(
            {
                "epoch": epoch,
                "step": step,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_ppl": ppl(val_loss),
                "lr": lr,
                "train_seconds": seconds,
            }
        )
        metrics.update(
            epochs=epoch,
            steps=step,
            best_val_loss=best_val_loss,
            best_val_ppl=ppl(best_val_loss),
            train_tokens_per_s=train_tokens / train_seconds,
            wall_time_s=time.perf_counter() - wall_start,
        )
        write_json(
            run.run_dir / METRICS_FILE, metrics
        )  # after every epoch: nothing lost on a crash

    if best_epoch is None:  # epochs=0: the untrained model is the best there is
        best_val_loss = evaluate(run.model, run.splits["valid"], **eval_args)
        save_checkpoint(best_path, _checkpoint(run, 0, 0, best_val_loss))
        save_checkpoint(last_path, _checkpoint(run, 0, 0, best_val_loss))
        metrics.update(
            best_val_loss=best_val_loss,
            best_val_ppl=ppl(best_val_loss),
            steps=0,
            train_tokens_per_s=None,
        )

    best = load_checkpoint(best_path, map_location=run.device)
    run.model.load_state_dict(best["model"])
    test_loss = evaluate(run.model, run.splits["test"], **eval_args)
    log.info("=" * 89)
    log.info(
        "| End of training | best epoch %d | test loss %5.2f | test ppl %8.2f",
        best["epoch"],
        test_loss,
        ppl(test_loss),
    )
    log.info("=" * 89)

    metrics.update(
        status="done",
        best_epoch=best["epoch"],
        test_loss=test_loss,
        test_ppl=ppl(test_loss),
        wall_time_s=time.perf_counter() - wall_start,
    )
    write_json(run.run_dir / METRICS_FILE, metrics)
    run.tb.scalars({"test/loss": test_loss, "test/ppl": ppl(test_loss)}, step)
    run.tb.hparams(
        run.checkpoint_meta["config"],
        {"hparam/best_val_ppl": metrics["best_val_ppl"], "hparam/test_ppl": metrics["test_ppl"]},
    )
    return metrics
