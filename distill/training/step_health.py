"""Non-finite losses, counted on the device every step and looked at only at checks.

Reading a loss on the host (`.item()`, `if torch.isfinite(...)`) waits for the GPU to
finish the step: a pipeline bubble every iteration. Here each step adds a few tiny device
ops; the trainer calls `check` every log interval, before every evaluation and at the end,
where one all-reduce and one host read decide for every rank at once.

Without a GradScaler (fp32, bf16) the first non-finite loss stops the run. Under fp16 AMP
GradScaler already skips a step whose gradients are not finite (and lowers its scale), so
the run stops only after `max_skips` consecutive non-finite steps on one rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distill.training.distributed import AgreedError, DistContext, _collective_device


class StepHealth:
    def __init__(self, limit: int, skipping: bool) -> None:
        """`limit` consecutive non-finite steps stop the run; `skipping`: GradScaler skips them."""
        self.limit, self.skipping = max(1, limit), skipping
        self.names: list[str] = []
        self._state: dict[str, torch.Tensor] = {}

    def _init(self, terms: dict[str, torch.Tensor]) -> None:
        device = terms["loss"].device
        self.names = list(terms)
        zero = torch.zeros((), dtype=torch.long, device=device)
        self._state = {
            "run": zero.clone(),  # consecutive non-finite steps, ending with the last one
            "longest": zero.clone(),
            "skipped": zero.clone(),  # every non-finite step since the start
            "start": zero.clone() - 1,  # iteration where the run that tripped began
            "values": torch.zeros(len(terms), device=device),  # the terms at that iteration
        }

    def record(self, terms: dict[str, torch.Tensor], it: int) -> None:
        """Device ops only: no host read, no collective."""
        if not self._state:
            self._init(terms)
        s = self._state
        bad = ~torch.isfinite(terms["loss"].detach())
        tripped = s["longest"] >= self.limit  # frozen once tripped: report that run
        s["run"] = (s["run"] + 1) * bad
        starts = bad & (s["run"] == 1) & ~tripped
        s["start"] = torch.where(starts, it, s["start"])
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        s["values"] = torch.where(starts, values, s["values"])
        s["longest"] = torch.maximum(s["longest"], s["run"])
        s["skipped"] += bad

    def check(self, ctx: DistContext, out: Path) -> dict[str, Any]:
        """Collective, at a point every rank reaches between two steps: stops every rank
        with the same line if any rank tripped; else returns what the log records."""
        if not self._state:
            return {}
        s = self._state
        mine = torch.stack([(s["longest"] >= self.limit).long(), s["skipped"], s["longest"]])
        if ctx.enabled:
            mine = mine.to(_collective_device())
            dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        stop, skipped, longest = mine.tolist()  # the one host read of this check
        if stop:
            raise AgreedError(self._first_failure(ctx, out))
        return {"skipped_steps": skipped, "longest_skip_run": longest} if self.skipping else {}

    def _first_failure(self, ctx: DistContext, out: Path) -> str:
        """The earliest tripped run over all ranks (a NaN spreads to every rank through the
        averaged gradients one step later: the earliest one is the cause)."""
        s = self._state
        local = None
        if int(s["longest"]) >= self.limit:
            start = int(s["start"])
            local = (start, self._message(start, s["values"].tolist(), out))
        found: list[tuple[int, str] | None] = [local]
        if ctx.enabled:
            found = [None] * ctx.world_size
            dist.all_gather_object(found, local)
        rank, (_, message) = min(
            ((r, f) for r, f in enumerate(found) if f is not None), key=lambda x: (x[1][0], x[0])
        )
        return message + (f" (on rank {rank})" if rank else "")

    def _message(self, start: int, values: list[float], out: Path) -> str:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.names, values, strict=True))
        last = out / "last.pt"
        kept = f"{last} is intact" if last.exists() else "no checkpoint was written yet"
        if self.skipping:
            what = (
                f"{self.limit} consecutive steps with a non-finite loss from iteration {start} "
                f"(GradScaler skipped them; {terms}); stopped"
            )
        else:
            loss = values[self.names.index("loss")]
            what = f"loss became {loss} at iteration {start} ({terms}); stopped"
        return f"{what}. {kept}; lower --lr or check the data"
