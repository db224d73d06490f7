"""The trainer's device-side failure bookkeeping (step_health.py) and the store-based
failure board (failure_board.py), in one process: what they decide and the line they say."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from core.errors import SegkdError
from distill.training.distributed import AgreedError, DistContext
from distill.training.failure_board import FailureBoard
from distill.training.step_health import StepHealth

ONE = DistContext()


def feed(health: StepHealth, losses: list[float]) -> None:
    for it, loss in enumerate(losses):
        health.record({"ce": torch.tensor(1.5), "loss": torch.tensor(loss)}, it)


def test_without_a_scaler_the_first_non_finite_loss_stops_and_is_named(tmp_path: Path) -> None:
    health = StepHealth(limit=1, skipping=False)
    feed(health, [2.0, 1.0])
    assert health.check(ONE, tmp_path) == {}  # fine so far: nothing to log
    feed(health, [1.0, 1.0, math.inf, math.nan])  # iterations 0..3 again: inf at 2
    with pytest.raises(AgreedError) as e:
        health.check(ONE, tmp_path)
    assert str(e.value) == (
        "loss became inf at iteration 2 (ce=1.5, loss=inf); stopped. no checkpoint was "
        "written yet; lower --lr or check the data"
    )


def test_under_amp_skipped_steps_are_counted_and_only_a_run_of_them_stops(
    tmp_path: Path,
) -> None:
    health = StepHealth(limit=3, skipping=True)
    feed(health, [1.0, math.nan, math.nan, 1.0, math.nan, 1.0])  # runs of 2 and 1
    assert health.check(ONE, tmp_path) == {"skipped_steps": 3, "longest_skip_run": 2}
    (tmp_path / "last.pt").write_bytes(b"kept")
    for it, loss in zip(range(6, 10), [1.0, math.nan, math.nan, math.nan], strict=True):
        health.record({"ce": torch.tensor(2.0), "loss": torch.tensor(loss)}, it)
    with pytest.raises(AgreedError, match=r"3 consecutive steps with a non-finite loss from "
                       r"iteration 7 \(GradScaler skipped them; ce=2, loss=nan\); stopped\. "
                       r".*last\.pt is intact"):  # fmt: skip
        health.check(ONE, tmp_path)


def board(timeout_s: float) -> FailureBoard:
    """Rank 1 of a 2-rank run whose peer is silent, over an in-memory store."""
    return FailureBoard(DistContext(rank=1, world_size=2, timeout_s=timeout_s), dist.HashStore())


def test_a_checkpoint_with_a_silent_peer_ends_in_a_line_naming_this_rank() -> None:
    with pytest.raises(SegkdError, match=r"^rank 1: no answer from the other ranks within "
                       r"0\.2 s in a checkpoint between steps"):  # fmt: skip
        board(timeout_s=0.2).arrive()


def test_a_checkpoint_reads_the_failure_a_peer_posted() -> None:
    b = board(timeout_s=5)
    assert b.post("bad batch: x.png") == "bad batch: x.png"
    assert b.post("a later failure") == "bad batch: x.png"  # the first one wins
    with pytest.raises(AgreedError, match=r"^bad batch: x\.png$"):
        b.arrive()
