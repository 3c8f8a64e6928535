"""The GPU path by construction, checked on a CPU: a training step reads nothing from the
device (the loop reads its meters once per log line), and torch.compile traces each model's
forward, loss included, without a graph break."""

from __future__ import annotations

import traceback

import pytest
import torch

from conftest import compose_cfg, tiny_overrides
from lmx.train import train
from lmx.training import loop

# The Python-level ways a tensor's value reaches the host. Not seen here: reads inside torch's
# own C++ kernels (a sparse gradient's coalesce, nonzero in the adaptive head; the README
# names them) and blocking copies to a GPU (meters.py copies from pinned memory).
READS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"]


class ReadCounter:
    """Counts the device-to-host reads made while `on`, with where each came from."""

    def __init__(self, monkeypatch):
        self.on, self.sites = False, []
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))
        sync = torch.cuda.synchronize
        monkeypatch.setattr(torch.cuda, "synchronize", self._counted("synchronize", sync))

    def _counted(self, name, original):
        def read(*args, **kwargs):
            if self.on:
                site = traceback.extract_stack(limit=2)[0]  # the caller
                self.sites.append(f"{name} at {site.filename}:{site.lineno}")
            return original(*args, **kwargs)

        return read

    def during(self, owner, attribute: str, counting: bool):
        """Count (or not) while owner.attribute runs."""
        inner = getattr(owner, attribute)

        def wrapped(*args, **kwargs):
            was, self.on = self.on, counting
            try:
                return inner(*args, **kwargs)
            finally:
                self.on = was

        return wrapped


@pytest.mark.parametrize("log_interval", [4, 100])
def test_training_reads_the_device_once_per_log_line(
    log_interval, corpus_dir, cache_dir, tmp_path, monkeypatch
):
    counter = ReadCounter(monkeypatch)
    # Counted: the epoch's steps (forward, fused loss, backward, clip, update) and the loop
    # around them. Not counted: the evaluations and checkpoint writes, which read by design.
    monkeypatch.setattr(loop.Trainer, "train_epoch",
                        counter.during(loop.Trainer, "train_epoch", True))  # fmt: skip
    monkeypatch.setattr(loop, "evaluate", counter.during(loop, "evaluate", False))
    monkeypatch.setattr(loop.Saver, "save", counter.during(loop.Saver, "save", False))
    extra = ("trainer.epochs=1", "trainer.limit_train_batches=12",
             f"trainer.log_interval={log_interval}")  # fmt: skip
    metrics = train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    assert metrics["steps"] == 12
    lines = 12 // log_interval if log_interval <= 12 else 1  # and one at the epoch's end
    assert 1 <= len(counter.sites) <= lines, counter.sites


def test_the_read_counter_sees_a_checked_step(corpus_dir, cache_dir, tmp_path, monkeypatch):
    # trainer.on_nonfinite=skip must know before each update whether to apply it: a read per
    # step (documented), which the counter above must see.
    counter = ReadCounter(monkeypatch)
    monkeypatch.setattr(loop.Trainer, "train_epoch",
                        counter.during(loop.Trainer, "train_epoch", True))  # fmt: skip
    extra = ("trainer.epochs=1", "trainer.limit_train_batches=6", "trainer.on_nonfinite=skip",
             "trainer.test=false")  # fmt: skip
    train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    assert sum("step.py" in site for site in counter.sites) >= 6


# Each family, and the adaptive head, as device.compile=true would compile it; and the graph
# breaks torch itself makes there (none is in lmx's code): dynamo will not trace nn.LSTM, and
# nn.AdaptiveLogSoftmaxWithLoss picks each cluster's rows with nonzero, a data-dependent shape.
MODELS = {
    "transformer": (["model=transformer", "model.d_model=16", "model.nhead=2",
                     "model.d_hid=32"], None),
    "gpt": (["model=gpt", "model.d_model=16", "model.nhead=2", "model.d_hid=32"], None),
    "lstm": (["model=lstm", "model.emsize=16", "model.nhid=16"],
             ("RNN, GRU, or LSTM", "lmx/models/rnn.py", "self.rnn(")),
    "transformer, adaptive head": (["model=transformer", "model.d_model=16", "model.nhead=2",
                                    "model.d_hid=32", "model.head=adaptive",
                                    "model.cutoffs=[10,30]", "model.tie_weights=false"],
                                   ("aten.nonzero", "torch/nn/modules/adaptive.py", "")),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_compile_traces_each_model_whole(name):
    from hydra.utils import instantiate

    overrides, torch_break = MODELS[name]
    torch.manual_seed(0)
    model = instantiate(compose_cfg(["model.nlayers=1", *overrides]).model, ntoken=50)
    x, y = torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 7))
    for grad in (True, False):  # training (the fused loss's gradient path) and evaluation
        model.train(grad)
        with torch.set_grad_enabled(grad):
            explained = torch._dynamo.explain(model)(x, y)
        for found in explained.break_reasons:
            frame = found.user_stack[-1]
            assert torch_break is not None, (found.reason, frame)
            reason, file, line = torch_break
            assert reason in found.reason and frame.filename.endswith(file), (found.reason, frame)
            assert line in frame.line
        assert explained.graph_break_count == 0 or torch_break is not None
