"""Data-parallel learning over several processes: `reverie train --nproc N`, or a `torchrun` launch.

The split: rank 0 alone plays the env and shares each transition, so every rank holds the same
replay (and the same observation normaliser); each rank samples its own batch with its own
generator and imagines its own rollouts. Inside each of the three optimizer steps the ranks'
gradients are averaged (one all-reduce) before clipping, so every rank applies the same step to the
same parameters and they stay identical, and each optimizer still moves only its own parameters.
The batch statistics that steer a loss are taken over all ranks' batches: the reward range behind
the return bounds, and the return spread the actor divides by. Rank 0 alone evaluates, logs,
checkpoints (with every rank's generator states, so a resume continues exactly) and exports.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of one run (the process group is already set up)."""

    rank: int
    world: int
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average(self, grads: list[torch.Tensor]) -> None:
        """Each gradient, in place, the mean over the ranks: one all-reduce of them all, flattened."""
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])

    def extremes(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(min of `low`, max of `high`) over the ranks."""
        both = torch.stack([-low, high])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        return -both[0], both[1]

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's `values` (same shape on each), joined along the first dimension."""
        parts = [torch.empty_like(values) for _ in range(self.world)]
        dist.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def share(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (the others pass anything)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def collect(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def from_environment() -> Ranks | None:
    """The ranks of a launch that set WORLD_SIZE (torchrun, or `spawn` below), the process group joined;
    None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Ranks(rank, world, local)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn(from_environment(), *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(world: int, fn: Callable, *args) -> torch.multiprocessing.ProcessContext:
    """Start `fn(ranks, *args)` in `world` new processes on this host (rendezvous on a free loopback
    port); returns their context without waiting (`.join()` waits, raising a rank's failure)."""
    return torch.multiprocessing.start_processes(_entry, (world, free_port(), fn, args), nprocs=world,
                                                 join=False, start_method="spawn")
