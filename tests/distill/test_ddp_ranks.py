"""Two gloo ranks, each its own process (no torchrun agent to kill a hung survivor):
the objective's adapters are the same on both ranks, one rank's failure ends both, and
the steady-state step reads nothing back to the host and exchanges nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_ranks(scenario: str, out: Path, timeout: float) -> list[tuple[int | None, str]]:
    """(exit status or None if it had to be killed, stderr) of rank 0 and rank 1."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        }  # fmt: skip
        cmd = [sys.executable, "-m", "tests.distill.ddp_worker", scenario, str(out)]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append((p.returncode, err))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            results.append((None, err))
    return results


@pytest.mark.slow
def test_objective_adapters_are_identical_on_every_rank(tmp_path: Path) -> None:
    # Teacher 256 channels, student 128: IDD builds a 1x1 conv + BN adapter, PID a
    # student-side readout; both train. Before the fix each rank initialised its own.
    results = two_ranks("adapters", tmp_path, timeout=300)
    for rc, err in results:
        assert rc == 0, err[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys()
    assert any(k.startswith("idd.adapter") for k in a)
    assert any("running_mean" in k for k in a)
    assert any(k.startswith("pid.student_readout") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between rank 0 and rank 1"


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both_with_the_same_error(tmp_path: Path) -> None:
    start = time.monotonic()
    results = two_ranks("nan", tmp_path, timeout=180)  # a hang, not a speed limit
    assert time.monotonic() - start < 180
    lines = []
    for rank, (rc, err) in enumerate(results):
        assert rc == 2, f"rank {rank}: exit {rc} (None: hung, killed)\n{err[-3000:]}"
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err[-3000:]
        lines.append(errors[0])
    assert lines[0] == lines[1]
    assert "loss became nan at iteration 2" in lines[0] and "rank 1" in lines[0]
    assert "Traceback" not in results[0][1] + results[1][1]


@pytest.mark.slow
def test_a_refusal_on_rank_0_stops_both_with_the_same_error(tmp_path: Path) -> None:
    (tmp_path / "resume.pt").write_bytes(b"a run is here")
    results = two_ranks("nan", tmp_path, timeout=60)
    for rank, (rc, err) in enumerate(results):
        assert rc == 2, f"rank {rank}: exit {rc} (None: hung, killed)\n{err[-3000:]}"
        assert "already holds a run" in err and "Traceback" not in err
    assert (tmp_path / "resume.pt").read_bytes() == b"a run is here"  # untouched


@pytest.mark.slow
def test_a_rank_failing_while_the_other_is_in_a_collective_stops_both(tmp_path: Path) -> None:
    # Rank 0 waits in a collective inside its forward (SyncBatchNorm's place) while rank 1
    # raises before reaching it, between two checks: the old flag all-reduce would pair with
    # rank 0's collective. Both must print rank 1's line, well before the group's timeout.
    results = two_ranks("crash", tmp_path, timeout=180)
    lines = []
    for rank, (rc, err) in enumerate(results):
        assert rc == 2, f"rank {rank}: exit {rc} (None: hung, killed)\n{err[-3000:]}"
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err[-3000:]
        lines.append(errors[0])
    assert lines[0] == lines[1] == "error: bad batch: a broken image file (on rank 1)"
    assert "Traceback" not in results[0][1] + results[1][1]


@pytest.mark.slow
def test_the_steady_state_step_has_no_host_read_and_no_collective(tmp_path: Path) -> None:
    # 7 iterations, log every 3, evaluate at 7: iterations 2, 5 and 6 (0-based) end at a
    # check; 0, 1, 3 and 4 are the steady state.
    results = two_ranks("syncs", tmp_path, timeout=300)
    for rank, (rc, err) in enumerate(results):
        assert rc == 0, f"rank {rank}: exit {rc}\n{err[-3000:]}"
        counts = json.loads((tmp_path / f"syncs{rank}.json").read_text())
        for it in ("0", "1", "3", "4"):
            assert counts.get(it, {}) == {}, f"rank {rank}, iteration {it}: {counts[it]}"
        for it in ("2", "5", "6"):  # the counting sees the checks: one all-reduce, one read
            assert counts[it]["all_reduce"] >= 1 and counts[it]["tolist"] >= 1, counts[it]
