"""This process's place in a distributed job, and the DDP wrapping of what it trains.

Semantics of a distributed run (docs/distributed.md):

- `--batch-size` is the global batch: each of the W workers takes batch/W images per
  step, so a run on 2 processes takes the same optimizer steps, with the same LR, as
  one process with the same --batch-size.
- The train set is sharded with `DistributedSampler` (padded so every rank takes
  the same number of steps); the frozen-prefix cache is computed per rank on its shard.
- Validation is split across ranks without padding and the counts are all-reduced,
  so every image counts exactly once and every rank sees the same accuracy.
- Rank 0 alone writes the run folder and reports events.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world 1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """What torchrun put in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
        try:
            return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
        except (KeyError, ValueError):
            return cls()

    def init(self, device_type: str, timeout_s: float) -> None:
        """Join the process group: NCCL on CUDA, gloo on the CPU."""
        import torch.distributed as dist

        if not self.enabled or dist.is_initialized():
            return
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d/%d joined (%s)", self.rank, self.world, backend)

    def all_sum(self, *values: float) -> list[float]:
        """Sum numbers over all ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the group once every rank is done (rank 0 writes the last files while the others wait):
        a rank that tears gloo down while a peer still talks to it can abort that peer."""
        import torch.distributed as dist

        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def shard(items: list, dist: Dist) -> list:
    """This rank's share of `items`, without padding (every item on exactly one rank)."""
    return items[dist.rank :: dist.world]


def unshard(parts: list[list], total: int) -> list:
    """Undo `shard`: per-rank lists back into the original order."""
    out: list[Any] = [None] * total
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


class _Owner(nn.Module):
    """The suffix of a cut model, as a module that owns the model's parameters (for DDP)."""

    def __init__(self, model: nn.Module, suffix: nn.Module):
        super().__init__()
        self.model = model
        self._suffix = [suffix]  # not a submodule: its parameters are the model's

    def forward(self, *inputs):
        return self._suffix[0](*inputs)


class DDPWrapper:
    """What the train step calls: the model (or the suffix over cached activations), in DDP when distributed.

    The DDP wrapper is rebuilt when the trainable groups or the cache boundary change (gradual unfreezing).
    """

    def __init__(self, dist: Dist, device, find_unused: bool):
        self.dist, self.device, self.find_unused = dist, device, find_unused
        self._wrapped, self._key = None, None

    def module(self, model: nn.Module, suffix: nn.Module | None, key: tuple) -> nn.Module:
        plain = suffix if suffix is not None else model
        if not self.dist.enabled:
            return plain
        if self._key != key:
            from torch.nn.parallel import DistributedDataParallel

            self._wrapped = None  # the old wrapper's gradient hooks go with it, before new ones are added
            gc.collect()
            wrapped = model if suffix is None else _Owner(model, suffix)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=self.find_unused)
            self._key = key
        return self._wrapped

    def release(self) -> None:
        """Drop the wrapper (its reducer and gradient hooks) while the process group is still alive: a DDP
        object destroyed at interpreter exit, after the group, can abort the process."""
        if self._wrapped is None:  # (a run on one process never made one: nothing to collect)
            return
        self._wrapped, self._key = None, None
        gc.collect()
