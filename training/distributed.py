"""Distributed training with PyTorch's own engine: ``torchrun --nproc-per-node N -m ichnode train``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them training runs in one process as
usual. Backend gloo on CPU, NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``). Each rank draws
the same epoch of indices from the sampler and keeps every N-th one (padded so every rank runs
the same number of batches); only rank 0 validates, writes checkpoints and reports.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ichnode.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when started by torchrun; returns (info, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class ShardedSampler(Sampler[int]):
    """Rank ``rank``'s share of another sampler's epoch: indices ``rank::world_size``.

    The epoch is padded (by repeating its start) to a multiple of ``world_size`` so every rank
    runs the same number of steps, which DistributedDataParallel needs.
    """

    def __init__(self, inner: Sampler[int], rank: int, world_size: int) -> None:
        self.inner, self.rank, self.world_size = inner, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return math.ceil(len(self.inner) / self.world_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        indices = list(self.inner)
        total = len(self) * self.world_size
        indices += indices[: total - len(indices)]
        return iter(indices[self.rank : total : self.world_size])
