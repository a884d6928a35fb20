"""The distributed context: one process, or DistributedDataParallel ranks launched by ``torchrun``."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Dist:
    """This process's rank, the world size and the device it computes on."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str | None) -> Dist:
    """Single process, or DDP when launched by ``torchrun`` (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if world <= 1:
        return Dist(0, 1, torch.device(device or ("cuda" if want_cuda else "cpu")))
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(seconds=int(os.environ.get("GSIT_DIST_TIMEOUT", "300")))
    if want_cuda:
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=timeout)
        dev = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo", timeout=timeout)
        dev = torch.device("cpu")
    return Dist(rank, world, dev)


def all_gather(obj: Any, ctx: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Dist) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def rank_slice(batch: np.ndarray, ctx: Dist) -> np.ndarray:
    """This rank's fixed share of a global batch of row indices."""
    return batch[ctx.rank :: ctx.world]


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers (what DDP's constructor does), for the static
    steps of :mod:`gsit.execution`, which run the plain model under ``torchrun``."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def all_reduce_mean_(tensors: list[torch.Tensor], world: int) -> None:
    """Average ``tensors`` over the ``world`` processes in place, with one collective (flattened)."""
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(world)
    for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(v.view_as(t))
