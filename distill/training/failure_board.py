"""One rank's failure, told to every rank through the rendezvous store, never a collective.

The training step holds collectives a failing rank cannot finish: SyncBatchNorm's
all_gather in the forward, DDP's gradient all-reduce in the backward. A rank that fails
there (a bad batch, out of memory, a bug) must not enter a collective of its own to say
so (the others sit in a different one: that is the SyncBatchNorm deadlock). Instead it

1. writes its one-line error to the store (the first writer wins: one message per run),
2. leaves the process group at once (`abort`), so a peer blocked in a collective with it
   gets an error (gloo: connection closed; otherwise the group's timeout),
3. waits a bounded time for the peers to read the message (rank 0 may host the store),
   and raises.

A peer whose collective fails, or who finds the message while it waits at the next
checkpoint (`arrive`: a store count, not a collective), raises the same SegkdError. A
rank that died without a word leaves the others with the process-group timeout, which
`stop_together` turns into an error naming the waiting rank.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist

from core.errors import SegkdError
from distill.training.distributed import AgreedError, DistContext, abort

POLL_S = 0.01
ACK_WAIT_S = 30.0  # at most this long a failing rank keeps its store up for the peers


class FailureBoard:
    """Store keys under one prefix per training run (a pipeline trains several)."""

    _runs = 0  # the same count on every rank: every rank starts the same runs in order

    def __init__(self, ctx: DistContext, store: dist.Store | None = None) -> None:
        self.ctx = ctx
        FailureBoard._runs += 1
        # torchrun keeps its store across restarts (--max-restarts): a new attempt must not
        # read the failure that ended the previous one.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"segkd/attempt{attempt}/run{FailureBoard._runs}"
        # By default the store the group was rendezvoused through: torchrun's agent's, or
        # rank 0's (torch's accessor is private). Held here so that it outlives the group on
        # a failing rank 0.
        if store is None and ctx.enabled:
            store = dist.distributed_c10d._get_default_store()
        self.store = store
        self.checks = 0

    @property
    def key(self) -> str:
        return f"{self.prefix}/failure"

    def posted(self) -> str | None:
        assert self.store is not None
        if not self.store.check([self.key]):
            return None
        return self.store.get(self.key).decode()

    def post(self, message: str) -> str:
        """Offer `message`; returns the run's failure message (an earlier one wins)."""
        assert self.store is not None
        return self.store.compare_set(self.key, "", message).decode()

    def arrive(self) -> None:
        """A checkpoint every rank reaches between steps: wait until all have, through the
        store, so a rank that failed earlier is seen here, by its message, instead of
        through a collective that would never complete (NCCL queues steps asynchronously,
        so a healthy rank's host gets here while the GPU still waits on the dead rank)."""
        if self.store is None:
            return
        self.checks += 1
        key = f"{self.prefix}/arrive{self.checks}"
        self.store.add(key, 1)
        deadline = time.monotonic() + self.ctx.timeout_s
        while self.store.add(key, 0) < self.ctx.world_size:
            message = self.posted()
            if message is not None:
                self.acknowledge()
                raise AgreedError(message)
            if time.monotonic() > deadline:
                raise SegkdError(self.timed_out("a checkpoint between steps"))
            time.sleep(POLL_S)

    def acknowledge(self) -> None:
        assert self.store is not None
        self.store.add(f"{self.prefix}/acks", 1)

    def wait_for_acks(self) -> None:
        """The failing rank: keep the store (maybe hosted here) up until every peer read
        the message, or ACK_WAIT_S."""
        assert self.store is not None
        deadline = time.monotonic() + min(ACK_WAIT_S, self.ctx.timeout_s)
        while time.monotonic() < deadline:
            if self.store.add(f"{self.prefix}/acks", 0) >= self.ctx.world_size - 1:
                return
            time.sleep(POLL_S)

    def timed_out(self, where: str) -> str:
        return (
            f"rank {self.ctx.rank}: no answer from the other ranks within "
            f"{self.ctx.timeout_s:g} s in {where}; a rank died or stalled without a message "
            "(see its output; --dist-timeout sets the wait)"
        )


def rank_message(error: BaseException, rank: int) -> str:
    """The one line every rank prints for `error` raised on `rank`."""
    if isinstance(error, SegkdError):
        text = str(error)
    else:
        lines = str(error).strip().splitlines() or [""]
        text = f"{type(error).__name__}: {lines[0][:200]}"
    return text + (f" (on rank {rank})" if rank else "")


@contextmanager
def stop_together(ctx: DistContext, board: FailureBoard) -> Iterator[None]:
    """Around the training loop: any exception on any rank ends every rank with one line."""
    if not ctx.enabled:
        yield
        return
    try:
        yield
    except AgreedError:
        raise  # every rank raised it together
    except SegkdError as e:
        raise SegkdError(_settle(ctx, board, e)) from None
    except Exception as e:
        if getattr(e, "_segkd_agreed", False):
            raise
        message = _settle(ctx, board, e)
        if message == rank_message(e, ctx.rank) and not _from_peers(e):
            raise  # this rank's own bug: its traceback; the others print its line
        raise SegkdError(message) from None


def _from_peers(error: BaseException) -> bool:
    """A collective that failed because a peer left or went silent."""
    return isinstance(error, dist.DistError)


def _settle(ctx: DistContext, board: FailureBoard, error: BaseException) -> str:
    """The run's failure message, after this rank's part in telling everyone."""
    if _from_peers(error):
        # Our collective broke: the peer that left posted its message before leaving.
        message = _wait_posted(board, timedelta(seconds=min(ACK_WAIT_S, ctx.timeout_s)))
        if message is None:
            message = board.post(board.timed_out("a collective (" + _first_line(error) + ")"))
        board.acknowledge()
        abort(ctx)
        return message
    message = board.post(rank_message(error, ctx.rank))
    abort(ctx)  # the peers' collectives with this rank fail now
    if message == rank_message(error, ctx.rank):
        board.wait_for_acks()
    else:
        board.acknowledge()
    return message


def _wait_posted(board: FailureBoard, wait: timedelta) -> str | None:
    deadline = time.monotonic() + wait.total_seconds()
    while time.monotonic() < deadline:
        message = board.posted()
        if message is not None:
            return message
        time.sleep(POLL_S)
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0][:160]
