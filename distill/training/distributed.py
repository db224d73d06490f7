"""torch.distributed plumbing for `torchrun`; a no-op in a single process.

Ranks must fail together: an error raised on one rank only leaves the others waiting
forever in the next collective. `fail_together` and `raise_if_any` turn one rank's
SegkdError into the same error on every rank, for blocks that hold no collective; the
training loop, whose steps do hold collectives (DDP, SyncBatchNorm), uses
distill.training.failure_board instead.

One process joins the group once (`init_distributed`) and only the caller that joined
it leaves it (`shutdown`): `segkd pipeline` trains several stages in one group, because
destroying and re-creating the default group under torchrun's agent store hangs after a
few rounds (measured: docs/notes/ddp.md).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from core.errors import SegkdError
from distill.training.config import TrainConfig

DEFAULT_TIMEOUT_S = float(TrainConfig.dist_timeout)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    owner: bool = False  # this call joined the group, so its `shutdown` leaves it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str, timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes through RANK / WORLD_SIZE / LOCAL_RANK,
    unless this process already has (then the group's own timeout stays)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    if not timeout > 0:
        raise SegkdError(f"--dist-timeout must be a positive number of seconds, got {timeout_s}")
    if world <= 1:
        return DistContext(timeout_s=timeout)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if dist.is_initialized():
        return DistContext(rank, world, local, _joined_timeout_s.get("s", timeout), owner=False)
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout)
    )
    _joined_timeout_s["s"] = timeout
    return DistContext(rank, world, local, timeout, owner=True)


_joined_timeout_s: dict[str, float] = {}  # the timeout the group was created with


class AgreedError(SegkdError):
    """A failure every rank raised together, after exchanging it: nothing more to tell."""


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
        raise AgreedError(str(error))
    messages: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(messages, error)
    first = next(r for r, m in enumerate(messages) if m is not None)
    raise AgreedError(str(messages[first]) + (f" (on rank {first})" if first else ""))


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
            original._segkd_agreed = True  # type: ignore[attr-defined]  # the others know
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
    """Leave the group if this context joined it (a stage inside `segkd pipeline` does not)."""
    if ctx.enabled and ctx.owner and dist.is_initialized():
        dist.destroy_process_group()


def abort(ctx: DistContext) -> None:
    """Leave the group at once after a failure: the peers' pending collectives with this
    rank then fail (gloo: the connection closes) instead of waiting for the timeout.
    torch's abort (private, feature-detected) also drops NCCL work in flight, which a
    plain destroy could wait on forever."""
    if not (ctx.enabled and dist.is_initialized()):
        return
    abort_group = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort_group is not None and dist.get_backend() == "nccl":
        abort_group()
    else:
        dist.destroy_process_group()
