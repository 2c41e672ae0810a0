"""One cell on several GPUs of a node: process-group helpers for ``torchrun ... run-cell``.

``torchrun --nproc_per_node=G -m qcore_bench run-cell ID ...`` starts G processes with
WORLD_SIZE, RANK and LOCAL_RANK in their environment. Each process holds the whole
model; what is split over ranks is described by a ``Shard`` (this rank's part of a pass),
and the collectives that put the parts together live here. A single process (no torchrun,
or WORLD_SIZE=1) never initialises a process group and every helper is a no-op, so its
numbers are those of the plain path.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

# How long a rank waits in a collective for the others. Long single-rank work (building a
# teacher, a proxy or cached outputs under a file lock) happens outside collectives, but rank
# 0's writes to a slow shared file system can keep the others waiting for minutes. A rank that
# dies is noticed by torchrun, which stops the others: a long timeout does not make a crash hang.
TIMEOUT = datetime.timedelta(hours=1)


class DistributedError(RuntimeError):
    """Ranks disagree where they must not (e.g. a selection that differs across ranks)."""


@dataclass(frozen=True)
class Shard:
    """This process's part of the work: rank ``rank`` of ``world``.

    Parts are contiguous blocks whose sizes differ by at most one, lower ranks taking the
    larger ones, so concatenating the parts in rank order gives back the whole.
    """

    rank: int = 0
    world: int = 1

    def span(self, n: int) -> slice:
        """This rank's block of ``n`` items."""
        q, r = divmod(n, self.world)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (self.rank < r))

    def batches(self, n: int, batch_size: int) -> Iterator[tuple[slice, slice]]:
        """(global batch, this rank's part of it) for a pass over ``n`` items, as positions.

        Every rank walks the same global batches of ``batch_size``; the part is relative to
        its batch. A last global batch smaller than the world size (some ranks would get no
        sample, and DDP needs every rank in every step) is dropped: at most world - 1 samples
        of a pass, and only when world > 1.
        """
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            if size >= self.world:
                yield slice(start, start + size), self.span(size)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes results, checkpoints and logs."""
    return rank() == 0


def shard() -> Shard:
    """This process's rank and the world size."""
    return Shard(rank(), world_size())


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1, and leave it at the end.

    Yields the device this rank trains on: cuda:LOCAL_RANK with NCCL when ``device`` is a
    CUDA device, else ``device`` with gloo (the CPU path the tests run). Without torchrun
    it yields ``device`` and starts nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)  # object collectives and NCCL use the current device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield device
    finally:
        # DDP objects kept alive by reference cycles hold the group and its gloo threads: freed
        # now, while the interpreter is whole (at exit, their tensors' teardown aborts the process)
        gc.collect()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled): decisions that only rank 0 may take."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks, in place (``t`` on the rank's device)."""
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """``t`` reduced to its minimum over ranks, in place."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's ``Shard.span(n)`` rows put together in order: the whole [n, ...] on every rank.

    Parts differ in size by at most one row; they are padded to the largest for the
    all_gather (which needs equal shapes) and trimmed after.
    """
    s = shard()
    if s.world == 1:
        return local
    rows = -(-n // s.world)
    padded = local.new_zeros((rows, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(s.world)]
    dist.all_gather(parts, padded.contiguous())
    sizes = [Shard(r, s.world).span(n) for r in range(s.world)]
    return torch.cat([p[: part.stop - part.start] for p, part in zip(parts, sizes)])


def assert_same(what: str, *tensors: torch.Tensor | None) -> None:
    """Raise DistributedError unless every rank holds the same ``tensors`` (one small all_reduce).

    Compares a 63-bit digest of the bytes, so it costs a hash on the host, not a transfer
    of the tensors.
    """
    if world_size() == 1:
        return
    h = hashlib.sha256()
    for t in tensors:
        h.update(b"none" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
    digest = int.from_bytes(h.digest()[:8], "little") >> 1
    spread = torch.tensor([digest, -digest], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)  # [max, -min]
    if int(spread[0]) != -int(spread[1]):
        raise DistributedError(f"{what} differs across the {world_size()} ranks (rank {rank()} digest "
                               f"{digest:016x}); selectors must be deterministic given their generator and inputs")


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel: gradients averaged over ranks at every step.

    Buffers are synchronised at construction only (every rank starts from rank 0's) and then
    once an epoch by ``sync_buffers``, not broadcast at every forward pass.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    # newer torch renamed the switch (and warns about the old name); both keep the sync at construction
    no_step_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                    else {"broadcast_buffers": False})
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **no_step_sync)


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Average the floating buffers (BatchNorm running statistics) over ranks.

    DDP keeps parameters identical on every rank, but each rank's BatchNorm statistics
    follow its own share of the batches. With equal shares, the average of the ranks'
    running means tracks the means of whole batches; the variances lack the between-rank
    part. Integer buffers (batch counters) and flags are equal on every rank already.
    """
    if world_size() == 1:
        return
    floats = [b for b in model.buffers() if b.is_floating_point()]
    if not floats:
        return
    flat = torch.cat([b.reshape(-1).float() for b in floats])
    dist.all_reduce(flat)
    flat /= world_size()
    for b, v in zip(floats, flat.split([b.numel() for b in floats])):
        b.copy_(v.view_as(b))
