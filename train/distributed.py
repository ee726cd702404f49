"""Distributed data-parallel training when launched by ``torchrun``; a no-op context otherwise.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with them :func:`init_distributed`
joins the process group (NCCL on CUDA, gloo on the CPU) and picks this process's device. Every
rank computes the same split and normalisation (both are deterministic), trains on its shard of
each epoch (``DistributedSampler`` + ``set_epoch``) and evaluates its shard of the validation
set; sums are all-reduced so every rank sees the same metrics, and only rank 0 writes files or
draws progress bars.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized: bool  # True when this context joined a process group (and must leave it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and draws progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are all set."""
    return all(k in os.environ for k in _ENV)


def resolve_device(request: str) -> torch.device:
    """``"cpu"`` or ``"cuda"``/``"cuda:N"``; ``ValueError`` if CUDA is asked for and absent."""
    import torch

    if request == "cpu":
        return torch.device("cpu")
    if request.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {request} asked for CUDA, but torch sees no CUDA GPU; "
                             "use --device cpu")
        return torch.device(request)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {request!r}")


def _env_int(name: str) -> int:
    """A torchrun variable as a non-negative int, or a ValueError naming it."""
    value = os.environ[name]
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"environment variable {name}={value!r} must be a whole number >= 0 "
                         "(torchrun sets it; unset RANK, LOCAL_RANK and WORLD_SIZE outside it)")
    return number


def init_distributed(device_request: str) -> DistContext:
    """Join the torchrun process group if launched by torchrun, else a single-process context.

    Under torchrun with ``device_request="cuda"`` each rank uses ``cuda:LOCAL_RANK`` and NCCL;
    with ``"cpu"`` every rank uses the CPU and gloo.
    """
    import torch
    import torch.distributed as dist

    device = resolve_device(device_request)
    if not launched_by_torchrun() or _env_int("WORLD_SIZE") <= 1:
        return DistContext(0, 1, 0, device, initialized=False)
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local_rank, device, initialized=True)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group that :func:`init_distributed` joined (idempotent)."""
    import torch.distributed as dist

    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(module)`` across the group, or ``module`` itself when alone."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if ctx.device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[ctx.device.index])
    return DistributedDataParallel(module)


def all_reduce_sums(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64; identity when alone)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    # NCCL reduces only device tensors; gloo only host tensors.
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each training forward, so after the last step of an
    epoch every rank holds statistics updated by its own last batch. Evaluating with those would
    score a slightly different model on each shard than the one rank 0 saves.
    """
    if not ctx.distributed:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op when alone)."""
    if ctx.distributed:
        import torch.distributed as dist

        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


class ShardSampler:
    """Indices ``rank, rank + world, ...`` of ``range(n)``, in order, without padding.

    For evaluation: unlike ``DistributedSampler`` it never repeats a sample to even out the
    shards, so all-reduced sums count every validation frame exactly once.
    """

    def __init__(self, n: int, ctx: DistContext) -> None:
        self._indices = list(range(ctx.rank, n, ctx.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


__all__ = [
    "DistContext", "ShardSampler", "all_reduce_sums", "barrier", "broadcast_buffers",
    "init_distributed", "launched_by_torchrun", "resolve_device", "shutdown", "wrap_model",
]
