"""The bench's measurements, one per process (so that peak memory is its own): the tutorial's
loop, an lmx setting, and data preparation. Each returns a dict of figures."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from lmx.bench.settings import LEVERS, SETTINGS
from lmx.config.compose import compose


def _peak_memory() -> dict[str, float]:
    import torch

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def flops_per_token(d: int, d_hid: int, nlayers: int, ntoken: int, bptt: int) -> float:
    """6 x matmul weights (forward + backward) plus the attention products (12 T d a layer)."""
    weights = nlayers * (4 * d * d + 2 * d * d_hid) + d * ntoken
    return 6 * weights + 12 * nlayers * bptt * d


def work_tutorial(
    data_dir: str, steps: int, warmup: int, seed: int, avg_steps: int, avg_batches: int
) -> dict:
    import torch

    from lmx.bench import tutorial_reference as ref
    from lmx.data.cache import load_corpus

    cfg = compose([f"data.local_dir={data_dir}"])
    corpus = load_corpus(cfg.data)  # the same ids as lmx trains on
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    ntokens = corpus.vocab_size
    model = ref.TransformerModel(ntokens, 200, 2, 200, 2, 0.2).to(device)
    train = ref.batchify(corpus.splits["train"].long(), 20).to(device)  # the tutorial's int64
    valid = ref.batchify(corpus.splits["valid"].long(), 10).to(device)
    first = steps - max(avg_steps, 1) + 1  # the steps before the first averaged model
    tokens, seconds = ref.train_steps(model, train, 35, ntokens, first, warmup=warmup)
    iterates = []
    for k in range(avg_steps):  # the models after steps first .. steps
        if k:
            ref.train_steps(model, train, 35, ntokens, 1, warmup=1, first=first + k - 1)
        iterates.append(ref.evaluate(model, valid, 35, ntokens, limit=avg_batches))
    start = time.perf_counter()
    val_loss = ref.evaluate(model, valid, 35, ntokens)
    eval_seconds = time.perf_counter() - start
    return {
        "train_tokens_per_s": tokens / seconds,
        "eval_tokens_per_s": (valid.numel() - valid.size(1)) / eval_seconds,
        "val_loss": val_loss,
        "iterate_val_losses": iterates,
        "flops_per_token": flops_per_token(200, 200, 2, ntokens, 35),
        **_peak_memory(),
    }


def work_lmx(
    name: str, data_dir: str, steps: int, warmup: int, seed: int, avg_steps: int, avg_batches: int
) -> dict:
    from lmx.bench.iterates import iterate_losses, train_valid_rows
    from lmx.models.pretrained import load_trained
    from lmx.runtime.device import resolve_device
    from lmx.train import train

    first = steps - max(avg_steps, 1) + 1  # lmx's trainer runs these, then lmx.bench.iterates
    cfg = compose(
        [
            *{**SETTINGS, **LEVERS}[name],
            f"data.local_dir={data_dir}",
            "trainer.epochs=1",
            f"trainer.limit_train_batches={first}",
            "trainer.limit_eval_batches=1",  # the trainer's own validation is not used
            f"trainer.throughput_warmup_steps={warmup}",
            f"trainer.seed={seed}",
            "trainer.test=false",
            "trainer.checkpoint_every_steps=null",
            "trainer.tensorboard=false",
            "trainer.progress=false",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="lmx-bench-") as tmp:
        metrics = train(cfg, Path(tmp) / "run")
        model = load_trained(Path(tmp) / "run" / "checkpoints" / "best.pt", []).model
    device = resolve_device(cfg.device)
    model.to(device)
    train_ids, valid = train_valid_rows(cfg, device)
    iterates = []
    if avg_steps:
        iterates = iterate_losses(model, cfg, train_ids, valid, device, first, avg_steps,
                                  avg_batches)  # fmt: skip
    val_loss, eval_tokens_per_s = lmx_eval(cfg, model, valid, device)
    m = cfg.model
    return {
        "train_tokens_per_s": metrics["train_tokens_per_s"],
        "eval_tokens_per_s": eval_tokens_per_s,
        "val_loss": val_loss,
        "iterate_val_losses": iterates,
        "flops_per_token": flops_per_token(
            m.d_model, m.d_hid, m.nlayers, metrics["vocab_size"], cfg.data.bptt
        ),
        **_peak_memory(),
    }


def lmx_eval(cfg, model, valid, device) -> tuple[float, float]:
    """lmx's evaluate over the whole validation split: (loss, tokens/s after a warm-up)."""
    from lmx.perplexity import evaluate

    args = dict(
        precision=cfg.device.precision, tokens_per_forward=cfg.trainer.eval_tokens_per_forward
    )
    evaluate(model, valid, cfg.data.bptt, device, **args, limit=2)  # warm-up
    start = time.perf_counter()
    score = evaluate(model, valid, cfg.data.bptt, device, **args)
    return score.loss, score.tokens / (time.perf_counter() - start)


def work_data(data_dir: str) -> dict:
    from lmx.data.cache import load_corpus

    with tempfile.TemporaryDirectory(prefix="lmx-bench-cache-") as cache:
        cfg = compose([f"data.local_dir={data_dir}", f"data.cache_dir={cache}"])
        start = time.perf_counter()
        load_corpus(cfg.data)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        load_corpus(cfg.data)
        cached = time.perf_counter() - start
    return {"cold_s": cold, "cached_s": cached}
