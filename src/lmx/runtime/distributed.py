"""Data-parallel training under torchrun: who this process is, and the few collectives lmx needs.

`torchrun --nproc_per_node=N -m lmx.train ...` starts N copies of lmx.train with RANK,
WORLD_SIZE and LOCAL_RANK set. Each rank trains on a disjoint share of the batch rows (the
batchified stream splits cleanly by row), DistributedDataParallel averages the gradients,
and rank 0 alone writes logs, checkpoints and metrics.json. Without torchrun every helper
here is a no-op, so the single-process path stays the plain one.
"""

from __future__ import annotations

import gc
import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lmx.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64, so that sums of losses stay exact)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: float, device: torch.device) -> float:
        """The largest of the ranks' values (e.g. their wall clocks, so they agree)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, as a list on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # ------------------------------------------------------------------ data
    def train_rows(self, source: torch.Tensor) -> torch.Tensor:
        """This rank's equal share of the training rows [bsz, len] -> [bsz / world, len]."""
        if not self.enabled:
            return source
        rows = source.size(0)
        if rows % self.world_size:
            raise ConfigError(
                f"data.batch_size={rows} is not divisible by the {self.world_size} processes: "
                "each process takes an equal share of the batch rows"
            )
        share = rows // self.world_size
        return source[self.rank * share : (self.rank + 1) * share]

    def eval_rows(self, source: torch.Tensor) -> torch.Tensor:
        """This rank's share of the evaluation rows; shares may differ by one row, since the
        losses are summed over ranks, not averaged."""
        if not self.enabled:
            return source
        if source.size(0) < self.world_size:
            raise ConfigError(
                f"data.eval_batch_size={source.size(0)} is smaller than the {self.world_size} "
                "processes: each needs at least one row"
            )
        return torch.tensor_split(source, self.world_size)[self.rank]


def world_from_env() -> World:
    """The torchrun environment, or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    """Join the process group: nccl between GPUs, gloo between CPU processes. On GPUs gloo
    also carries the CPU tensors (the stop flag each step, the meters at a log line), so that
    agreeing on them never waits for the GPU."""
    if not world.enabled or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # DDP imports torch._dynamo; imported after the group exists, it keeps references to the
    # default group that nothing releases (torch 2.13), and the group outlives shutdown().
    importlib.import_module("torch._dynamo")
    dist.init_process_group(backend)


def shutdown() -> None:
    """Leave the process group, and free it now, while the interpreter is whole.

    gloo's worker threads live as long as the C++ process group, and DDP's reducer holds
    that; the trainer's objects hold each other in reference cycles, so without this the
    group and its threads would last into the interpreter's exit, where their teardown races
    Python's own. In CI a rank of a finished run then died now and then with SIGABRT
    ("terminate called without an active exception"), failing the run. The caller has
    dropped its own references; collecting here frees the group and joins its threads, so
    none should be left at exit (tests/test_distributed.py checks that)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()
