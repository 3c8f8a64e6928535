"""Typed config schemas: every default lives here (the model families' in model_schemas.py,
re-exported here), the YAML files in conf/ hold only deltas.

The defaults reproduce PyTorch's nn.Transformer WikiText-2 tutorial. Layout of the composed
config (one sub-config per component):
    model      TransformerConfig | LSTMConfig | GPTConfig: one family, by `model=NAME`
               -> its `_target_` (lmx.models.transformer.TransformerLM, ...; instantiate)
    data       DataConfig          -> lmx.data.streams
      .tokenizer TokenizerConfig   -> lmx.data.tokenizer
    optim      SGDConfig | AdamWConfig | any torch.optim class   (instantiate, _partial_)
    scheduler  StepLRConfig | WarmupCosineConfig | WarmupLinearConfig | WSDConfig |
               PlateauConfig | ConstantLRConfig                      (instantiate, _partial_)
    device     DeviceConfig        -> lmx.runtime.device
    trainer    TrainerConfig       -> lmx.training.loop
    sweep      SweepConfig         -> lmx.runs.sweep (multirun resume)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from lmx.config.model_schemas import (  # noqa: F401  (the model families, re-exported)
    MODEL_FAMILIES,
    GPTConfig,
    Head,
    LSTMConfig,
    Positions,
    RNNCell,
    TransformerConfig,
)


# ---------------------------------------------------------------------------- enums
class TokenizerKind(Enum):
    word = "word"  # WordLevel: one id per whitespace-separated word
    bpe = "bpe"  # byte-pair-encoding subwords


class Normalization(Enum):
    basic_english = "basic_english"  # torchtext's rules: lowercase, split punctuation
    none = "none"  # keep text as it is


class DeviceType(Enum):
    auto = "auto"  # cuda when available, else cpu
    cpu = "cpu"
    cuda = "cuda"


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class NonFinite(Enum):
    stop = "stop"  # stop the run with a message naming the step
    skip = "skip"  # skip the batch (no update) and count it in metrics.json


class Interval(Enum):
    epoch = "epoch"  # scheduler.step() once after each epoch (the tutorial's StepLR)
    step = "step"  # scheduler.step() after every optimizer step (warm-up, cosine)
    validation = "validation"  # scheduler.step(val_loss) after every validation (plateau)


# ---------------------------------------------------------------------------- data
@dataclass
class TokenizerConfig:
    kind: TokenizerKind = TokenizerKind.word
    normalization: Normalization = Normalization.basic_english
    eos: bool = False  # append <eos> to every line (pytorch/examples); else empty lines vanish
    # None: every type seen in train (word level). BPE needs a number. Never a silent cap.
    vocab_size: int | None = None
    min_frequency: int = 0  # drop rarer training types (they become <unk>)


@dataclass
class DataConfig:
    name: str = "wikitext2"
    hub_path: str | None = "Salesforce/wikitext"  # None (data=text): local files only
    hub_config: str | None = "wikitext-2-v1"  # or wikitext-2-raw-v1, wikitext-103-v1
    local_dir: str | None = None  # folder with train/valid/test .txt (or wiki.*.tokens)
    cache_dir: str | None = None  # None: $LMX_CACHE_DIR or ~/.cache/lmx
    batch_size: int = 20  # columns of the training stream
    eval_batch_size: int = 10  # columns of the valid/test streams
    bptt: int = 35  # sequence length of one step
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


# ---------------------------------------------------------------------------- optim
@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True  # parameters are passed at run time
    lr: float = 5.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    decay_all: bool = False  # lmx's own key: weight decay on every tensor (see AdamWConfig)


@dataclass
class AdamWConfig:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    fused: bool | None = None  # one fused kernel for the update (CPU and CUDA); None: torch picks
    # lmx's own key. false: decay only tensors of 2+ dims (matmul weights, embeddings), not
    # biases and norm weights. true: every tensor (lmx before weight-decay groups).
    decay_all: bool = False


# ---------------------------------------------------------------------------- scheduler
# `interval` is lmx's own key (when to call step()); every other key goes to the constructor.
@dataclass
class StepLRConfig:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = 1
    gamma: float = 0.95
    interval: Interval = Interval.epoch


@dataclass
class WarmupDecayConfig:
    """What the warm-up-then-decay schedules share (lmx.training.schedules)."""

    _target_: str = "lmx.training.schedules.WarmupCosineLR"
    _partial_: bool = True
    warmup_steps: int = 200
    total_steps: int | None = None  # None: the run's number of optimizer steps
    min_lr_ratio: float = 0.0
    interval: Interval = Interval.step


@dataclass
class WarmupCosineConfig(WarmupDecayConfig):
    _target_: str = "lmx.training.schedules.WarmupCosineLR"


@dataclass
class WarmupLinearConfig(WarmupDecayConfig):
    _target_: str = "lmx.training.schedules.WarmupLinearLR"


@dataclass
class WSDConfig(WarmupDecayConfig):
    _target_: str = "lmx.training.schedules.WarmupStableDecayLR"
    decay_ratio: float = 0.2  # the last fifth of the steps decays
    decay_shape: str = "linear"  # linear, cosine or sqrt


@dataclass
class PlateauConfig:
    """pytorch/examples' word_language_model: the lr falls by `factor` after a validation whose
    loss is not below the best so far (patience 0, threshold 0)."""

    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    _partial_: bool = True
    mode: str = "min"
    factor: float = 0.25  # lr / 4
    patience: int = 0  # validations without improvement before it falls
    threshold: float = 0.0  # relative improvement that counts as one
    min_lr: float = 0.0
    interval: Interval = Interval.validation


@dataclass
class ConstantLRConfig:
    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    _partial_: bool = True
    factor: float = 1.0
    total_iters: int = 0
    interval: Interval = Interval.epoch


# ---------------------------------------------------------------------------- device, trainer
@dataclass
class DeviceConfig:
    type: DeviceType = DeviceType.auto
    precision: Precision = Precision.fp32  # autocast dtype for forward passes
    compile: bool = False  # torch.compile the model (the first steps pay for compiling)
    threads: int | None = None  # CPU threads for torch; None: torch's default (all cores)
    tf32: bool = True  # on a CUDA GPU, fp32 matmuls in TensorFloat-32 (no effect on a CPU)
    # freed host memory stays in the process for the next step (glibc): lmx/runtime/heap.py
    keep_heap: bool = True


@dataclass
class EarlyStopConfig:
    patience: int | None = None  # stop after this many validations without improvement; None: off
    min_delta: float = 0.0  # an improvement is a validation loss lower by more than this


@dataclass
class EMAConfig:
    decay: float | None = None  # average <- decay * average + (1 - decay) * weights; None: off
    start_step: int = 0  # up to this step the average is the weights themselves


@dataclass
class TrainerConfig:
    epochs: int = 3
    # Budgets: training ends at whichever of epochs, max_steps and max_time comes first, then
    # validates and tests as at a normal end. A step schedule's horizon follows the budget.
    max_steps: int | None = None  # optimizer steps
    max_time: str | None = None  # wall time of the run, all tries together: 30m, 2h, 1h30m
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    # Gradient accumulation: each batch's rows in this many micro-batches, one update. The
    # batch (data.batch_size) and its loss stay the same; the peak memory falls.
    accumulate: int = 1
    # Also validate every N optimizer steps inside epochs (long epochs such as WikiText-103's);
    # "best" is then the best at any validation. null: at the end of each epoch only.
    val_every_steps: int | None = None
    # A moving average of the weights: validated, kept as best and tested in their place.
    ema: EMAConfig = field(default_factory=EMAConfig)
    grad_clip: float | None = 0.5  # max gradient norm; None disables clipping
    log_interval: int = 200  # optimizer steps between train log lines / scalars
    seed: int = 0
    limit_train_batches: int | None = None  # None: the whole split
    limit_eval_batches: int | None = None
    # Evaluation stacks bptt windows into forwards of up to this many tokens: same numbers,
    # fewer and larger matmuls. 1: one window per forward, as in the tutorial.
    eval_tokens_per_forward: int = 4096
    progress: bool = True  # progress bar (shown on a terminal only)
    # train_tokens_per_s leaves out this many first steps of each process (warm-up, compile)
    throughput_warmup_steps: int = 5
    tensorboard: bool = True
    # After each validation, this many sampled continuations to TensorBoard's Text tab. 0: off
    samples: int = 0
    # HParams lists the keys a sweep varies and those that differ from the defaults; true
    # adds every other key after them
    hparams_all: bool = False
    # "auto": continue from this run dir's newest checkpoint if there is one (else start);
    # a path: continue from that checkpoint file or run dir. null: always start fresh.
    resume: str | None = None
    checkpoint_every_steps: int | None = 500  # also write last.pt every N steps; null: epochs only
    on_nonfinite: NonFinite = NonFinite.stop  # what an inf/nan loss or gradient does
    # Score the best checkpoint on the test split at the end. false: a sweep or a benchmark
    # that must not look at (or pay for) the test split; test_ppl is then null.
    test: bool = True


@dataclass
class EvalConfig:
    # Validation and test windows. null (the tutorial): non-overlapping windows of data.bptt.
    # With a stride: windows of `context` tokens (null: data.bptt) that advance by `stride`;
    # each token is scored once, with at least context - stride tokens before it (HF's
    # "perplexity of fixed-length models", fairseq's --context-window).
    context: int | None = None
    stride: int | None = None


@dataclass
class SweepConfig:
    # Skip jobs whose config already finished in the sweep dir (use a fixed hydra.sweep.dir).
    resume: bool = False


@dataclass
class TrainConfig:
    model: Any = MISSING  # one of MODEL_FAMILIES (conf/model/NAME.yaml)
    data: DataConfig = field(default_factory=DataConfig)
    optim: Any = MISSING  # one of the schema/optim entries, or any torch optimizer
    scheduler: Any = MISSING  # one of the schema/scheduler entries
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # The run's own name: added to its folder (outputs/DATE/TIME_NAME, or a sweep job's
    # NUM_NAME_<swept values>) and so to its TensorBoard run. None: the folder alone.
    name: str | None = None
