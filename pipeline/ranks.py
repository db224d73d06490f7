"""`segkd pipeline` under torchrun: the training stages on every rank, the rest on rank 0.

The process group is joined once, here, for all training stages (a stage only joins it
if the pipeline did not: destroying and re-creating the default group under torchrun's
agent store hangs after a few rounds, docs/notes/ddp.md). Rank 0 alone decides whether a
training step is up to date, clears and creates its folder and stamps it; every rank then
trains. After the last training stage the other ranks leave the group and end cleanly,
and rank 0 goes on alone with export, evaluation, benchmarks and the one report: nothing
waits on a barrier through minutes of export (no timeout to outlast).

Without torchrun (WORLD_SIZE unset or 1) the context is a single process's and nothing
changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.steps import Step, StepRunner


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(cfg: dict[str, Any]) -> Any:
    """The DistContext of this process (joins the group under torchrun)."""
    from distill.training.distributed import DistContext, init_distributed

    if world_size() <= 1:
        return DistContext()
    return init_distributed(cfg["device"], cfg.get("dist_timeout"))


def on_main(ctx: Any, action: Callable[[], Any]) -> None:
    """Run `action` on rank 0 while the others wait; its failure stops every rank."""
    if not ctx.enabled:
        action()
        return
    from distill.training.distributed import fail_together

    with fail_together(ctx):
        if ctx.is_main:
            action()


class RankedSteps(StepRunner):
    """A StepRunner whose steps run on every rank (training), decided and stamped by rank 0."""

    def __init__(self, out: Path, log: Callable[[str], None], ctx: Any) -> None:
        super().__init__(out, log, create=ctx.is_main)
        self.ctx = ctx

    def run(self, step: Step) -> bool:
        if not self.ctx.enabled:
            return super().run(step)
        import torch.distributed as dist

        from distill.training.distributed import fail_together

        decision: list[Any] = [None]
        with fail_together(self.ctx):
            if self.ctx.is_main:
                key = step.key()
                decision = [key if not self.up_to_date(step, key) else None]
        dist.broadcast_object_list(decision, src=0)  # every rank takes rank 0's verdict
        key = decision[0]
        if key is None:
            self.skip(step)
            return False
        self.log(f"[{step.name}] running")
        t0 = time.perf_counter()
        step.run()  # every rank: training fails together on its own (trainer.py)
        seconds = time.perf_counter() - t0
        on_main(self.ctx, lambda: self.finish(step, key, seconds))
        return True


def leave(ctx: Any) -> bool:
    """After the training stages: every rank leaves the group; True on rank 0, which goes
    on alone (the others are done)."""
    if not ctx.enabled:
        return True
    from distill.training.distributed import barrier, shutdown

    barrier(ctx)  # rank 0's last stamp is written before anyone leaves
    shutdown(ctx)
    return bool(ctx.is_main)
