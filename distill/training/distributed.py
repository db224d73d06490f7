"""torch.distributed plumbing for `torchrun`; a no-op in a single process.

Ranks must fail together: an error raised on one rank only leaves the others waiting
forever in the next collective. `fail_together` and `raise_if_any` turn one rank's
SegkdError into the same error on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from runtime.errors import SegkdError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistContext:
    """Join the process group torchrun describes through RANK / WORLD_SIZE / LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local)


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only, gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool | torch.Tensor, ctx: DistContext) -> bool:
    """True on every rank if `flag` is true on any rank (one 1-element all-reduce)."""
    if not ctx.enabled:
        return bool(flag)
    t = torch.as_tensor(flag).detach().reshape(1).to(_collective_device(), torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def raise_if_any(error: str | None, ctx: DistContext) -> None:
    """Collective: if any rank passes an error message, every rank raises the same
    SegkdError (the lowest failing rank's message). Every rank must call it."""
    if not any_rank(error is not None, ctx):
        return
    if not ctx.enabled:
        raise SegkdError(str(error))
    messages: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(messages, error)
    first = next(r for r, m in enumerate(messages) if m is not None)
    raise SegkdError(str(messages[first]) + (f" (on rank {first})" if first else ""))


@contextmanager
def fail_together(ctx: DistContext) -> Iterator[None]:
    """Run a block on every rank; an exception in it on any rank ends the block on ALL
    ranks with the same SegkdError (every rank must reach the end of the block, so it
    must hold no collective a failing rank could skip). A rank whose error was not a
    SegkdError (a bug) re-raises its own, with its traceback."""
    original: Exception | None = None
    try:
        yield
    except Exception as e:
        if not ctx.enabled:
            raise
        original = e
    error = None
    if original is not None:
        lines = str(original).strip().splitlines() or [""]
        error = (
            str(original)
            if isinstance(original, SegkdError)
            else f"{type(original).__name__}: {lines[0][:200]}"
        )
    try:
        raise_if_any(error, ctx)
    except SegkdError:
        if original is not None and not isinstance(original, SegkdError):
            raise original from None
        raise


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, one broadcast
    per dtype. After every step: each rank's BN saw its own batch."""
    if not ctx.enabled:
        return
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in module.buffers():
        groups.setdefault(b.dtype, []).append(b)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([b.reshape(-1) for b in group])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in group:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
