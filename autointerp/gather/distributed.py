"""Several processes, one gather: `torchrun` starts them and sets RANK and WORLD_SIZE.

Each rank takes the contexts whose id modulo the world size is its rank (corpus.rank_share), so
no rank tells another what to read. At the end of each pass the gatherers are merged exactly
(Gatherer.absorb) up a binary tree, so no rank ever holds more than two of them, and rank 0 alone
writes the store. Tensors travel over the default group (NCCL between GPUs, gloo on CPUs); the
few Python objects (which contexts a rank saw) over a gloo group, which every backend can pair with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from autointerp.errors import AutointerpError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # this rank's index on its own node: its GPU
    local_size: int = 1  # ranks on this node, sharing its CPU memory

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from the variables torchrun sets (one process when they are absent)."""
    try:
        return World(
            *(
                int(os.environ.get(name, default))
                for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))
            )
        )
    except ValueError as e:
        raise AutointerpError(
            f"RANK, WORLD_SIZE, LOCAL_RANK or LOCAL_WORLD_SIZE is not a number ({e})",
            "start several processes with torchrun, which sets them, or unset them for one process",
        ) from e


def rank_device(requested: str, w: World) -> str:
    """Each rank's device: its node-local GPU when the request is cuda (or auto with GPUs), else the CPU."""
    if not w.distributed:
        return requested
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        if torch.cuda.device_count() < w.local_size:
            raise AutointerpError(
                f"{w.local_size} ranks on this node but {torch.cuda.device_count()} GPUs",
                "start at most one rank per GPU (torchrun --nproc-per-node)",
            )
        return f"cuda:{w.local_rank}"
    if requested in ("auto", "cpu"):
        return "cpu"
    raise AutointerpError(
        f"a distributed gather runs on CUDA GPUs (NCCL) or on CPUs (gloo), not on {requested}",
        "pass --device cuda (one rank per GPU) or --device cpu"
        if requested.startswith("cuda") and not torch.cuda.is_available()
        else "pass --device cuda or --device cpu",
    )


class Group:
    """The process group of one distributed gather: merging gatherers, agreeing on values."""

    def __init__(self, w: World, device: torch.device):
        import torch.distributed as dist

        self.world, self.device, self.dist = w, device, dist
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
        self.objects = dist.new_group(backend="gloo")  # pickled objects travel on CPUs for either backend

    def broadcast(self, value):
        """Rank 0's value, on every rank."""
        box = [value]
        self.dist.broadcast_object_list(box, src=0, group=self.objects)
        return box[0]

    def min(self, value: float) -> float:
        """The smallest of every rank's value (all ranks must plan the same feature shards)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN)
        return float(t.item())

    def merge(self, gatherer, fresh):
        """Absorb every rank's gatherer into rank 0's, pairwise up a binary tree. Returns the merged
        gatherer on rank 0 and None elsewhere; fresh() makes an empty gatherer to receive into."""
        rank, size, step = self.world.rank, self.world.size, 1
        while step < size:
            if rank % (2 * step) == step:  # send to the partner below and leave the tree
                for t in gatherer.state_tensors():
                    self.dist.send(t.contiguous(), rank - step)
                self.dist.send_object_list([gatherer.state_objects()], rank - step, group=self.objects)
                return None
            if rank % (2 * step) == 0 and rank + step < size:
                other = fresh()
                for t in other.state_tensors():
                    self.dist.recv(t, rank + step)
                received = [None]
                self.dist.recv_object_list(received, rank + step, group=self.objects)
                other.load_state_objects(received[0])
                gatherer.absorb(other)
                del other
            step *= 2
        return gatherer

    def close(self) -> None:
        self.dist.destroy_process_group()


@contextmanager
def group(w: World, device: torch.device) -> Iterator[Group | None]:
    """The process group for the length of one gather (None in one process)."""
    if not w.distributed:
        yield None
        return
    g = Group(w, device)
    try:
        yield g
    finally:
        g.close()
