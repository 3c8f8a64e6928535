"""Device selection and mixed precision from a DeviceConfig."""

from __future__ import annotations

import contextlib

import torch

from lmx.config.rules import FP16_ON_CPU
from lmx.config.schema import DeviceConfig, DeviceType, Precision
from lmx.errors import ConfigError
from lmx.runtime.distributed import World
from lmx.runtime.heap import keep_heap

_DTYPES = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def resolve_device(
    cfg: DeviceConfig, world: World | None = None, training: bool = True
) -> torch.device:
    """The configured device; under torchrun each rank takes the GPU of its local rank.
    Training refuses fp16 on a CPU (it needs CUDA's gradient scaler); evaluation takes it."""
    if cfg.type == DeviceType.auto:
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    elif cfg.type == DeviceType.cuda and not torch.cuda.is_available():
        raise ConfigError(
            "device.type=cuda was asked for, but torch sees no CUDA device; "
            "set device.type=cpu or device.type=auto"
        )
    else:
        kind = cfg.type.value
    if training and kind == "cpu" and cfg.precision == Precision.fp16:  # auto found no GPU
        raise ConfigError(FP16_ON_CPU)
    if kind == "cuda" and world is not None and world.enabled:
        return torch.device("cuda", world.local_rank)
    return torch.device(kind)


def enable_tf32(device: torch.device, on: bool) -> None:
    """device.tf32: fp32 matmuls on a CUDA GPU in TensorFloat-32 (10-bit mantissa inputs,
    fp32 accumulation; Ampere and later), several times faster: torch's matmuls and cuDNN's
    RNNs (the LSTM family) alike. No effect on a CPU, and none where the run computes in bf16
    or fp16 anyway."""
    if device.type != "cuda":  # never on a CPU: there "high" may let matmuls use bf16
        return
    torch.set_float32_matmul_precision("high" if on else "highest")
    # cuDNN's flag (RNNs and convolutions) through the API every torch >= 2.4 has; torch's
    # newer per-op flags would make a later read of this one raise
    torch.backends.cudnn.allow_tf32 = on


def apply_settings(device: torch.device, cfg: DeviceConfig) -> None:
    """The process-wide settings of a DeviceConfig: device.threads, device.tf32 and
    device.keep_heap. Train, evaluate and generate each apply them, so a setting in the saved
    config or on the command line takes effect in all three."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    enable_tf32(device, cfg.tf32)
    keep_heap(cfg.keep_heap)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Forward passes run in `precision`; fp32 is a no-op context."""
    if precision == Precision.fp32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
